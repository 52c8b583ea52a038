"""Shared pieces for the appliance tests (test_daemon*, test_camera*, ...): a small trained model,
camera-like frames of cards, a real systemd notify socket, and the daemon as a real subprocess.

Import the fixtures into a test module by name (``from daemon_fixtures import tiny_model``);
the trained model is built once per test session (and reused from pytest's cache while the
training and preprocessing code is unchanged).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import device

REPO = Path(__file__).resolve().parent.parent
# Where the `device` under test comes from, for a subprocess's PYTHONPATH: the checkout, or
# site-packages when the tests run against an installed cardcam (tests/pi-cpu).
CODE_ROOT = Path(device.__file__).resolve().parent.parent
MNIST_PATH = REPO / "data" / "mnist-8k.npz"  # the checkout's, also when cardcam is installed (tests/pi-cpu)
STAND_IN_DIR = Path(__file__).resolve().parent / "stand_in_picamera2"
_CACHE: dict = {}


def _code_hash() -> str:
    h = hashlib.sha256()
    files = sorted((REPO / "training").glob("*.py")) + [REPO / "device" / f for f in
                                                       ("preprocess.py", "nn.py", "bundle.py", "runtime.py")]
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def build_tiny_model(directory: Path) -> Path:
    """lenet5 on 300 MNIST cards of 0 and 1, two epochs: about 10 s, good enough to read clear cards."""
    from training.data import load_mnist
    from training.trainer import TrainConfig, train

    cards = load_mnist(MNIST_PATH, digits=(0, 1))
    idx = np.sort(np.random.default_rng(0).choice(len(cards), 300, replace=False))
    out = directory / "tiny.npz"
    train(TrainConfig(task="digits01", arch="lenet5", epochs=2, jitter_variants=0, camera_variants=1, processes=1),
          out, "tests: tiny model", progress=False, cards=cards.subset(idx), data_description="300 MNIST 0/1 cards")
    return out


@pytest.fixture(scope="session")
def tiny_model(request, tmp_path_factory) -> Path:
    """Path of a small trained 0/1 bundle (read-only: copy it before changing it)."""
    if "tiny" not in _CACHE:
        cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
        cached = Path(cache.mkdir(f"cardcam-tiny-{_code_hash()}")) / "tiny.npz" if cache else None
        if cached is not None and cached.exists():
            _CACHE["tiny"] = cached
        else:
            built = build_tiny_model(tmp_path_factory.mktemp("tiny"))
            if cached is not None:
                shutil.copyfile(built, cached.with_suffix(".tmp"))
                cached.with_suffix(".tmp").replace(cached)
            _CACHE["tiny"] = built
    return _CACHE["tiny"]


def card_frame(digit: int | None, seed: int = 0, size=(640, 480)) -> np.ndarray:
    """A camera-like grey frame: a white card on a darker room, with an MNIST digit (None: blank card)."""
    from training.data import load_mnist

    if "mnist" not in _CACHE:
        _CACHE["mnist"] = load_mnist(MNIST_PATH, digits=(0, 1))
    cards = _CACHE["mnist"]
    rng = np.random.default_rng(seed)
    w, h = size
    frame = Image.new("L", size, int(rng.integers(60, 110)))
    card = Image.new("L", (int(w * 0.42), int(h * 0.62)), int(rng.integers(220, 250)))
    if digit is not None:
        idx = np.flatnonzero(cards.labels == digit)
        glyph = Image.fromarray(cards.cards[int(idx[seed % len(idx)])])
        side = int(card.height * 0.7)
        glyph = glyph.resize((side, side), Image.Resampling.BILINEAR)
        paper = Image.new("L", glyph.size, card.getpixel((0, 0)))
        # The card's paper under the glyph: dark ink stays dark, white stays the card's white.
        card.paste(Image.fromarray(np.minimum(np.asarray(glyph), np.asarray(paper))),
                   ((card.width - side) // 2, (card.height - side) // 2))
    frame.paste(card, ((w - card.width) // 2 + int(rng.integers(-30, 30)), (h - card.height) // 2))
    noise = rng.normal(0, 3, (h, w))
    return np.clip(np.asarray(frame, np.float32) + noise, 0, 255).astype(np.uint8)


def readable_frames(model: Path, digit: int | None, count: int) -> list[np.ndarray]:
    """``count`` frames of ``digit`` that this model reads right through today's preprocessing
    (for None: frames where preprocessing finds no card). The daemon tests test the daemon, not
    preprocessing accuracy, so they use frames the pipeline is known to handle."""
    from device.bundle import load_bundle
    from device.preprocess import preprocess
    from device.runtime import make_runtime

    key = ("frames", str(model), digit, count)
    if key not in _CACHE:
        bundle = load_bundle(model)
        runtime = make_runtime(bundle, "numpy")
        frames = []
        for seed in range(400):
            frame = card_frame(digit, seed)
            prepared = preprocess(frame, bundle.preprocess, bundle.input_shape)
            if digit is None:
                ok = not prepared.found
            else:
                ok = prepared.found and runtime.predict(prepared.input[None])[0][digit] > 0.9
            if ok:
                frames.append(frame)
                if len(frames) == count:
                    break
        assert len(frames) == count, f"only {len(frames)} usable frames of {digit} in 400 tries"
        _CACHE[key] = frames
    return _CACHE[key]


def write_frames(folder: Path, model: Path, plan) -> Path:
    """PNG frames in name order; plan is a list of (digit or None, how many frames)."""
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for digit, count in plan:
        for frame in readable_frames(model, digit, count):
            Image.fromarray(frame).save(folder / f"{n:04d}.png")
            n += 1
    return folder


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.messages.extend(data.decode().split("\n"))

    def has(self, line: str) -> bool:
        return line in list(self.messages)

    def wait(self, line: str, timeout: float = 10.0) -> bool:
        """Whether ``line`` has arrived or arrives within ``timeout`` s: the listener thread can lag
        the daemon on a slow CPU (seen under emulation, tests/pi-cpu), so a message the daemon sent
        before a state we saw may not be in ``messages`` yet."""
        end = time.monotonic() + timeout
        while not self.has(line) and time.monotonic() < end:
            time.sleep(0.02)
        return self.has(line)

    def close(self):
        self._stop.set()
        self._thread.join(1)
        self.sock.close()


def write_config(path: Path, **sections) -> Path:
    """A TOML config from {"section": {"key": value}} (strings, numbers, booleans, lists, tables)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        raise TypeError(v)
    lines = []
    for section, keys in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in keys.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class Daemon:
    """`cardcam run` as a real subprocess; stdout lines collected, the state file read back."""

    def __init__(self, config: Path, state_file: Path, notify: NotifySocket | None = None, env=None, args=()):
        self.state_file = state_file
        environ = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM")}
        environ["PYTHONUNBUFFERED"] = "1"
        if notify is not None:
            environ["NOTIFY_SOCKET"] = notify.path
        environ.update(env or {})
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "device", "run", "--simulate", "--config", str(config),
                                      *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=environ, cwd=REPO)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def wait_for(self, predicate, timeout=20.0, what="condition"):
        """Poll until predicate() is true; fail with the daemon's output if it never is."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return
            if self.proc.poll() is not None and not predicate():
                pytest.fail(f"daemon exited ({self.proc.returncode}) before {what}:\n{self.output}")
            time.sleep(0.02)
        pytest.fail(f"timed out waiting for {what}:\n{self.output}")

    def wait_state(self, timeout=20.0, what="state", **expected):
        self.wait_for(lambda: all(self.state().get(k) == v for k, v in expected.items()), timeout,
                      f"{what} {expected} (last state {self.state()})")

    def signal(self, signum=signal.SIGTERM):
        self.proc.send_signal(signum)

    def wait(self, timeout=10.0) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(2)
        return rc

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def web_url(self, timeout=20.0, after=0) -> str:
        """The address from the daemon's "web page at http://..." log line (the ``after``-th line on)."""
        found = []

        def logged():
            found[:] = [line.split("web page at ", 1)[1].strip() for line in self.lines[after:] if "web page at " in line]
            return bool(found)
        self.wait_for(logged, timeout, "the web page's address in the log")
        return found[-1]

    def shown(self) -> list[str]:
        """The labels the daemon announced, in order ("no card" for none)."""
        out = []
        for line in self.lines:
            if " shows " in f" {line}":
                text = line.split("shows ", 1)[1]
                out.append("no card" if text.startswith("no card") else text.split(" ")[0])
        return out
