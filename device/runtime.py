"""Runtimes: turn a bundle into ``predict(batch) -> probabilities``.

``NumpyRuntime`` needs nothing but NumPy. BatchNorm is folded into the conv/dense before it and
dropout is dropped, so the forward pass is a short list of array operations built once per model.
"""

from __future__ import annotations

import numpy as np

from device import nn
from device.bundle import Bundle

RUNTIMES = ("auto", "numpy")


class RuntimeUnavailable(RuntimeError):
    """The runtime asked for cannot run this bundle on this machine."""


class NumpyRuntime:
    name = "numpy"

    def __init__(self, bundle: Bundle):
        self.labels = list(bundle.labels)
        self.input_shape = bundle.input_shape
        self._steps = _build_steps(bundle)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W, C) float32 inputs -> (N, classes) probabilities."""
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"input shape {list(x.shape[1:])} does not match the model's {list(self.input_shape)}")
        for step in self._steps:
            x = step(x)
        return x


def _build_steps(bundle: Bundle) -> list:
    layers = nn.infer_shapes(bundle.architecture, bundle.input_shape)
    weights = bundle.weights
    steps = []
    pending = None  # (kind, kernel, bias, padding) of a conv/dense that BatchNorm may still scale

    def flush():
        nonlocal pending
        if pending is None:
            return
        kind, kernel, bias, padding = pending
        if kind == "conv2d":
            steps.append(lambda x, k=kernel, b=bias, p=padding: nn.conv2d(x, k, b, p))
        else:
            steps.append(lambda x, k=kernel, b=bias: x @ k + b)
        pending = None

    for layer in layers:
        kind, spec = layer.spec["type"], layer.spec
        w = {n: weights[f"L{layer.index}.{n}"] for n in layer.weights}
        if kind in ("conv2d", "dense"):
            flush()
            pending = (kind, w["kernel"].copy(), w["bias"].copy(), spec.get("padding", "valid"))
            continue
        if kind == "batchnorm":
            scale, shift = nn.fold_batchnorm(w, spec.get("epsilon", nn.BATCHNORM_DEFAULTS["epsilon"]))
            if pending is not None:
                k, b = pending[1], pending[2]
                pending = (pending[0], (k * scale).astype(np.float32), (b * scale + shift).astype(np.float32), pending[3])
            else:
                steps.append(lambda x, s=scale.astype(np.float32), t=shift.astype(np.float32): x * s + t)
            continue
        flush()
        if kind == "relu":
            steps.append(lambda x: np.maximum(x, 0.0))
        elif kind == "maxpool2d":
            steps.append(lambda x, s=spec.get("size", 2): nn.maxpool2d(x, s))
        elif kind == "flatten":
            steps.append(lambda x: x.reshape(len(x), -1))
        elif kind == "softmax":
            steps.append(nn.softmax)
        # dropout: identity at inference
    flush()
    return steps


def make_runtime(bundle: Bundle, kind: str = "auto"):
    """The runtime to use for this bundle. 'auto' picks the best one available."""
    if kind not in RUNTIMES:
        raise RuntimeUnavailable(f"unknown runtime {kind!r} (choose from {', '.join(RUNTIMES)})")
    return NumpyRuntime(bundle)
