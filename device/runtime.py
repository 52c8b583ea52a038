"""Runtimes: turn a bundle into ``predict(batch) -> probabilities``.

``NumpyRuntime`` needs nothing but NumPy. BatchNorm is folded into the conv/dense before it and
dropout is dropped; each conv/dense then runs with its ReLU and max-pool fused (pooling commutes
with a per-channel bias and with ReLU, so both are applied to the 4x smaller pooled map), into
buffers allocated once per batch size, each conv in the formulation fastest for its shape.

``TfliteRuntime`` runs the bundle's int8 TFLite entry through the first interpreter that imports:
ai_edge_litert (numpy 2, 64-bit), tflite_runtime (numpy < 2, 32-bit Pi OS), tensorflow.lite.
"""

from __future__ import annotations

import importlib
import importlib.util
import time

import numpy as np

from device import nn
from device.bundle import Bundle

RUNTIMES = ("auto", "numpy", "tflite")
_BLAS_THREAD_MIN = 65536 * 4  # OpenBLAS' SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD
_BAND_MAX = 1 << 17  # floats (512 KiB): larger row-band matrices are never the fast form
# Where a TFLite interpreter may come from, in order of preference: (module, what to call it).
TFLITE_MODULES = (("ai_edge_litert.interpreter", "ai_edge_litert"), ("tflite_runtime.interpreter", "tflite_runtime"),
                  ("tensorflow", "tensorflow.lite"))


class RuntimeUnavailable(RuntimeError):
    """The runtime asked for cannot run this bundle on this machine."""


# --- NumPy -----------------------------------------------------------------------------------

def as_batch(batch, input_shape) -> np.ndarray:
    """A float32 (N, H, W, C) batch from one input or many; a wrong shape is a ValueError."""
    x = np.asarray(batch, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.shape[1:] != tuple(input_shape):
        raise ValueError(f"input shape {list(x.shape[1:])} does not match the model's {list(input_shape)}")
    return x


class NumpyRuntime:
    name = "numpy"
    description = "numpy"

    def __init__(self, bundle: Bundle):
        self.labels = list(bundle.labels)
        self.input_shape = bundle.input_shape
        self._ops = _plan(bundle)
        self._compiled: dict = {}  # batch size -> list of steps writing into preallocated buffers

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W, C) float32 inputs -> (N, classes) probabilities."""
        x = as_batch(batch, self.input_shape)
        n = len(x)
        if n == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        steps = self._compiled.get(n)
        if steps is None:
            if len(self._compiled) > 4:  # a few batch sizes in use at most; don't hoard memory
                self._compiled.clear()
            steps = self._compiled[n] = _compile(self._ops, n, self.input_shape)
        for step in steps:
            x = step(x)
        return x.copy()  # the last buffer is reused by the next call


def _plan(bundle: Bundle) -> list:
    """The forward pass as fused ops: ("affine", kind, kernel, bias, padding, pool sizes, relu),
    ("scale", scale, shift), ("pool", size), ("relu",), ("flatten",), ("softmax",)."""
    layers = nn.infer_shapes(bundle.architecture, bundle.input_shape)
    weights = bundle.weights
    ops = []
    for layer in layers:
        kind, spec = layer.spec["type"], layer.spec
        w = {n: weights[f"L{layer.index}.{n}"] for n in layer.weights}
        last = ops[-1] if ops else None
        affine_open = last is not None and last[0] == "affine" and not last[5] and not last[6]
        if kind in ("conv2d", "dense"):
            ops.append(["affine", kind, w["kernel"].astype(np.float32), w["bias"].astype(np.float32),
                        spec.get("padding", "valid"), [], False])
        elif kind == "batchnorm":
            scale, shift = nn.fold_batchnorm(w, spec.get("epsilon", nn.BATCHNORM_DEFAULTS["epsilon"]))
            if affine_open:  # scale the conv/dense right before it (no pool or ReLU in between)
                last[2] = (last[2] * scale).astype(np.float32)
                last[3] = (last[3] * scale + shift).astype(np.float32)
            else:
                ops.append(["scale", scale.astype(np.float32), shift.astype(np.float32)])
        elif kind == "relu":
            if last is not None and last[0] == "affine":
                last[6] = True
            else:
                ops.append(["relu"])
        elif kind == "maxpool2d":
            if last is not None and last[0] == "affine" and last[1] == "conv2d":
                last[5].append(spec.get("size", 2))  # max-pool commutes with +bias and with ReLU
            else:
                ops.append(["pool", spec.get("size", 2)])
        elif kind == "flatten":
            ops.append(["flatten"])
        elif kind == "softmax":
            ops.append(["softmax"])
        # dropout: identity at inference
    return ops


def _pooler(shape, size: int):
    """Non-overlapping max-pool for inputs of `shape` into a preallocated output: the maximum
    over rows, then over columns, of strided views (no temporaries). Returns (pool, output)."""
    n, h, w, c = shape
    ho, wo = h // size, w // size
    rows = np.empty((n, ho, w, c), np.float32)
    out = np.empty((n, ho, wo, c), np.float32)

    def pool(x):
        np.maximum(x[:, 0:ho * size:size], x[:, 1:ho * size:size], out=rows)
        for i in range(2, size):
            np.maximum(rows, x[:, i:ho * size:size], out=rows)
        np.maximum(rows[:, :, 0:wo * size:size], rows[:, :, 1:wo * size:size], out=out)
        for j in range(2, size):
            np.maximum(out, rows[:, :, j:wo * size:size], out=out)
        return out
    return pool, out


def _compile(ops: list, n: int, input_shape) -> list:
    """Steps for batch size n; every intermediate array is allocated here, once."""
    steps = []
    shape = (n, *input_shape)
    for op in ops:
        kind = op[0]
        if kind == "affine" and op[1] == "conv2d":
            step, shape = _conv_step(op, shape)
        elif kind == "affine":
            kernel, bias, relu = op[2], op[3], op[6]
            out = np.empty((n, kernel.shape[1]), np.float32)

            def step(x, k=kernel, b=bias, out=out, relu=relu):
                np.matmul(x, k, out=out)
                out += b
                if relu:
                    np.maximum(out, 0.0, out=out)
                return out
            shape = out.shape
        elif kind == "scale":
            out = np.empty(shape, np.float32)

            def step(x, s=op[1], t=op[2], out=out):
                np.multiply(x, s, out=out)
                out += t
                return out
        elif kind == "relu":
            out = np.empty(shape, np.float32)

            def step(x, out=out):
                return np.maximum(x, 0.0, out=out)
        elif kind == "pool":
            step, out = _pooler(shape, op[1])
            shape = out.shape
        elif kind == "flatten":
            shape = (n, int(np.prod(shape[1:])))

            def step(x, shape=shape):
                return np.ascontiguousarray(x).reshape(shape)
        else:  # softmax
            out = np.empty(shape, np.float32)

            def step(x, out=out):
                np.subtract(x, x.max(axis=-1, keepdims=True), out=out)
                np.exp(out, out=out)
                out /= out.sum(axis=-1, keepdims=True)
                return out
        steps.append(step)
    return steps


def _conv_step(op, shape):
    """One conv (+ fused max-pools, bias, ReLU) for input `shape`: (step, output shape).

    Formulations, chosen by shape (bench/inference.py measures them):
    - im2col: every k x k window copied into a preallocated (pixels, k*k*C) matrix, then one
      matrix product (BLAS does the work). The copy is either one strided copy of all windows or
      k*k slice copies, whichever is faster for this layer here (timed once, when compiled).
    - row band: k input rows stacked, times one banded matrix per layer (see below); timed
      against im2col when the matrix is small.
    - shifted sum: k*k multiply-adds of shifted views, for a single input and output channel
      (a 1x1 matrix product is all overhead, and the window copy has a stride-1 inner axis).
    """
    _, kernel, bias, padding, pool_sizes, relu = op[1:]
    n, h, w, c = shape
    k, f = kernel.shape[0], kernel.shape[-1]
    # The input is copied into a buffer of our own (for 'same', inside its zero border), so every
    # view of it below is made once, here, and not per frame.
    if padding == "same":
        lo = (k - 1) // 2
        padded = np.zeros((n, h + k - 1, w + k - 1, c), np.float32)  # the border stays zero
        interior = padded[:, lo:lo + h, lo:lo + w, :]
    else:
        padded = np.zeros(shape, np.float32)  # zeros, not garbage, for the timing runs below
        interior = padded
    hp, wp = padded.shape[1], padded.shape[2]
    ho, wo = hp - k + 1, wp - k + 1
    conv_out = np.empty((n, ho, wo, f), np.float32)
    pools = []
    pooled_shape = conv_out.shape
    for size in pool_sizes:
        pool, out = _pooler(pooled_shape, size)
        pools.append(pool)
        pooled_shape = out.shape
    if c == 1 and f == 1:
        taps = [(padded[:, i:i + ho, j:j + wo, :], float(kernel[i, j, 0, 0])) for i in range(k) for j in range(k)]
        tmp = np.empty_like(conv_out)

        def convolve():
            (view, v), *rest = taps
            np.multiply(view, v, out=conv_out)
            for view, v in rest:
                np.multiply(view, v, out=tmp)
                np.add(conv_out, tmp, out=conv_out)
    else:
        cols = np.empty((n, ho, wo, k, k, c), np.float32)
        cols2 = cols.reshape(-1, k * k * c)
        out2 = conv_out.reshape(-1, f)
        matrix = np.ascontiguousarray(kernel.reshape(-1, f))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(1, 2)).transpose(0, 1, 2, 4, 5, 3)
        pairs = [(cols[:, :, :, i, j, :], padded[:, i:i + ho, j:j + wo, :]) for i in range(k) for j in range(k)]

        def one_copy():
            np.copyto(cols, windows)

        def slice_copies():
            for dst, src in pairs:
                np.copyto(dst, src)

        # Both fill the same matrix (identical results); which is faster depends on the shape and
        # the machine, so time both once, here, on this layer's own buffers.
        fill = min((one_copy, slice_copies), key=_best_time)
        # Row blocks small enough that OpenBLAS runs each on one thread (it threads a product of
        # m*n*k >= 65536*4). Threaded, a 256x400x32 product took 8 ms instead of 0.1 ms here while
        # another process kept the cores busy, as preprocessing or a camera does on the Pi.
        rows = max(1, (_BLAS_THREAD_MIN - 1) // (cols2.shape[1] * f))
        blocks = [(cols2[r:r + rows], out2[r:r + rows]) for r in range(0, len(cols2), rows)]

        def im2col():
            fill()
            for a, o in blocks:
                np.matmul(a, matrix, out=o)

        candidates = [im2col]
        band = _band_matrix(kernel, wp, wo)
        if band.size <= _BAND_MAX:
            # Row-band form: each output row (wo*f values) is k input rows (k*wp*c values) times
            # one banded matrix. More arithmetic (wp/k times), but its patches are whole rows,
            # copied k at a time; it wins for a single input channel on a narrow input (LeNet's
            # first layer) where the im2col copy, with its 1-wide inner axis, is the cost.
            stacked = np.empty((n, ho, k, wp * c), np.float32)
            stacked2, out_rows = stacked.reshape(n * ho, -1), conv_out.reshape(n * ho, wo * f)
            row_pairs = [(stacked[:, :, i, :], padded[:, i:i + ho].reshape(n, ho, wp * c)) for i in range(k)]
            rows = max(1, (_BLAS_THREAD_MIN - 1) // band.size)
            band_blocks = [(stacked2[r:r + rows], out_rows[r:r + rows]) for r in range(0, n * ho, rows)]

            def row_band():
                for dst, src in row_pairs:
                    np.copyto(dst, src)
                for a, o in band_blocks:
                    np.matmul(a, band, out=o)
            candidates.append(row_band)
        # The forms differ only in the order of float additions (~1e-7); time them here, once.
        convolve = min(candidates, key=_best_time)

    def step(x):
        np.copyto(interior, x)
        convolve()
        y = conv_out
        for pool in pools:
            y = pool(y)
        y += bias
        if relu:
            np.maximum(y, 0.0, out=y)
        return y
    return step, pooled_shape


def _band_matrix(kernel: np.ndarray, wp: int, wo: int) -> np.ndarray:
    """(k*wp*c, wo*f) matrix taking k stacked input rows to one output row of a 'valid' conv."""
    k, _, c, f = kernel.shape
    band = np.zeros((k, wp, c, wo, f), np.float32)
    for o in range(wo):
        band[:, o:o + k, :, o, :] = kernel
    return band.reshape(k * wp * c, wo * f)


def _best_time(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


# --- TFLite ----------------------------------------------------------------------------------

_INTERPRETER = None  # (module label, version, Interpreter class) once found; False: none here


def tflite_interpreter():
    """(label, version, Interpreter class) of the first TFLite runtime that imports, or None."""
    global _INTERPRETER
    if _INTERPRETER is None:
        _INTERPRETER = False
        for module, label in TFLITE_MODULES:
            if label == "tensorflow.lite" and importlib.util.find_spec("tensorflow") is None:
                continue
            try:
                m = importlib.import_module(module)
                cls = m.lite.Interpreter if label == "tensorflow.lite" else m.Interpreter
            except Exception:  # ImportError, or a wheel built for another numpy: try the next one
                continue
            _INTERPRETER = (label, _package_version(label), cls)
            break
    return _INTERPRETER or None


def _package_version(label: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    dist = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}.get(label)
    for name in ([dist] if dist else ["tensorflow", "tensorflow-cpu"]):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "?"


class TfliteRuntime:
    """The bundle's TFLite model, batch 1 per invoke, tensors allocated once."""

    name = "tflite"

    def __init__(self, bundle: Bundle, num_threads: int = 1, interpreter=None):
        where = str(bundle.path) if bundle.path else bundle.name
        if bundle.tflite is None:
            raise RuntimeUnavailable(f"{where}: the bundle has no TFLite model; add one with "
                                     f"`cardcam-train export --model {where}`, or use --runtime numpy")
        found = interpreter or tflite_interpreter()
        if found is None:
            raise RuntimeUnavailable("no TFLite runtime is installed: pip install ai-edge-litert "
                                     "(64-bit, numpy 2) or tflite-runtime (32-bit Pi OS, numpy < 2)")
        label, version, cls = found
        self.labels = list(bundle.labels)
        self.input_shape = bundle.input_shape
        try:
            self._interpreter = cls(model_content=bundle.tflite, num_threads=int(num_threads))
            self._interpreter.allocate_tensors()
        except Exception as e:  # the interpreters raise ValueError/RuntimeError on a bad flatbuffer
            raise RuntimeUnavailable(f"{where}: the TFLite model cannot be loaded ({str(e).splitlines()[0]})") from None
        inp, out = self._interpreter.get_input_details(), self._interpreter.get_output_details()
        if len(inp) != 1 or len(out) != 1 or tuple(inp[0]["shape"]) != (1, *self.input_shape) \
                or tuple(out[0]["shape"]) != (1, len(self.labels)):
            shapes = lambda details: [[int(v) for v in d["shape"]] for d in details]  # noqa: E731
            raise RuntimeUnavailable(f"{where}: the TFLite model takes {shapes(inp)} and gives {shapes(out)}, not "
                                     f"one {list(self.input_shape)} input and {len(self.labels)} scores")
        self._in, self._out = inp[0], out[0]
        self._in_scale, self._in_zero = self._in["quantization"]
        self._out_scale, self._out_zero = self._out["quantization"]
        self._in_type = np.dtype(self._in["dtype"])
        if self._in_type.kind in "iu":
            info = np.iinfo(self._in_type)
            self._in_range = (info.min, info.max)
        self._buffer = np.empty((1, *self.input_shape), self._in_type)
        kind = "int8" if self._in_type.kind in "iu" else "float32"
        self.backend = f"{label} {version}"
        self.num_threads = int(num_threads)
        self.description = (f"tflite ({label} {version}, {kind} input, {self.num_threads} "
                            f"thread{'s' if self.num_threads != 1 else ''})")

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W, C) float32 inputs -> (N, classes) probabilities, one invoke per input."""
        x = as_batch(batch, self.input_shape)
        it = self._interpreter
        result = np.empty((len(x), len(self.labels)), np.float32)
        for i in range(len(x)):
            if self._in_type.kind in "iu":  # quantise with the input tensor's own scale and zero point
                q = np.rint(x[i:i + 1] / np.float32(self._in_scale)) + self._in_zero
                np.clip(q, *self._in_range, out=q)
                self._buffer[...] = q
            else:
                self._buffer[...] = x[i:i + 1]
            it.set_tensor(self._in["index"], self._buffer)
            it.invoke()
            y = it.get_tensor(self._out["index"])[0]
            if y.dtype.kind in "iu":
                result[i] = (y.astype(np.float32) - self._out_zero) * np.float32(self._out_scale)
            else:
                result[i] = y
        return result


# --- choosing --------------------------------------------------------------------------------

def make_runtime(bundle: Bundle, kind: str = "auto", num_threads: int = 1):
    """The runtime to use for this bundle. 'auto': TFLite when the bundle has a TFLite model and
    a TFLite runtime imports, otherwise NumPy. ``num_threads``: TFLite interpreter threads."""
    if kind not in RUNTIMES:
        raise RuntimeUnavailable(f"unknown runtime {kind!r} (choose from {', '.join(RUNTIMES)})")
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise RuntimeUnavailable(f"TFLite threads must be a whole number >= 1, got {num_threads!r}")
    if kind == "tflite" or (kind == "auto" and bundle.tflite is not None and tflite_interpreter() is not None):
        return TfliteRuntime(bundle, num_threads)
    return NumpyRuntime(bundle)


def describe(kind: str = "auto") -> str:
    """What a runtime setting runs on this machine, for the daemon's first log line and the doctor."""
    found = tflite_interpreter() if kind != "numpy" else None
    via = f"tflite via {found[0]} {found[1]}" if found else ""
    if kind == "numpy":
        return "numpy"
    if kind == "tflite":
        return via or "tflite, but no TFLite runtime is installed (pip install ai-edge-litert or tflite-runtime)"
    if found is None:
        return "numpy (no TFLite runtime installed)"
    return f"{via} for bundles with a TFLite model, else numpy"
