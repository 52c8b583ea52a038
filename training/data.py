"""Training data as *cards*: uint8 grey images, dark ink on light paper, with integer labels.

Sources: the MNIST file shipped in data/ (white-on-black, inverted here into cards), digits
rendered with Pillow's built-in font (the same on every machine), and the user's own folders
``DIR/<label>/*.png|jpg``. Every picture later goes through device.preprocess, as on the Pi.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from device.preprocess import ImageError, load_image

REPO = Path(__file__).resolve().parent.parent
MNIST_PATH = REPO / "data" / "mnist-8k.npz"
MNIST_CREDIT = "MNIST (Y. LeCun, C. Cortes, C. Burges; CC BY-SA 3.0), 7,996-digit subset in data/mnist-8k.npz"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
SPLIT_SEED = 20261123  # fixed, so every seed and every variant is judged on the same images


class DataError(ValueError):
    """Training data that cannot be used; the message names the file or folder."""


@dataclass
class CardSet:
    cards: list          # uint8 H x W arrays, dark on light
    labels: np.ndarray   # int64 indices into names
    names: list          # label strings, in output order
    sources: list = field(default_factory=list)  # per card: "mnist", "font", "folder"

    def subset(self, idx) -> "CardSet":
        return CardSet([self.cards[i] for i in idx], self.labels[idx], self.names, [self.sources[i] for i in idx])

    def __len__(self):
        return len(self.cards)


def load_mnist(path=MNIST_PATH, digits=range(10)) -> CardSet:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            images, labels = f["images"], f["labels"]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: cannot read MNIST file ({e})") from None
    digits = list(digits)
    keep = np.isin(labels, digits)
    remap = {d: i for i, d in enumerate(digits)}
    cards = [255 - im for im in images[keep]]  # white-on-black -> a card: dark ink on paper
    y = np.array([remap[int(l)] for l in labels[keep]], np.int64)
    return CardSet(cards, y, [str(d) for d in digits], ["mnist"] * len(cards))


def render_font_digits(digits=range(10), per_digit=40, seed=0) -> CardSet:
    """Printed-looking digits from Pillow's built-in scalable font: sizes, weights and slants."""
    rng = np.random.default_rng([seed, 7])
    cards, labels = [], []
    for i, d in enumerate(digits):
        for _ in range(per_digit):
            size = int(rng.integers(28, 60))
            font = ImageFont.load_default(size=size)
            side = size * 2
            im = Image.new("L", (side, side), 255)
            draw = ImageDraw.Draw(im)
            stroke = int(rng.integers(0, max(1, size // 12) + 1))
            draw.text((side / 2, side / 2), str(d), fill=0, font=font, anchor="mm", stroke_width=stroke, stroke_fill=0)
            slant = rng.uniform(-0.25, 0.1)
            angle = math.radians(rng.uniform(-8, 8))
            c, s = math.cos(angle), math.sin(angle)
            coeffs = (c, s + slant, side / 2 * (1 - c) - (s + slant) * side / 2,
                      -s, c, side / 2 * (1 - c) + s * side / 2)
            im = im.transform(im.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=255)
            cards.append(np.asarray(im.resize((28, 28), Image.Resampling.BOX), np.uint8))
            labels.append(i)
    return CardSet(cards, np.array(labels, np.int64), [str(d) for d in digits], ["font"] * len(cards))


def label_folders(root) -> list[Path]:
    """The label folders of ``root/<label>/*.png``, sorted, hidden ones left out; DataError if
    root is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected {root}/<label>/*.png)")
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def label_pictures(folder: Path) -> list[Path]:
    """The picture files of one label folder, sorted; DataError if it has none."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no images (.png, .jpg, ...) for label '{folder.name}'")
    return files


def load_folder(root) -> CardSet:
    """``root/<label>/*.png|jpg``: one class per sub-folder, labels in sorted order."""
    classes = label_folders(root)
    if len(classes) < 2:
        raise DataError(f"{root}: needs at least two label folders, found {len(classes)}")
    cards, labels, names = [], [], []
    for i, folder in enumerate(classes):
        for f in label_pictures(folder):
            try:
                gray = load_image(f)
            except ImageError as e:
                raise DataError(str(e)) from None
            cards.append((gray * 255).round().astype(np.uint8))
            labels.append(i)
        names.append(folder.name)
    return CardSet(cards, np.array(labels, np.int64), names, ["folder"] * len(cards))


def concat(*sets: CardSet) -> CardSet:
    names = sets[0].names
    for s in sets[1:]:
        if s.names != names:
            raise DataError(f"label sets differ: {names} vs {s.names}")
    return CardSet([c for s in sets for c in s.cards], np.concatenate([s.labels for s in sets]), names,
                   [src for s in sets for src in s.sources])


def split(cards: CardSet, val_fraction: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/validation indices, the same for every training seed: val_fraction of
    each label's cards, at least one, go to validation. A label needs two cards or more."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, val = [], []
    for c, name in enumerate(cards.names):
        idx = rng.permutation(np.flatnonzero(cards.labels == c))
        if len(idx) < 2:
            raise DataError(f"label '{name}' has {len(idx)} card{'' if len(idx) == 1 else 's'}; every label needs "
                            "at least 2 (one or more are kept aside to validate the model)")
        n_val = max(1, round(len(idx) * val_fraction))
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(np.array(train, np.int64)), np.sort(np.array(val, np.int64))
