"""Layer specs and the inference-only forward pass, shared by the Pi and the trainer.

An architecture is a list of layer specs (plain dicts, stored as JSON in the bundle), e.g.
``{"type": "conv2d", "filters": 6, "kernel": 5, "padding": "valid"}``. Tensors are NHWC and
weights use Keras' layouts (conv kernel HWIO, dense kernel (in, out)), so the same numbers load
into either framework. Weight arrays are named ``L<index>.<name>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class SpecError(ValueError):
    """A layer spec that cannot be built (unknown type, bad parameter, impossible shape)."""


@dataclass(frozen=True)
class LayerShape:
    index: int
    spec: dict
    input_shape: tuple
    output_shape: tuple
    weights: dict  # name -> shape of every array this layer owns


def _int_param(spec: dict, key: str, where: str, minimum: int = 1, default=None) -> int:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(f"{where}: '{key}' must be an integer >= {minimum}, got {value!r}")
    return value


BATCHNORM_DEFAULTS = {"epsilon": 1e-3, "momentum": 0.99}  # Keras' defaults

_PARAMS = {
    "conv2d": {"filters", "kernel", "padding"},
    "relu": set(),
    "maxpool2d": {"size"},
    "batchnorm": {"epsilon", "momentum"},
    "dropout": {"rate"},
    "flatten": set(),
    "dense": {"units"},
    "softmax": set(),
}


def infer_shapes(architecture: list, input_shape) -> list[LayerShape]:
    """Check every spec and return the shape each layer takes, gives and owns."""
    if not isinstance(architecture, list) or not architecture:
        raise SpecError("architecture must be a non-empty list of layer specs")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise SpecError(f"input shape must be (height, width, channels), got {list(input_shape)}")
    layers = []
    for i, spec in enumerate(architecture):
        where = f"layer {i}"
        if not isinstance(spec, dict) or spec.get("type") not in _PARAMS:
            kind = spec.get("type") if isinstance(spec, dict) else spec
            raise SpecError(f"{where}: unknown layer type {kind!r} (known: {', '.join(_PARAMS)})")
        kind = spec["type"]
        where = f"layer {i} ({kind})"
        extra = set(spec) - _PARAMS[kind] - {"type"}
        if extra:
            raise SpecError(f"{where}: unknown parameter {sorted(extra)[0]!r}")
        weights: dict = {}
        if kind == "conv2d":
            if len(shape) != 3:
                raise SpecError(f"{where}: needs an image input, got shape {list(shape)}")
            f = _int_param(spec, "filters", where)
            k = _int_param(spec, "kernel", where)
            padding = spec.get("padding", "valid")
            if padding not in ("valid", "same"):
                raise SpecError(f"{where}: 'padding' must be 'valid' or 'same', got {padding!r}")
            h, w, c = shape
            if padding == "valid":
                h, w = h - k + 1, w - k + 1
            if h < 1 or w < 1:
                raise SpecError(f"{where}: a {k}x{k} kernel does not fit a {shape[0]}x{shape[1]} input")
            weights = {"kernel": (k, k, c, f), "bias": (f,)}
            out = (h, w, f)
        elif kind == "maxpool2d":
            if len(shape) != 3:
                raise SpecError(f"{where}: needs an image input, got shape {list(shape)}")
            s = _int_param(spec, "size", where, minimum=2, default=2)
            out = (shape[0] // s, shape[1] // s, shape[2])
            if out[0] < 1 or out[1] < 1:
                raise SpecError(f"{where}: a {s}x{s} pool does not fit a {shape[0]}x{shape[1]} input")
        elif kind == "batchnorm":
            for key, default in BATCHNORM_DEFAULTS.items():
                v = spec.get(key, default)
                lo, hi = 0.0, 1.0
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < v < hi:
                    raise SpecError(f"{where}: '{key}' must be a number in ({lo}, {hi}), got {v!r}")
            c = shape[-1]
            weights = {"gamma": (c,), "beta": (c,), "mean": (c,), "var": (c,)}
            out = shape
        elif kind == "dropout":
            r = spec.get("rate", 0.5)
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
                raise SpecError(f"{where}: 'rate' must be a number in [0, 1), got {r!r}")
            out = shape
        elif kind == "flatten":
            out = (int(np.prod(shape)),)
        elif kind == "dense":
            if len(shape) != 1:
                raise SpecError(f"{where}: needs a flat input (add a flatten layer), got shape {list(shape)}")
            u = _int_param(spec, "units", where)
            weights = {"kernel": (shape[0], u), "bias": (u,)}
            out = (u,)
        elif kind == "softmax":
            if i != len(architecture) - 1:
                raise SpecError(f"{where}: softmax must be the last layer")
            out = shape
        else:  # relu
            out = shape
        layers.append(LayerShape(i, spec, shape, out, weights))
        shape = out
    if architecture[-1].get("type") != "softmax" or len(shape) != 1:
        raise SpecError("architecture must end with dense -> softmax giving one score per class")
    return layers


def weight_names(layers: list[LayerShape]) -> dict:
    """Every array the architecture owns: bundle name -> shape."""
    return {f"L{l.index}.{n}": s for l in layers for n, s in l.weights.items()}


def parameter_count(layers: list[LayerShape]) -> int:
    """How many numbers the architecture's arrays hold."""
    return sum(int(np.prod(s)) for l in layers for s in l.weights.values())


# --- forward operations (NHWC, float32) ------------------------------------------------------

def pad_same(x: np.ndarray, k: int) -> np.ndarray:
    """Zero padding that keeps height and width for a k x k kernel (Keras 'same', stride 1)."""
    lo, hi = (k - 1) // 2, k // 2
    return np.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))


def im2col(x: np.ndarray, k: int, out: np.ndarray | None = None) -> np.ndarray:
    """(N, H, W, C) -> (N, H-k+1, W-k+1, k*k*C), patch order (kh, kw, C) to match HWIO kernels;
    into ``out`` (C-contiguous, that shape) if given.

    Copied one kernel row at a time: in NHWC, a patch's row is k*C contiguous numbers, so each
    of the k copies moves runs of k*C (6x faster than one copy of the transposed window view,
    whose inner runs are C long)."""
    x = np.ascontiguousarray(x)
    n, h, w, c = x.shape
    ho, wo = h - k + 1, w - k + 1
    cols = np.empty((n, ho, wo, k, k * c), x.dtype) if out is None else out.reshape(n, ho, wo, k, k * c)
    s = x.strides
    for i in range(k):
        cols[:, :, :, i, :] = np.lib.stride_tricks.as_strided(x[:, i:], (n, ho, wo, k * c), s, writeable=False)
    return cols.reshape(n, ho, wo, k * k * c)


def conv2d(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, padding: str) -> np.ndarray:
    k = kernel.shape[0]
    if padding == "same":
        x = pad_same(x, k)
    cols = im2col(x, k)
    return cols @ kernel.reshape(-1, kernel.shape[-1]) + bias


def maxpool2d(x: np.ndarray, size: int) -> np.ndarray:
    n, h, w, c = x.shape
    ho, wo = h // size, w // size
    x = x[:, : ho * size, : wo * size, :].reshape(n, ho, size, wo, size, c)
    return x.max(axis=(2, 4))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def fold_batchnorm(weights: dict, eps: float):
    """BatchNorm in inference mode as a per-channel scale and shift."""
    scale = weights["gamma"] / np.sqrt(weights["var"] + eps)
    return scale, weights["beta"] - weights["mean"] * scale
