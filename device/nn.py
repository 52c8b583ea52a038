"""Layer specs, the layer types that check and compute them, and the plain inference forward
pass, shared by the Pi and the trainer.

An architecture is a list of layer specs (plain dicts, stored as JSON in the bundle), e.g.
``{"type": "conv2d", "filters": 6, "kernel": 5, "padding": "valid"}``; ``LAYERS`` maps each
"type" to its class (one per layer type). Tensors are NHWC and weights use Keras' layouts (conv
kernel HWIO, dense kernel (in, out)), so the same numbers load into either framework. Weight
arrays are named ``L<index>.<name>``.
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


def _image_input(shape: tuple, where: str) -> None:
    if len(shape) != 3:
        raise SpecError(f"{where}: needs an image input, got shape {list(shape)}")


# --- the layer types -------------------------------------------------------------------------
#
# One class per layer type, everything the device knows about it in one place: the parameters
# its spec may have, its checks and the arrays it owns (check), its inference forward pass
# written plainly (forward: what the NumPy runtime's fused, buffered form is tested against) and
# what it adds to that fast form (plan: calls on device.runtime.Plan, which fuses). The trainer's
# layer and the Keras builder of each type are in training/registry.py, under the same names.

class LayerType:
    """A kind of layer. Stateless: a layer is this type and a spec (a dict)."""

    name = ""
    params: frozenset = frozenset()  # the spec's keys besides "type"

    def check(self, spec: dict, shape: tuple, where: str, last: bool) -> tuple[tuple, dict]:
        """(output shape, {weight name: shape}) on an input of ``shape``; a SpecError if the spec
        cannot be built. ``last``: whether it is the architecture's last layer."""
        return shape, {}

    def forward(self, x: np.ndarray, spec: dict, weights: dict) -> np.ndarray:
        """The layer at inference, plainly: (N, ...) in, (N, ...) out."""
        return x

    def plan(self, plan, spec: dict, weights: dict) -> None:
        """Add the layer to the NumPy runtime's fused plan (device.runtime.Plan)."""


class Conv2D(LayerType):
    """Stride 1, 'valid' or 'same' padding (Keras': the odd pixel after), HWIO kernel."""

    name, params = "conv2d", frozenset({"filters", "kernel", "padding"})

    def check(self, spec, shape, where, last):
        _image_input(shape, where)
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
        return (h, w, f), {"kernel": (k, k, c, f), "bias": (f,)}

    def forward(self, x, spec, weights):
        kernel = weights["kernel"]
        k = kernel.shape[0]
        if spec.get("padding", "valid") == "same":
            x = pad_same(x, k)
        n, h, w, _ = x.shape
        ho, wo = h - k + 1, w - k + 1
        out = np.zeros((n, ho, wo, kernel.shape[3]), np.result_type(x, kernel))
        for i in range(k):  # each kernel offset's share: the input shifted by it, times its weights
            for j in range(k):
                out += x[:, i:i + ho, j:j + wo, :] @ kernel[i, j]
        return out + weights["bias"]

    def plan(self, plan, spec, weights):
        plan.conv(weights["kernel"], weights["bias"], spec.get("padding", "valid"))


class ReLU(LayerType):
    name = "relu"

    def forward(self, x, spec, weights):
        return np.maximum(x, 0)

    def plan(self, plan, spec, weights):
        plan.relu()


class MaxPool2D(LayerType):
    """Non-overlapping size x size windows; rows and columns that do not fill one are dropped."""

    name, params = "maxpool2d", frozenset({"size"})

    def check(self, spec, shape, where, last):
        _image_input(shape, where)
        s = _int_param(spec, "size", where, minimum=2, default=2)
        out = (shape[0] // s, shape[1] // s, shape[2])
        if out[0] < 1 or out[1] < 1:
            raise SpecError(f"{where}: a {s}x{s} pool does not fit a {shape[0]}x{shape[1]} input")
        return out, {}

    def forward(self, x, spec, weights):
        return maxpool2d(x, spec.get("size", 2))

    def plan(self, plan, spec, weights):
        plan.pool(spec.get("size", 2))


class BatchNorm(LayerType):
    """Per channel (the last axis): at inference, (x - mean) / sqrt(var + epsilon) * gamma + beta."""

    name, params = "batchnorm", frozenset(BATCHNORM_DEFAULTS)

    def check(self, spec, shape, where, last):
        for key, default in BATCHNORM_DEFAULTS.items():
            v = spec.get(key, default)
            lo, hi = 0.0, 1.0
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < v < hi:
                raise SpecError(f"{where}: '{key}' must be a number in ({lo}, {hi}), got {v!r}")
        c = shape[-1]
        return shape, {"gamma": (c,), "beta": (c,), "mean": (c,), "var": (c,)}

    @staticmethod
    def epsilon(spec: dict) -> float:
        return spec.get("epsilon", BATCHNORM_DEFAULTS["epsilon"])

    def forward(self, x, spec, weights):
        w = weights
        return (x - w["mean"]) / np.sqrt(w["var"] + self.epsilon(spec)) * w["gamma"] + w["beta"]

    def plan(self, plan, spec, weights):
        plan.scale(*fold_batchnorm(weights, self.epsilon(spec)))


class Dropout(LayerType):
    """Training only: the identity at inference."""

    name, params = "dropout", frozenset({"rate"})

    def check(self, spec, shape, where, last):
        r = spec.get("rate", 0.5)
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
            raise SpecError(f"{where}: 'rate' must be a number in [0, 1), got {r!r}")
        return shape, {}


class Flatten(LayerType):
    """(N, H, W, C) -> (N, H*W*C), in NHWC order (Keras')."""

    name = "flatten"

    def check(self, spec, shape, where, last):
        return (int(np.prod(shape)),), {}

    def forward(self, x, spec, weights):
        return x.reshape(len(x), -1)

    def plan(self, plan, spec, weights):
        plan.flatten()


class Dense(LayerType):
    name, params = "dense", frozenset({"units"})

    def check(self, spec, shape, where, last):
        if len(shape) != 1:
            raise SpecError(f"{where}: needs a flat input (add a flatten layer), got shape {list(shape)}")
        u = _int_param(spec, "units", where)
        return (u,), {"kernel": (shape[0], u), "bias": (u,)}

    def forward(self, x, spec, weights):
        return x @ weights["kernel"] + weights["bias"]

    def plan(self, plan, spec, weights):
        plan.dense(weights["kernel"], weights["bias"])


class Softmax(LayerType):
    """The output: scores to probabilities. Always last."""

    name = "softmax"

    def check(self, spec, shape, where, last):
        if not last:
            raise SpecError(f"{where}: softmax must be the last layer")
        return shape, {}

    def forward(self, x, spec, weights):
        return softmax(x)

    def plan(self, plan, spec, weights):
        plan.softmax()


# Every layer type by its spec name, in the order error messages list them.
LAYERS = {t.name: t for t in (Conv2D(), ReLU(), MaxPool2D(), BatchNorm(), Dropout(), Flatten(), Dense(), Softmax())}


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
        if not isinstance(spec, dict) or spec.get("type") not in LAYERS:
            kind = spec.get("type") if isinstance(spec, dict) else spec
            raise SpecError(f"{where}: unknown layer type {kind!r} (known: {', '.join(LAYERS)})")
        layer_type = LAYERS[spec["type"]]
        where = f"layer {i} ({layer_type.name})"
        extra = set(spec) - layer_type.params - {"type"}
        if extra:
            raise SpecError(f"{where}: unknown parameter {sorted(extra)[0]!r}")
        out, weights = layer_type.check(spec, shape, where, last=i == len(architecture) - 1)
        layers.append(LayerShape(i, spec, shape, out, weights))
        shape = out
    if architecture[-1].get("type") != "softmax" or len(shape) != 1:
        raise SpecError("architecture must end with dense -> softmax giving one score per class")
    return layers


def layer_type(layer: LayerShape) -> LayerType:
    return LAYERS[layer.spec["type"]]


def layer_weights(layer: LayerShape, weights: dict) -> dict:
    """The layer's own arrays, by their names in the layer (kernel, bias, ...), from bundle-named ones."""
    return {n: weights[f"L{layer.index}.{n}"] for n in layer.weights}


def forward(architecture: list, input_shape, weights: dict, x: np.ndarray) -> np.ndarray:
    """The plain forward pass at inference, one layer type's forward after another: the
    reference the NumPy runtime's fast form is tested against (slow; not for frames)."""
    for layer in infer_shapes(architecture, input_shape):
        x = layer_type(layer).forward(x, layer.spec, layer_weights(layer, weights))
    return x


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
    of the k copies moves runs of k*C (faster than one copy of the transposed window view, whose
    inner runs are C long)."""
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
