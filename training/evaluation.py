"""A model judged on cards: one way for `cardcam-train evaluate` and `report` (and training's own
validation uses the same inputs). Pictures from files are judged through device.classify, as
`cardcam predict` reads them (training/cli.py, judge_pictures)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.data import CardSet, DataError
from training.trainer import as_float, make_inputs, predict_labels


@dataclass(frozen=True)
class Judged:
    """One entry per picture judged."""

    y: np.ndarray           # the true label (the model's index)
    pred: np.ndarray        # the label read, -1 where nothing was read (which counts as wrong)
    confidence: np.ndarray  # the probability of the label read (0 where nothing was read)
    inputs: np.ndarray      # the network's input (all 0 where nothing was read)

    @property
    def accuracy(self) -> float:
        return float((self.pred == self.y).mean()) if len(self.y) else float("nan")


def judge_cards(bundle, runtime, cards: CardSet, idx, kind: str, frames: int = 1, processes=None) -> Judged:
    """The cards at ``idx`` through the bundle's preprocessing and ``runtime``: ``kind`` "clean"
    (the card itself) or "camera" (``frames`` simulated camera frames per card, seeds 999, 1000,
    ...: the camera frame training validates on is the first). Inputs are made as training makes
    them (every core, kept in training.cache)."""
    missing = sorted(set(cards.names) - set(bundle.labels))
    if missing:
        raise DataError(f"data label {missing[0]!r} is not one of the model's {bundle.labels}")
    to_model = np.array([bundle.labels.index(n) for n in cards.names])
    idx = np.repeat(np.asarray(idx), frames if kind == "camera" else 1)
    first = 999 if kind == "camera" else 0
    jobs = [(int(i), kind, first + k % frames) for k, i in enumerate(idx)]
    x, kept = make_inputs(cards.cards, jobs, bundle.preprocess, bundle.input_shape, 0, processes)
    x = as_float(x)
    pred, confidence = predict_labels(runtime, x, kept, len(idx))
    inputs = np.zeros((len(idx), *bundle.input_shape), np.float32)
    inputs[kept] = x
    return Judged(to_model[cards.labels[idx]], pred, confidence, inputs)
