"""The appliance's teach mode ([teach] in the config): examples from the camera, a new model in
seconds, and undo.

Buttons (gpiozero: one per label, "learn", "undo"), keys in the terminal simulation and the web
page only *ask*. Each request waits in a queue and the daemon's loop serves it between two
frames, with the frame it has just classified, so only the loop ever touches the frame, the model
and the LEDs. The loop hands ``serve`` what it needs: the frame, the model slot
(device.modelfile.ModelSlot: the running bundle, the file, ``load``), the LEDs and a way to say
a status line. A second "learn" while one waits or runs is refused, as is an example with no card
in view: a log line and a blink of the status LED, nothing stored.

An example is the camera frame, ``EXAMPLES/<label>/<stamp>.png`` (what training and `cardcam
teach` read), with what the network saw beside it in ``EXAMPLES/<label>/seen/<stamp>.png``.
"learn" teaches the running model (or [teach] base) on them (device.teach), keeps the model file
as ``<name>.previous.npz``, saves the new bundle over [model] path (atomically) and switches to it
the way the daemon takes any new model: fully checked first, the running one kept if anything is
wrong. "undo" puts ``<name>.previous.npz`` back the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from device.bundle import BundleError, load_bundle, save_bundle
from device.config import teach_labels
from device.modelfile import CHECKOUT_MODEL
from device.outputs import OutputError
from device.teach import TeachError, read_examples, teach

ACTIONS = ("example", "learn", "undo")
KEYS = "1-9: add the card in view as an example of that label, l: learn, u: undo (then Enter)"


@dataclass
class Request:
    """One press: what was asked, and once the loop has served it, whether it worked and why."""
    action: str
    label: str | None = None
    frame: np.ndarray | None = None   # an example from elsewhere (the web page), not the camera
    prepared: object = None           # ... and what preprocessing made of it
    ok: bool = False
    message: str = ""
    done: threading.Event = field(default_factory=threading.Event)

    def finish(self, ok: bool, message: str) -> "Request":
        self.ok, self.message = ok, message
        self.done.set()
        return self


def previous_path(model: Path) -> Path:
    """Where "learn" keeps the model it replaces, for "undo"."""
    return model.with_name(f"{model.stem}.previous.npz")


def save_png(array: np.ndarray, path: Path) -> None:
    """A picture written to a hidden temporary name, then renamed: never half a picture."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class TeachMode:
    """Teach mode's buttons, examples and requests. ``serve`` is called by the daemon's loop."""

    def __init__(self, teach_config, log, pin_factory=None):
        self.labels = teach_labels(teach_config)
        self.examples = Path(teach_config.examples)
        self.base = teach_config.base
        self.log = log
        self.last = ""              # the last thing teach mode did, in words (the web page's panel)
        self._lock = threading.Lock()
        self._queue: list[Request] = []
        self._learning = False
        self._restore_at = None     # when the LEDs go back to what they show after a flash
        self._stack = contextlib.ExitStack()
        pins = {("example", label): pin for label, pin in teach_config.buttons.items()}
        pins[("learn", None)], pins[("undo", None)] = teach_config.learn_button, teach_config.undo_button
        try:
            from gpiozero import Button, GPIOZeroError
        except ImportError:
            raise OutputError("gpiozero is not installed: pip install 'cardcam[pi]'") from None
        try:
            for (action, label), pin in pins.items():
                if pin is not None:
                    button = self._stack.enter_context(Button(pin, pin_factory=pin_factory))
                    button.when_pressed = lambda action=action, label=label: self.ask(action, label)
        except (GPIOZeroError, OSError, RuntimeError) as e:
            self._stack.close()
            raise OutputError(f"cannot set up the [teach] buttons: {e}") from None

    # -- asking (any thread) --

    @property
    def learning(self) -> bool:
        return self._learning

    def ask(self, action: str, label: str | None = None, frame=None, prepared=None) -> Request:
        """Queue a request for the loop. A second "learn" while one waits or runs is queued
        already refused, so the loop logs it and blinks. ``frame``/``prepared``: an example
        picture from elsewhere than the camera (an upload), already preprocessed."""
        request = Request(action, label, frame, prepared)
        if action not in ACTIONS:
            request.message = f"unknown action {action!r}"
        elif action == "example" and label not in self.labels:
            request.message = f"unknown label {label!r} (teach labels: {', '.join(self.labels)})"
        with self._lock:
            if action == "learn" and not request.message:
                if self._learning:
                    request.message = "learn refused: already learning"
                self._learning = True
            self._queue.append(request)
        return request


    # -- serving (the daemon's loop) --

    def serve(self, frame, prepared, model, outputs, say) -> None:
        """Every waiting request, with the frame just classified and what preprocessing made of it.
        ``model``: the daemon's ModelSlot; ``outputs``: its LEDs; ``say(line)``: a status line."""
        if self._restore_at is not None and time.monotonic() >= self._restore_at:
            self._restore_at = None
            outputs.refresh()
        with self._lock:
            requests, self._queue = self._queue, []
        for request in requests:
            ok, message = False, request.message
            try:
                if message:
                    pass  # refused when asked
                elif request.action == "example" and request.frame is not None:
                    ok, message = self._add(request.label, request.frame, request.prepared)
                elif request.action == "example":
                    ok, message = self._add(request.label, frame, prepared)
                elif request.action == "learn":
                    ok, message = learn(model, self.base, self.examples, self.labels)
                else:
                    ok, message = undo(model)
            except Exception as e:  # a press never stops the appliance
                message = f"{request.action} failed: {type(e).__name__}: {e}"
            finally:
                if request.action == "learn" and not request.message:
                    with self._lock:
                        self._learning = False
            message = " ".join(message.split())
            self.last = message
            self.log(f"teach: {message}")
            say(f"teach: {message}")
            # Stored: the label's LED blinks twice; learned or undone: the status LED, slowly; refused: fast.
            flashing = outputs.flash(request.label if ok and request.action == "example" else None,
                                            times=2 if ok else 5, on_time=0.3 if ok and request.action != "example"
                                            else 0.1)
            self._restore_at = time.monotonic() + flashing
            request.finish(ok, message)

    def counts(self) -> dict:
        """label -> examples kept."""
        return {label: len(self.example_files(label)) for label in self.labels}

    def example_files(self, label: str) -> list[Path]:
        folder = self.examples / label
        try:
            return sorted(p for p in folder.iterdir() if p.suffix == ".png" and not p.name.startswith("."))
        except OSError:
            return []

    def close(self) -> None:
        self._stack.close()

    # -- the actions --

    def _add(self, label, frame, prepared) -> tuple[bool, str]:
        if frame is None or prepared is None or not prepared.found:
            why = prepared.reason if prepared is not None and prepared.reason else "no frame yet"
            return False, f"example of '{label}' refused: no card in view ({why}); nothing stored"
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 1_000_000_000:09d}"
        folder = self.examples / label
        try:
            (folder / "seen").mkdir(parents=True, exist_ok=True)
            save_png(prepared.input_bytes(), folder / "seen" / f"{stamp}.png")
            save_png(frame, folder / f"{stamp}.png")  # last: the example counts only once both are there
        except OSError as e:
            (folder / "seen" / f"{stamp}.png").unlink(missing_ok=True)
            return False, f"example of '{label}' not stored: {e.filename or folder}: {e.strerror or e}"
        counts = self.counts()
        return True, (f"example {counts[label]} of '{label}' stored ({folder / stamp}.png); "
                      f"examples: {', '.join(f'{l} {c}' for l, c in counts.items())}")


def _model_file(slot) -> Path:
    """The file "learn" writes and "undo" puts back: the running model's, never the shipped one."""
    path = slot.path
    if path.resolve() == CHECKOUT_MODEL.resolve():
        raise TeachError(f"the running model is the checkout's {CHECKOUT_MODEL.name}, which teach mode does "
                         "not overwrite; set [model] path to a copy of it")
    return path


def learn(slot, base_path: str, examples_dir: Path, labels) -> tuple[bool, str]:
    """Teach the running model (or ``base_path``) the examples, keep the model file for undo, save
    the new one over it, and swap it in through the slot; the old one is put back if it is refused."""
    start = time.perf_counter()
    if slot.bundle is None:
        return False, "learn refused: no model is running to learn from"
    running = slot.bundle.name
    try:
        model = _model_file(slot)
        base = load_bundle(base_path) if base_path else slot.bundle
        examples = read_examples(examples_dir, base, labels)
        bundle = teach(base, examples, base_name=Path(base_path).name if base_path else None)
    except (TeachError, BundleError) as e:
        return False, f"learn refused: {e}; still running {running}"
    previous = previous_path(model)
    tmp = previous.with_name(f".{previous.name}.tmp")
    try:  # the model it replaces, for undo: copied whole, then renamed into place
        if model.exists():
            shutil.copyfile(model, tmp)
            os.replace(tmp, previous)
        save_bundle(bundle, model)
    except (OSError, BundleError) as e:
        tmp.unlink(missing_ok=True)
        text = str(e) if isinstance(e, BundleError) else f"{e.filename or previous}: {e.strerror or e}"
        return False, f"learn failed: {text}; still running {running}"
    if not slot.load("learn"):  # refused (the config's task, a runtime...): put the old one back
        if previous.exists():
            os.replace(previous, model)
            slot.load("learn undone")
        return False, f"learn failed: the new model was refused (see the line above); still running {running}"
    counts = ", ".join(f"{l} {c}" for l, c in examples.counts.items())
    return True, (f"learned {', '.join(examples.labels)} from {sum(examples.counts.values())} examples "
                  f"({counts}) in {time.perf_counter() - start:.2f} s; now running {bundle.name} from {model} "
                  f"(undo goes back to {running})")


def undo(slot) -> tuple[bool, str]:
    """Put the model file that the last learn replaced back, and swap it in through the slot."""
    try:
        model = _model_file(slot)
    except TeachError as e:
        return False, f"undo refused: {e}"
    previous = previous_path(model)
    if not previous.exists():
        return False, f"undo refused: nothing to undo (no {previous.name} beside {model})"
    running = slot.bundle.name if slot.bundle else "none"
    try:
        os.replace(previous, model)
    except OSError as e:
        return False, f"undo failed: {e.strerror or e}; still running {running}"
    if not slot.load("undo"):
        return False, f"undo failed: {previous.name} was refused (see the line above); still running {running}"
    return True, f"undone: back to {slot.bundle.name} from {model}"


def start_teach(teach_config, log, pin_factory=None) -> TeachMode | None:
    """[teach] on: its buttons. Buttons that cannot be had are logged, and the appliance runs on
    without teach mode (None)."""
    try:
        teaching = TeachMode(teach_config, log, pin_factory)
    except OutputError as e:
        log(f"teach mode off: {e}; fix [teach] and send SIGHUP")
        return None
    log(f"teach mode: labels {' '.join(teaching.labels)}, examples in {teaching.examples}")
    return teaching


def read_keys(stream, teaching) -> threading.Thread:
    """The simulation's keyboard (KEYS): a thread reading lines from ``stream``, asking
    ``teaching()``, the teach mode of the moment (None: off)."""
    def handle(line: str) -> None:
        mode, key = teaching(), line.strip().lower()
        if mode is None:
            return
        if key.isdigit() and 1 <= int(key) <= len(mode.labels):
            mode.ask("example", mode.labels[int(key) - 1])
        elif key in ("l", "u"):
            mode.ask("learn" if key == "l" else "undo")

    def read() -> None:
        try:
            for line in stream:
                handle(line)
        except (OSError, ValueError):  # stdin closed or unreadable: no keyboard; the buttons still work
            return

    thread = threading.Thread(target=read, name="teach keys", daemon=True)
    thread.start()
    return thread
