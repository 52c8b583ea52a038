"""Make the sample frames shipped in device/samples: what `cardcam run` shows off a Pi.

Cards from the MNIST file in data/ go through the same camera simulation as training
(training.augment.camera_frame), 640x480 grey PNGs. A frame is kept only when preprocessing finds
the card (digits) or finds none (the blank card), and, with --model, when that model reads it
right, so the simulation shows a working appliance. Rebuild with:

    .venv/bin/python tools/make_samples.py [--model models/digits01.npz]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from device.bundle import load_bundle
from device.camera import SAMPLES_DIR
from device.preprocess import PreprocessSettings, preprocess
from device.runtime import make_runtime
from training.augment import camera_frame
from training.data import load_mnist

PER_CLASS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="keep only frames this model reads right")
    parser.add_argument("--out", default=str(SAMPLES_DIR))
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    bundle = load_bundle(args.model) if args.model else None
    runtime = make_runtime(bundle, "numpy") if bundle else None
    settings = bundle.preprocess if bundle else PreprocessSettings()
    shape = bundle.input_shape if bundle else (32, 32, 1)
    cards = load_mnist(digits=(0, 1))
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    blank = np.full((28, 28), 255, np.uint8)
    # Names sort into the order a person would show them: 0, no card, 1, no card.
    plan = [("a-0", 0), ("b-none", None), ("c-1", 1), ("d-none", None)]
    for prefix, digit in plan:
        kept = 0
        while kept < PER_CLASS:
            if digit is None:
                card = blank
            else:
                idx = np.flatnonzero(cards.labels == digit)
                card = cards.cards[int(rng.choice(idx))]
            frame = camera_frame(card, rng)
            prepared = preprocess(frame, settings, shape)
            if digit is None:
                if prepared.found:
                    continue
            else:
                if not prepared.found:
                    continue
                if runtime is not None:
                    probs = runtime.predict(prepared.input[None])[0]
                    if bundle.labels[int(probs.argmax())] != str(digit) or probs.max() < 0.9:
                        continue
            kept += 1
            path = out / f"{prefix}-{kept}.png"
            Image.fromarray(frame).save(path, optimize=True)
            print(f"{path}: {'no card (' + prepared.reason + ')' if not prepared.found else 'card ' + str(digit)}")


if __name__ == "__main__":
    main()
