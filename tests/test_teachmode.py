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
        self.daemon.reload_requested = True
        self.wait(lambda: self.daemon.source is not None and self.daemon.source.path == folder, f"frames of {folder}")
        frames = self.daemon.pipeline.frames
        self.wait(lambda: self.daemon.pipeline.frames > frames + 2, "a few frames")

    def logged(self, text, after=0) -> bool:
        return text in self.log()[after:]

    def run(self, script):
        failure = []

        def drive():
            try:
                self.wait(lambda: self.daemon.ready, "the first frame")
                script(self)
            except BaseException as e:  # re-raised in the test's thread
                failure.append(e)
            finally:
                self.daemon.stopping = True
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
        assert app.daemon.teaching.counts() == {"A": 3, "K": 3, "R": 3}
        for label in LABELS:
            assert len(list((examples / label).glob("*.png"))) == 3
            seen = list((examples / label / "seen").glob("*.png"))
            assert len(seen) == 3 and np.asarray(Image.open(seen[0])).shape == (32, 32)
        # Two learn presses at once: one learns, the other is refused.
        mark = len(app.log())
        app.press(LEARN)
        app.press(LEARN)
        app.wait(lambda: app.logged("teach: learned A, K, R from 9 examples", mark), "learned")
        assert app.logged("learn refused: already learning", mark)
        assert app.daemon.pipeline.bundle.labels == list(LABELS)
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
        assert app.daemon.pipeline.bundle.labels == base.labels
        assert load_bundle(model).meta["weights_sha256"] == base.meta["weights_sha256"]
        mark = len(app.log())
        app.press(UNDO)
        app.wait(lambda: app.logged("undo refused: nothing to undo", mark), "nothing to undo")

    app.run(script)
