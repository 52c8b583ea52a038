"""One picture → one answer: the bundle's preprocessing, then its network.

Every caller goes through `classify`: `cardcam predict`, the daemon's frame loop, the web page's
draw-a-card, `cardcam capture`, and training's `evaluate` and `report`. It returns everything it
found in one value and keeps nothing between calls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from device.preprocess import Prepared, preprocess


@dataclass(frozen=True)
class Classification:
    """What one picture gave. ``label`` is None when there was nothing to read, and ``reason``
    says why ("no card", "no ink", ...); then ``probabilities`` is None too."""

    prepared: Prepared                  # what preprocessing made of the picture (the network's input, the ink's box)
    probabilities: np.ndarray | None    # one per label, in the bundle's order
    label: str | None                   # the most probable label
    confidence: float | None            # its probability
    reason: str                         # "" when there was something to read
    seconds: tuple[float, float]        # (preprocess, forward), for the daemon's per-stage table

    @property
    def found(self) -> bool:
        return self.label is not None

    def record(self, labels) -> dict:
        """The `predict --json` fields, also /api/predict's: label, confidence, probabilities
        (rounded to 6 places), and the reason when there is nothing to read."""
        if not self.found:
            return {"label": None, "confidence": None, "probabilities": None, "reason": self.reason}
        return {
            "label": self.label,
            "confidence": round(self.confidence, 6),
            "probabilities": {l: round(float(p), 6) for l, p in zip(labels, self.probabilities)},
        }


def classify(picture, bundle, runtime) -> Classification:
    """``picture``: a camera frame (array) or a loaded picture (Pillow image); ``runtime``: one
    made for ``bundle`` (device.runtime.make_runtime)."""
    t0 = time.perf_counter()
    prepared = preprocess(picture, bundle.preprocess, bundle.input_shape)
    t1 = time.perf_counter()
    if not prepared.found:
        return Classification(prepared, None, None, None, prepared.reason, (t1 - t0, 0.0))
    probabilities = runtime.predict(prepared.input[None])[0]
    best = int(probabilities.argmax())
    return Classification(prepared, probabilities, bundle.labels[best], float(probabilities[best]), "",
                          (t1 - t0, time.perf_counter() - t1))
