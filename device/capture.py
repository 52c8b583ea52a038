"""`cardcam capture`: collect your own cards for retraining.

Hold a card up, press the button (Enter off a Pi), and two pictures are saved:
``OUT/raw/LABEL/<stamp>.png``, the camera frame, which is what training wants (train with
``--task folder:OUT/raw``), and ``OUT/seen/LABEL/<stamp>.png``, what the network sees after
preprocessing, to check the card was found. Each picture is classified as the appliance would
(device.classify), with the configured model, and what the model reads is said beside it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from device.bundle import BundleError, load_bundle
from device.classify import classify
from device.camera import CameraError, ReplayFinished
from device.camera import choose_source_kind, is_raspberry_pi, open_source
from device.config import load_config
from device.modelfile import model_path
from device.outputs import OutputError
from device.preprocess import PreprocessSettings, preprocess
from device.runtime import RuntimeUnavailable, make_runtime

DEFAULT_INPUT = (32, 32, 1)


def _save_png(array: np.ndarray, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    tmp.replace(path)  # never a half-written picture in the training folder


def _trigger(config, simulate):
    """A function that blocks until the person asks for a picture; False means stop."""
    pin = config.capture.button
    if pin is not None and not simulate:
        try:
            from gpiozero import Button
            button = Button(pin)
        except Exception as e:  # ImportError, GPIOZeroError, OSError (no /dev/gpiochip access), ...
            raise OutputError(f"cannot use the capture button on pin {pin!r}: {e}") from None

        def press():
            button.wait_for_press()
            button.wait_for_release()  # one picture per press, however long it is held
            return True
        return press, f"press the button on pin {pin}", button.close

    def enter():
        line = sys.stdin.readline()
        return line != "" and line.strip().lower() not in ("q", "quit")
    return enter, "press Enter (q + Enter to stop)", lambda: None


def _classifier(config, simulate):
    """frame -> (what preprocessing made of it, what the model reads or ""): the configured model
    through device.classify, as the appliance would; without a usable model, the default
    preprocessing only (the pictures are what training wants either way)."""
    try:
        bundle = load_bundle(model_path(config, simulate))
        runtime = make_runtime(bundle, config.model.runtime, config.model.threads)
    except (BundleError, RuntimeUnavailable) as e:
        print(f"note: {e}; previews use the default preprocessing")
        settings = PreprocessSettings()
        return lambda frame: (preprocess(frame, settings, DEFAULT_INPUT), "")

    def look(frame):
        found = classify(frame, bundle, runtime)
        reads = f" (the model reads {found.label}, {found.confidence:.0%})" if found.found else ""
        return found.prepared, reads
    return look


def _save(frame, looked, folders) -> None:
    """The frame under raw/, what the network sees under seen/ (when a card was found), said."""
    prepared, reads = looked
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 1_000_000_000:09d}"
    raw = folders[0] / f"{stamp}.png"
    _save_png(np.ascontiguousarray(frame), raw)
    if prepared.found:
        seen = folders[1] / f"{stamp}.png"
        _save_png(prepared.input_bytes(), seen)
        print(f"saved {raw} and {seen}{reads}")
    else:
        print(f"saved {raw}; warning: no card found in it ({prepared.reason}): more light, or hold the card closer")


def capture(args) -> int:
    config, _ = load_config(args.config)
    if not args.label or "/" in args.label or args.label.startswith("."):
        print(f"cardcam: --label {args.label!r} must be a plain name like 0, 1 or happy", file=sys.stderr)
        return 2
    if args.count < 1:
        print("cardcam: --count must be at least 1", file=sys.stderr)
        return 2
    simulate = args.simulate or not is_raspberry_pi()
    look = _classifier(config, simulate)
    out = Path(args.out)
    folders = (out / "raw" / args.label, out / "seen" / args.label)
    try:
        wait, how, release = _trigger(config, simulate)
    except OutputError as e:
        print(f"cardcam: {e}", file=sys.stderr)
        return 2
    source = open_source(config, simulate)
    saved = 0
    try:
        with source:  # opened first: a source that gives no frames leaves no empty folders behind
            try:  # here, not at the first picture: the person is not left holding a card for nothing
                for folder in folders:
                    folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                print(f"cardcam: --out {out}: cannot make {folder}: {e.strerror or e}", file=sys.stderr)
                return 2
            print(f"capturing {args.count} pictures of '{args.label}' from {choose_source_kind(config, simulate)} "
                  f"into {out}: hold the card up and {how}")
            if simulate:
                print(f"simulation: no camera; each picture is the next frame of {source.describe()}, whatever "
                      f"it shows, saved as '{args.label}' (on a Pi, without --simulate, the camera takes them)")
            while saved < args.count:
                print(f"[{saved + 1}/{args.count}] ready: {how}", flush=True)
                if not wait():
                    break
                try:
                    frame = source.read()
                except ReplayFinished:
                    print("the replay has no more frames")
                    break
                _save(frame, look(frame), folders)
                saved += 1
    except CameraError as e:
        print(f"cardcam: camera: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the disk filled up, the folder went away, ...
        print(f"cardcam: cannot save {e.filename or 'a picture'}: {e.strerror or e}; "
              f"{saved} picture(s) saved before", file=sys.stderr)
        return 1
    finally:
        release()
    print(f"{saved} picture(s) of '{args.label}' in {folders[0]}")
    return 0 if saved == args.count else 1
