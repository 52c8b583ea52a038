"""From one noisy guess per frame to what the LEDs show.

Like the AIY joy detector: average the network's probabilities over the last few frames, then
apply hysteresis, so a label lights once its average climbs above ``enter`` and goes out only when
it falls below the lower ``exit``. A frame with no card (no ink, too dark) counts as zero for every
class, so taking the card away clears the LEDs after a few frames instead of at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class MovingAverage:
    """Mean of the last ``size`` vectors (fewer at the start)."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"window must be at least 1, got {size}")
        self.size = int(size)
        self._ring = None
        self._sum = None
        self._count = 0
        self._next = 0

    def update(self, value) -> np.ndarray:
        value = np.asarray(value, dtype=np.float64)
        if self._ring is None or self._ring.shape[1:] != value.shape:
            self._ring = np.zeros((self.size,) + value.shape)
            self._sum = np.zeros(value.shape)
            self._count = self._next = 0
        # A running sum: the oldest vector leaves as the newest comes in.
        self._sum += value - self._ring[self._next]
        self._ring[self._next] = value
        self._next = (self._next + 1) % self.size
        self._count = min(self._count + 1, self.size)
        return self._sum / self._count

    def reset(self) -> None:
        self._ring = None


class Hysteresis:
    """Which class is on: it turns on at ``enter`` and stays on until it drops below ``exit``."""

    def __init__(self, enter: float, exit: float):
        if not 0.0 <= exit <= enter <= 1.0:
            raise ValueError(f"need 0 <= exit <= enter <= 1, got enter={enter}, exit={exit}")
        self.enter = float(enter)
        self.exit = float(exit)
        self.current = None

    def update(self, scores) -> int | None:
        scores = np.asarray(scores)
        best = int(scores.argmax())
        if self.current is not None and scores[self.current] < self.exit:
            self.current = None
        if scores[best] >= self.enter and (self.current is None or scores[best] > scores[self.current]):
            self.current = best
        return self.current

    def reset(self) -> None:
        self.current = None


@dataclass(frozen=True)
class Decision:
    label: str | None          # None: no card (every class LED off)
    confidence: float          # smoothed probability of the label shown (or of the best guess)
    changed: bool              # the label differs from the previous frame's


class Decider:
    """Probabilities per frame (None when the frame has no card) -> the label to show."""

    def __init__(self, labels, window=5, enter=0.7, exit=0.5):
        self.labels = list(labels)
        self.average = MovingAverage(window)
        self.hysteresis = Hysteresis(enter, exit)
        self._zeros = np.zeros(len(self.labels))
        self.label = None

    def update(self, probabilities) -> Decision:
        scores = self.average.update(self._zeros if probabilities is None else probabilities)
        shown = self.hysteresis.update(scores)
        label = None if shown is None else self.labels[shown]
        confidence = float(scores[shown] if shown is not None else scores.max())
        changed, self.label = label != self.label, label
        return Decision(label, confidence, changed)

    def relabel(self, labels) -> None:
        """A new model: start afresh if its classes differ (old averages mean nothing to it)."""
        if list(labels) != self.labels:
            self.labels = list(labels)
            self._zeros = np.zeros(len(self.labels))
            self.average.reset()
            self.hysteresis.reset()
