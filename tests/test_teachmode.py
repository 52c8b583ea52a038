"""The appliance's teach mode: the real daemon loop, its gpiozero Buttons on MockFactory pins,
replayed camera frames, real example files and real bundles written, swapped and undone."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from daemon_fixtures import write_config
from device.bundle import load_bundle
from device.config import ConfigError, load_config
from device.daemon import Daemon
from device.outputs import Outputs, mock_pin_factory
from test_teach import frame, paper

LABELS = ("A", "K", "R")
BUTTONS = {"A": 5, "K": 6, "R": 13}
LEARN, UNDO, STATUS_LED = 19, 26, 4


def card_folders(root):
    """One replay folder per label (3 frames of its card each) and one of blank paper."""
    rng = np.random.default_rng(7)
    for label in LABELS:
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(frame(label, rng)).save(root / label / f"{i}.png")
    (root / "blank").mkdir()
    paper(root / "blank" / "0.png")
    return root


def teach_config(tmp_path, model, replay, **teach):
    return write_config(
        tmp_path / "config.toml",
        camera={"source": "replay", "replay": str(replay), "fps": 60, "loop": True},
        model={"path": str(model), "poll_interval": 0.05, "stable_time": 0.1},
        decision={"window": 2, "enter": 0.6, "exit": 0.4},
        outputs={"leds": {"A": 17, "K": 27, "R": 22}, "status_led": STATUS_LED},
        teach={"enabled": True, "buttons": BUTTONS, "learn_button": LEARN, "undo_button": UNDO,
               "examples": str(tmp_path / "examples")} | teach)


class Running:
    """The daemon's own loop in this (the main) thread; ``script`` drives it from another thread
    through the Buttons' MockFactory pins and the config (a reload points the camera elsewhere)."""

    def __init__(self, config_path, simulate=True):
        config, _ = load_config(config_path)
        self.config_path = config_path
        self.out = io.StringIO()
        self.daemon = Daemon(config, config_path, simulate=simulate, out=self.out)

    def log(self) -> str:
        return self.out.getvalue()

    def wait(self, predicate, what, timeout=20.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return
            time.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}; log:\n{self.log()}")

    def press(self, pin):
        factory = self.daemon.pin_factory
        factory.pin(pin).drive_low()   # a Button pulls up: pressed is low
        factory.pin(pin).drive_high()

    def show(self, folder):
        """Point the camera at another replay folder (a config reload), and wait for its frames."""
        text = self.config_path.read_text()
        current = str(self.daemon.config.camera.replay)
        self.config_path.write_text(text.replace(f'replay = "{current}"', f'replay = "{folder}"'))
        self.daemon.reload_requested.set()
        source = lambda: self.daemon.camera.source  # noqa: E731
        self.wait(lambda: source() is not None and source().path == folder, f"frames of {folder}")
        frames = self.daemon.heartbeat.frames
        self.wait(lambda: self.daemon.heartbeat.frames > frames + 2, "a few frames")

    def logged(self, text, after=0) -> bool:
        return text in self.log()[after:]

    def run(self, script):
        failure = []

        def drive():
            try:
                self.wait(lambda: self.daemon.heartbeat.ready, "the first frame")
                script(self)
            except BaseException as e:  # re-raised in the test's thread
                failure.append(e)
            finally:
                self.daemon.stop.set()
        thread = threading.Thread(target=drive)
        thread.start()
        code = self.daemon.run()
        thread.join(30)
        if failure:
            raise failure[0]
        assert code == 0, self.log()


@pytest.fixture
def model(trained01, tmp_path):
    path = tmp_path / "models" / "current.npz"
    path.parent.mkdir()
    shutil.copyfile(trained01.path, path)
    return path


def test_buttons_add_examples_learn_switch_and_undo(model, tmp_path):
    cards = card_folders(tmp_path / "cards")
    base = load_bundle(model)
    app = Running(teach_config(tmp_path, model, cards / "blank"))
    examples = tmp_path / "examples"

    def script(app):
        # No card in view: refused, a blink, nothing stored.
        mark = len(app.log())
        app.press(BUTTONS["A"])
        app.wait(lambda: app.logged("refused: no card in view", mark), "the refusal")
        assert not any(examples.glob("A/*.png"))
        status_pin = app.daemon.pin_factory.pin(STATUS_LED)
        app.wait(lambda: sum(s.state for s in status_pin.states[-12:]) >= 4, "the status LED's blinks")
        # Three examples of each card.
        for label in LABELS:
            app.show(cards / label)
            for n in range(1, 4):
                app.press(BUTTONS[label])
                app.wait(lambda: app.logged(f"example {n} of '{label}' stored"), f"example {n} of {label}")
        assert app.daemon.teach.mode.counts() == {"A": 3, "K": 3, "R": 3}
        for label in LABELS:
            assert len(list((examples / label).glob("*.png"))) == 3
            seen = list((examples / label / "seen").glob("*.png"))
            assert len(seen) == 3 and np.asarray(Image.open(seen[0])).shape == (32, 32)
        # Two learn presses at once: one learns, the other is refused.
        mark = len(app.log())
        app.press(LEARN)
        app.press(LEARN)
        app.wait(lambda: app.logged("teach: learned A, K, R from 9 examples", mark), "learned")
        app.wait(lambda: app.logged("teach: learn refused: already learning", mark), "the second press refused")
        assert app.log()[mark:].count("teach: learned") == 1
        assert app.daemon.model.bundle.labels == list(LABELS)
        taught = load_bundle(model)
        assert taught.labels == list(LABELS) and "taught on the device" in taught.meta["provenance"]["taught"]
        assert load_bundle(model.with_name("current.previous.npz")).meta["weights_sha256"] == \
            base.meta["weights_sha256"]
        # It reads the cards it was taught, on its LEDs.
        app.show(cards / "K")
        app.wait(lambda: app.daemon.outputs.snapshot()["leds"] == {"A": 0, "K": 1, "R": 0}, "the K LED")
        # Undo: back to the base, on disk and running.
        mark = len(app.log())
        app.press(UNDO)
        app.wait(lambda: app.logged("teach: undone: back to", mark), "undone")
        assert app.daemon.model.bundle.labels == base.labels
        assert load_bundle(model).meta["weights_sha256"] == base.meta["weights_sha256"]
        mark = len(app.log())
        app.press(UNDO)
        app.wait(lambda: app.logged("undo refused: nothing to undo", mark), "nothing to undo")

    app.run(script)


def test_learn_with_too_few_examples_keeps_the_running_model(model, tmp_path):
    cards = card_folders(tmp_path / "cards")
    before = model.read_bytes()
    app = Running(teach_config(tmp_path, model, cards / "A"))

    def script(app):
        app.press(BUTTONS["A"])
        app.wait(lambda: app.logged("example 1 of 'A' stored"), "an example")
        app.press(LEARN)
        app.wait(lambda: app.logged("teach: learn refused:"), "the refusal")
        assert app.logged("labels with too few examples: 'A' 1, 'K' 0, 'R' 0; each label needs at least 2")
        assert app.logged(f"still running {load_bundle(model).name}")
        assert app.daemon.model.bundle.labels == ["0", "1"]

    app.run(script)
    assert model.read_bytes() == before
    assert not model.with_name("current.previous.npz").exists()


def test_a_taught_model_the_config_refuses_is_put_back(model, tmp_path):
    """[model] task pins the task: the taught bundle (task folder:...) is refused by the daemon's
    own check, and the file that was there goes back in place."""
    cards = card_folders(tmp_path / "cards")
    before = model.read_bytes()
    config = teach_config(tmp_path, model, cards / "A")
    config.write_text(config.read_text().replace("[model]\n", '[model]\ntask = "digits01"\n'))
    app = Running(config)

    def script(app):
        for label in ("A", "K", "R"):
            app.show(cards / label)
            for n in (1, 2):
                app.press(BUTTONS[label])
                app.wait(lambda: app.logged(f"example {n} of '{label}' stored"), f"example {n} of {label}")
        app.press(LEARN)
        app.wait(lambda: app.logged("teach: learn failed: the new model was refused"), "the refusal")
        assert app.logged("the config asks for 'digits01'")
        assert app.daemon.model.bundle.labels == ["0", "1"]

    app.run(script)
    assert model.read_bytes() == before
    assert not model.with_name("current.previous.npz").exists()


def test_keys_in_the_terminal_simulation(model, tmp_path):
    """`cardcam run --simulate` as a subprocess: keys 1, 2, l and Enter on its stdin teach it."""
    cards = card_folders(tmp_path / "cards")
    config = write_config(
        tmp_path / "config.toml",
        camera={"source": "replay", "replay": str(cards / "A"), "fps": 60},
        model={"path": str(model)},
        outputs={"leds": {"A": 17, "K": 27}},
        teach={"enabled": True, "labels": ["A", "K"], "examples": str(tmp_path / "examples")})
    proc = subprocess.Popen([sys.executable, "-m", "device", "run", "--simulate", "--config", str(config)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO, env={"PYTHONUNBUFFERED": "1", "PATH": "/usr/bin:/bin"})
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(line.rstrip() for line in proc.stdout), daemon=True)
    reader.start()

    def wait(text, count=1):
        end = time.monotonic() + 30
        while sum(text in line for line in lines) < count:
            assert time.monotonic() < end and proc.poll() is None, f"no {text!r} in:\n" + "\n".join(lines)
            time.sleep(0.02)

    try:
        wait("ready: first frame classified")
        assert any("teach keys: 1-9" in line for line in lines)
        for n in (1, 2):
            proc.stdin.write("1\n")
            proc.stdin.flush()
            wait(f"example {n} of 'A' stored")
        config.write_text(config.read_text().replace(str(cards / "A"), str(cards / "K")))
        proc.send_signal(1)  # SIGHUP: the camera now sees K
        wait("reloading")
        time.sleep(0.3)
        for n in (1, 2):
            proc.stdin.write("2\n")
            proc.stdin.flush()
            wait(f"example {n} of 'K' stored")
        proc.stdin.write("l\n")
        proc.stdin.flush()
        wait("teach: learned A, K from 4 examples")
        wait("shows K")
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0
    assert load_bundle(model).labels == ["A", "K"]


def test_outputs_flash_a_label_then_show_what_they_showed():
    factory = mock_pin_factory()
    with Outputs({"A": 17, "K": 27}, status_led=4, pin_factory=factory) as outputs:
        outputs.set_status("running")
        outputs.show("K")
        took = outputs.flash("A", times=2, on_time=0.01)
        assert took == pytest.approx(0.04)
        time.sleep(0.2)
        assert [s.state for s in factory.pin(17).states].count(True) == 2  # blinked twice
        outputs.refresh()
        assert outputs.snapshot()["leds"] == {"A": 0, "K": 1} and outputs.snapshot()["status_led"] == 1
        outputs.flash(None, times=1, on_time=0.01)  # no label: the status LED
        time.sleep(0.1)
        outputs.refresh()
        assert outputs.snapshot()["status_led"] == 1


@pytest.mark.parametrize("teach,words", [
    ({"enabled": True, "labels": ["A"]}, "at least 2 labels"),
    ({"labels": ["A", "two words"]}, "'two words'"),
    ({"labels": ["A", "../etc"]}, "'../etc'"),
    ({"buttons": {"A": 17}}, "already used by leds"),
    ({"learn_button": 5, "undo_button": 5}, "teach.undo_button uses pin 5"),
    ({"labels": "A"}, "must be a list of labels"),
])
def test_teach_config_mistakes_are_one_line(tmp_path, teach, words):
    path = write_config(tmp_path / "c.toml", teach=teach)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def http(url, method="GET", body=None, content_type=None):
    """(status, parsed JSON or bytes) of one request, errors included."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method=method)
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            status, data, kind = answer.status, answer.read(), answer.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, data, kind = e.code, e.read(), e.headers.get("Content-Type", "")
    return status, json.loads(data) if kind.startswith("application/json") else data


def png(array) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


def test_web_teach_panel_api_adds_learns_and_refuses(model, tmp_path):
    cards = card_folders(tmp_path / "cards")
    config = teach_config(tmp_path, model, cards / "blank")
    config.write_text(config.read_text() + "[web]\nenabled = true\nport = 0\n")
    app = Running(config)
    rng = np.random.default_rng(11)

    def script(app):
        app.wait(lambda: app.daemon.web.server is not None, "the web page")
        url = app.daemon.web.server.url + "api/teach"
        status, state = http(url)
        assert status == 200 and state["labels"] == list(LABELS) and state["counts"] == {"A": 0, "K": 0, "R": 0}
        # The camera sees blank paper: refused, with the log's words.
        status, answer = http(url + "/example?label=A", "POST", b"")
        assert status == 409 and "no card in view" in answer["error"]
        # Uploaded pictures, under /api/predict's rules.
        for label in LABELS:
            for _ in range(2):
                status, answer = http(url + f"/example?label={label}", "POST", png(frame(label, rng)), "image/png")
                assert status == 200, answer
        assert answer["counts"] == {"A": 2, "K": 2, "R": 2} and len(answer["thumbnails"]["R"]) == 2
        status, thumb = http(app.daemon.web.server.url + answer["thumbnails"]["R"][0])
        assert status == 200 and Image.open(io.BytesIO(thumb)).size == (32, 32)
        assert http(url + "/example?label=A", "POST", png(np.full((60, 80), 200, np.uint8) +
                                                          np.uint8(1)), "image/png")[0] == 409  # no ink
        assert http(url + "/example?label=A", "POST", b"GIF89a", "image/gif")[0] == 415
        assert http(url + "/example?label=A", "POST", b"x" * (2 << 20), "image/png")[0] == 413
        assert http(url + "/example?label=nope", "POST", b"")[0] == 400
        assert http(url + "/seen/A/..%2F..%2Fmodels%2Fcurrent.png")[0] == 404
        assert http(url + "/learn")[0] == 405
        # The camera's card, then learn and undo.
        app.show(cards / "K")
        status, answer = http(url + "/example?label=K", "POST", b"")
        assert status == 200 and answer["counts"]["K"] == 3
        status, answer = http(url + "/learn", "POST", b"")
        assert status == 200 and answer["message"].startswith("learned A, K, R from 7 examples")
        status, model_info = http(app.daemon.web.server.url + "api/model")
        assert model_info["labels"] == list(LABELS) and model_info["provenance"]["examples"]["counts"]["K"] == 3
        status, answer = http(url + "/undo", "POST", b"")
        assert status == 200 and answer["message"].startswith("undone")
        assert http(app.daemon.web.server.url + "api/model")[1]["labels"] == ["0", "1"]

    app.run(script)


def test_web_teach_api_is_off_without_teach_mode(model, tmp_path):
    cards = card_folders(tmp_path / "cards")
    config = teach_config(tmp_path, model, cards / "A", enabled=False)
    config.write_text(config.read_text() + "[web]\nenabled = true\nport = 0\n")
    app = Running(config)

    def script(app):
        app.wait(lambda: app.daemon.web.server is not None, "the web page")
        status, answer = http(app.daemon.web.server.url + "api/teach")
        assert status == 404 and "teach mode is off" in answer["error"]
        assert http(app.daemon.web.server.url + "api/teach/learn", "POST", b"")[0] == 404

    app.run(script)
