"""More frames for tests/pi-cpu than the 8 in device/samples: MNIST cards (data/mnist-8k.npz) held
up in a room as the trainer simulates a camera (training.augment.camera_frame), PER_DIGIT of each
digit, fixed seeds, 320x240 (the lores stream's size), as PNGs. Runs on the x86 side.

usage: PYTHONPATH=. python tests/pi-cpu/frames.py OUTDIR [PER_DIGIT]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from training.augment import camera_frame
from training.data import load_mnist

REPO = Path(__file__).resolve().parents[2]


def main(out: Path, per_digit: int = 10) -> int:
    out.mkdir(parents=True, exist_ok=True)
    cards = load_mnist(REPO / "data" / "mnist-8k.npz")
    for digit in range(10):
        for k, i in enumerate(np.flatnonzero(cards.labels == digit)[:per_digit]):
            rng = np.random.default_rng(1000 * digit + k)
            frame = camera_frame(cards.cards[i], rng, size=(320, 240))
            Image.fromarray(frame).save(out / f"mnist-{digit}-{k:03d}.png")
    return 0


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__.strip().splitlines()[-1])
    sys.exit(main(Path(sys.argv[1]), *(int(a) for a in sys.argv[2:])))
