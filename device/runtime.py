"""Runtimes: turn a bundle into ``predict(batch) -> probabilities``.

``NumpyRuntime`` needs nothing but NumPy. BatchNorm is folded into the conv/dense before it and
dropout is dropped; each conv/dense then runs with its ReLU and max-pool fused, each conv in the
formulation fastest for its shape (timed once per batch size). At a frame, the cost is the number
of NumPy calls, not arithmetic: every buffer and view is made once per batch size, each layer
writes straight into the next one's input (zero border, bias column of ones, dense rows) and a
forward pass is a list of argument-free calls, about 3 per conv and 2 per dense layer. The
plan of ops (Conv, Dense, Scale, Relu, Pool, Flatten, Softmax) is made by each layer type's
``plan`` in device.nn; tests/test_numpy_runtime.py checks it against device.nn.forward, the
plain forward pass, in every conv form.

``TfliteRuntime`` runs the bundle's int8 TFLite entry through the first interpreter that imports:
ai_edge_litert (numpy 2, 64-bit), tflite_runtime (numpy < 2, 32-bit Pi OS), tensorflow.lite.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from functools import partial
from typing import NamedTuple

import numpy as np

from device import nn
from device.bundle import Bundle
from device.config import RUNTIMES  # the names [model] runtime accepts (re-exported)

BLAS_THREAD_MIN = 65536 * 4  # OpenBLAS' SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD
CHANNELS_LAST = 8  # a conv input with this many channels or more is stored channel-last
ALL_FORMS_MAX = 1 << 22  # floats in a patch matrix (16 MiB) up to which every conv form is timed (NumpyRuntime)
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
    """The bundle's network in NumPy, fast at batch 1 (the frame path), any batch size.

    ``conv_forms``: the forms a conv layer may take (see _conv_steps), where one of them applies
    to it (else any); None: every form, the fastest kept. ``all_forms_max``: the size of a conv's
    patch matrix (floats) up to which all its forms are built and timed in turns; above it, one
    at a time against the best so far (at most two sets of buffers)."""

    name = "numpy"
    description = "numpy"

    def __init__(self, bundle: Bundle, conv_forms=None, all_forms_max: int = ALL_FORMS_MAX):
        self.labels = list(bundle.labels)
        self.input_shape = bundle.input_shape
        self._ops = plan(bundle)
        self._choice = _FormChoice(None if conv_forms is None else frozenset(conv_forms), all_forms_max)
        self._compiled: dict = {}  # batch size -> _Compiled

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W, C) float32 inputs -> (N, classes) probabilities."""
        x = as_batch(batch, self.input_shape)
        n = len(x)
        if n == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        first, steps, out, _ = self._compiled_for(n)
        np.copyto(first, x.transpose(3, 0, 1, 2))
        for step in steps:
            step()
        return out.copy()  # the buffers are reused by the next call

    def conv_forms(self, batch_size: int = 1) -> list[str]:
        """The form each conv layer runs in at this batch size, in layer order."""
        return list(self._compiled_for(batch_size).conv_forms)

    def _compiled_for(self, n: int) -> _Compiled:
        compiled = self._compiled.get(n)
        if compiled is None:
            if len(self._compiled) > 4:  # a few batch sizes in use at most; don't hoard memory
                self._compiled.clear()
            compiled = self._compiled[n] = _compile(self._ops, n, self.input_shape, self._choice)
        return compiled


def last_hidden_layer(bundle: Bundle):
    """The NumPy forward pass up to the output layer (the last dense one), stopped before the
    ReLU that follows the last hidden layer, if one does: a function from (N, H, W, C) inputs to
    (N, D) float64 features, run one input at a time, as the frame path runs, so that each
    product stays on one BLAS thread. device.teach's frozen network (device.teach.kept_layers
    keeps the same layers); the bundle must have a layer with weights before its output layer."""
    ops = plan(bundle)
    last = max(i for i, op in enumerate(ops) if isinstance(op, Dense))
    kept = ops[:last]
    if isinstance(kept[-1], Relu):
        kept = kept[:-1]
    elif isinstance(kept[-1], (Conv, Dense)) and kept[-1].relu:
        kept[-1] = replace(kept[-1], relu=False)
    first, steps, out, _ = _compile(kept, 1, bundle.input_shape)

    def features(batch) -> np.ndarray:
        x = as_batch(batch, bundle.input_shape)
        rows = np.empty((len(x), out.shape[1]))
        for i, one in enumerate(x):
            np.copyto(first, one[None].transpose(3, 0, 1, 2))
            for step in steps:
                step()
            rows[i] = out[0]
        return rows
    return features


# --- the plan: the forward pass as fused ops ---------------------------------------------------
#
# Each op knows the buffer it wants to read (input_buffer: a conv's zero border, a dense layer's
# column of ones) and the NumPy calls it makes for a batch size (compile). Images are channel-major
# (C, N, H, W) so that each im2col copy moves whole rows.

@dataclass
class Conv:
    """A conv layer and what is fused into it: a BatchNorm right after it (folded into kernel
    and bias), the max-pools and the ReLU after it (pooling commutes with +bias and with ReLU)."""

    kernel: np.ndarray  # float32, HWIO
    bias: np.ndarray
    padding: str = "valid"
    pools: list = field(default_factory=list)  # max-pool sizes, in order
    relu: bool = False
    in_place = False

    @property
    def open(self) -> bool:
        """Nothing fused after it yet: a BatchNorm right after it can be folded in."""
        return not self.pools and not self.relu

    def input_buffer(self, shape: tuple, ops: list, i: int) -> _Dest:
        c, n, h, w = shape
        k = self.kernel.shape[0]
        lo = (k - 1) // 2 if self.padding == "same" else 0
        hp, wp = (h + k - 1, w + k - 1) if self.padding == "same" else (h, w)
        if c >= CHANNELS_LAST:
            # Many channels: stored channel-last, so that a patch's row is k*C contiguous
            # numbers and the (pixels, k*k*C) im2col copy moves runs that long.
            full = np.zeros((n, hp, wp, c), np.float32).transpose(3, 0, 1, 2)
        else:
            full = np.zeros((c, n, hp, wp), np.float32)  # the border stays zero
        return _Dest(full[:, :, lo:lo + h, lo:lo + w], full)

    def compile(self, build: _Build, i: int, cur: _Dest, perm):
        k, f, n = self.kernel.shape[0], self.kernel.shape[-1], build.n
        _, _, hp, wp = cur.full.shape
        out_shape = (f, n, hp - k + 1, wp - k + 1)
        for size in self.pools:
            out_shape = (f, n, out_shape[2] // size, out_shape[3] // size)
        dest = _dest(build.ops, i + 1, out_shape)
        steps, form = _conv_steps(self, cur.full, dest.write, build.choice)
        build.steps += steps
        build.conv_forms.append(form)
        return dest, None


@dataclass
class Dense:
    """A dense layer, with a BatchNorm right after it folded in and the ReLU after it fused."""

    kernel: np.ndarray  # float32, (in, out)
    bias: np.ndarray
    relu: bool = False
    in_place = False

    @property
    def open(self) -> bool:
        """Nothing fused after it yet: a BatchNorm right after it can be folded in."""
        return not self.relu

    def input_buffer(self, shape: tuple, ops: list, i: int) -> _Dest:
        full = np.ones((shape[0], shape[1] + 1), np.float32)  # a column of ones carries the bias
        return _Dest(full[:, :-1], full)

    def compile(self, build: _Build, i: int, cur: _Dest, perm):
        kernel = self.kernel if perm is None else self.kernel[perm]
        matrix = np.ascontiguousarray(np.concatenate([kernel, self.bias[None]]), np.float32)
        dest = _dest(build.ops, i + 1, (build.n, matrix.shape[1]))
        out = dest.write
        product = np.dot if out.flags.c_contiguous else np.matmul  # np.dot needs a contiguous out
        build.steps.append(partial(product, cur.full, matrix, out=out))
        if self.relu:
            build.steps.append(partial(np.maximum, out, np.float32(0), out=out))
        return dest, None


class _Op:
    """An op with no weights to fuse into: reads a plain buffer."""

    in_place = False  # True: works on its input's buffer (skipped when looking for a reader)

    def input_buffer(self, shape: tuple, ops: list, i: int) -> _Dest:
        return _Dest(np.empty(shape, np.float32))


@dataclass(frozen=True)
class Scale(_Op):
    """A BatchNorm with no conv or dense right before it to fold into: x * scale + shift."""

    scale: np.ndarray
    shift: np.ndarray
    in_place = True

    def compile(self, build: _Build, i: int, cur: _Dest, perm):
        s, t = self.scale, self.shift
        if cur.write.ndim == 4:
            s, t = s.reshape(-1, 1, 1, 1), t.reshape(-1, 1, 1, 1)
        elif perm is not None:
            s, t = s[perm], t[perm]
        build.steps += [partial(np.multiply, cur.write, s, out=cur.write), partial(np.add, cur.write, t, out=cur.write)]
        return cur, perm


@dataclass(frozen=True)
class Relu(_Op):
    """A ReLU with no conv or dense right before it."""

    in_place = True

    def compile(self, build: _Build, i: int, cur: _Dest, perm):
        build.steps.append(partial(np.maximum, cur.write, np.float32(0), out=cur.write))
        return cur, perm


@dataclass(frozen=True)
class Pool(_Op):
    """A max-pool with no conv right before it."""

    size: int

    def compile(self, build: _Build, i: int, cur: _Dest, perm):
        cc, _, hh, ww = cur.write.shape
        dest = _dest(build.ops, i + 1, (cc, build.n, hh // self.size, ww // self.size))
        build.steps += _pool_into(cur.write, self.size, dest.write)
        return dest, perm


@dataclass(frozen=True)
class Flatten(_Op):
    """No step of its own: the image before it is written straight into the vector after it."""

    def input_buffer(self, shape: tuple, ops: list, i: int) -> _Dest:
        c, n, h, w = shape
        vec = _dest(ops, i + 1, (n, c * h * w))
        j = _next(ops, i + 1)
        if j < len(ops) and isinstance(ops[j], Dense):
            # Channel-major rows (c, y, x): the dense kernel's rows are permuted to match at load.
            write = _view(vec.write, (n, c, h, w)).transpose(1, 0, 2, 3)
            perm = np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).ravel()
        else:
            write, perm = _view(vec.write, (n, h, w, c)).transpose(3, 0, 1, 2), None
        return _Dest(write, vec.full, vec.write, perm)

    def compile(self, build: _Build, i: int, cur: _Dest, perm):
        return _Dest(cur.flat, cur.full), cur.perm


@dataclass(frozen=True)
class Softmax(_Op):
    """The last op."""

    def compile(self, build: _Build, i: int, cur: _Dest, perm):
        x, out = cur.write, np.empty(cur.write.shape, np.float32)
        if build.n == 1:  # a frame: a handful of Python floats, one call instead of five
            build.steps.append(partial(_softmax_row, x[0], out[0]))
        else:
            m = np.empty((build.n, 1), np.float32)
            build.steps += [partial(np.maximum.reduce, x, axis=1, keepdims=True, out=m),
                            partial(np.subtract, x, m, out=out), partial(np.exp, out, out=out),
                            partial(np.add.reduce, out, axis=1, keepdims=True, out=m),
                            partial(np.divide, out, m, out=out)]
        return _Dest(out), perm


class Plan:
    """The ops of a forward pass, added layer by layer by each layer type's ``plan`` (device.nn):
    BatchNorm folded into the conv/dense right before it, ReLU and max-pool fused into it,
    dropout gone; what cannot be fused is an op of its own."""

    def __init__(self):
        self.ops: list = []

    def _last(self):
        return self.ops[-1] if self.ops else None

    def conv(self, kernel, bias, padding: str) -> None:
        self.ops.append(Conv(kernel.astype(np.float32), bias.astype(np.float32), padding))

    def dense(self, kernel, bias) -> None:
        self.ops.append(Dense(kernel.astype(np.float32), bias.astype(np.float32)))

    def scale(self, scale, shift) -> None:
        last = self._last()
        if isinstance(last, (Conv, Dense)) and last.open:  # no pool or ReLU in between: fold it in
            last.kernel = (last.kernel * scale).astype(np.float32)
            last.bias = (last.bias * scale + shift).astype(np.float32)
        else:
            self.ops.append(Scale(scale.astype(np.float32), shift.astype(np.float32)))

    def relu(self) -> None:
        last = self._last()
        if isinstance(last, (Conv, Dense)):
            last.relu = True
        else:
            self.ops.append(Relu())

    def pool(self, size: int) -> None:
        last = self._last()
        if isinstance(last, Conv):
            last.pools.append(size)  # max-pool commutes with +bias and with ReLU
        else:
            self.ops.append(Pool(size))

    def flatten(self) -> None:
        self.ops.append(Flatten())

    def softmax(self) -> None:
        self.ops.append(Softmax())


def plan(bundle: Bundle) -> list:
    """The bundle's forward pass as fused ops (Conv, Dense, Scale, Relu, Pool, Flatten, Softmax)."""
    built = Plan()
    for layer in nn.infer_shapes(bundle.architecture, bundle.input_shape):
        nn.layer_type(layer).plan(built, layer.spec, nn.layer_weights(layer, bundle.weights))
    return built.ops


class _Dest:
    """Where a layer writes its output: ``write`` in the layer's own logical shape (images
    (C, N, H, W), vectors (N, U)), inside ``full``, the buffer its reader wants (a conv's zero
    border, a dense layer's column of ones); ``flat``/``perm``: the vector a flatten makes of it,
    and which input feature each of its columns is."""

    def __init__(self, write, full=None, flat=None, perm=None):
        self.write, self.full, self.flat, self.perm = write, full, flat, perm


class _FormChoice(NamedTuple):
    """How a conv's form is chosen (NumpyRuntime's arguments)."""

    forms: frozenset | None = None  # the forms allowed where one applies; None: all
    all_forms_max: int = ALL_FORMS_MAX


@dataclass
class _Build:
    """What compiling one batch size gathers: the steps, and the form each conv took."""

    ops: list
    n: int
    choice: _FormChoice
    steps: list = field(default_factory=list)
    conv_forms: list = field(default_factory=list)


class _Compiled(NamedTuple):
    input: np.ndarray  # (C, N, H, W) view the batch is copied into
    steps: list  # argument-free calls, in order
    output: np.ndarray  # (N, classes)
    conv_forms: list  # per conv layer, the form it runs in


def _view(a: np.ndarray, shape) -> np.ndarray:
    """``a`` seen with another shape, never a copy (writes through it must land in ``a``)."""
    v = a.view()
    v.shape = shape  # raises if only a copy could have this shape
    return v


def _next(ops: list, i: int) -> int:
    """Index of the first op from i on that is not done in place (scale, relu)."""
    while i < len(ops) and ops[i].in_place:
        i += 1
    return i


def _dest(ops: list, i: int, shape: tuple) -> _Dest:
    """A buffer for a tensor of logical `shape` laid out as op i (after in-place ops) reads it."""
    i = _next(ops, i)
    if i < len(ops):
        return ops[i].input_buffer(shape, ops, i)
    return _Dest(np.empty(shape, np.float32))


def _pool_into(src: np.ndarray, size: int, out: np.ndarray) -> list:
    """Steps of a non-overlapping max-pool of src (C, N, H, W) into out: maxima over rows, then
    over columns, of strided views (two calls for 2x2)."""
    c, n, h, w = src.shape
    ho, wo = h // size, w // size
    rows = np.empty((c, n, ho, w), np.float32)
    steps = [partial(np.maximum, src[:, :, 0:ho * size:size], src[:, :, 1:ho * size:size], out=rows)]
    steps += [partial(np.maximum, rows, src[:, :, i:ho * size:size], out=rows) for i in range(2, size)]
    steps.append(partial(np.maximum, rows[..., 0:wo * size:size], rows[..., 1:wo * size:size], out=out))
    steps += [partial(np.maximum, out, rows[..., j:wo * size:size], out=out) for j in range(2, size)]
    return steps


def _compile(ops: list, n: int, input_shape, choice: _FormChoice = _FormChoice()) -> _Compiled:
    """The steps of a forward pass at batch size n. Every array is allocated and every view made
    here, once; each step is one NumPy call on them (no arguments, no Python arithmetic per
    frame); the last image is written straight into the dense layer's input rows."""
    h, w, c = input_shape
    first = _dest(ops, 0, (c, n, h, w))
    build = _Build(ops, n, choice)
    cur, perm = first, None
    for i, op in enumerate(ops):
        cur, perm = op.compile(build, i, cur, perm)
    return _Compiled(first.write, build.steps, cur.write, build.conv_forms)


def _softmax_row(logits: np.ndarray, out: np.ndarray) -> None:
    """Softmax of one row of logits into ``out``, in (double) Python floats."""
    values = logits.tolist()
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    out[:] = [e / total for e in exps]


def _conv_steps(op: Conv, full: np.ndarray, dest: np.ndarray, choice: _FormChoice = _FormChoice()) -> tuple:
    """One conv (+ its max-pools, bias and ReLU) reading `full` (C, N, Hp, Wp, zero border
    included) and writing `dest` (F, N, Ho', Wo'): (its steps, the name of the form they take).

    Forms, timed here once per layer on its own buffers (they differ only in the order of float
    additions, ~1e-7) and the fastest kept (of those in choice.forms, where one applies):
    - "kp": im2col as a (k*k*C + 1, pixels) matrix (a row of ones carries the bias), filled by
      one strided copy whose inner runs are whole image rows, then kernel^T times it, giving the
      channel-major output directly;
    - "pk": the same matrix transposed in memory (pixels, k*k*C + 1) times the kernel;
    - "shifted_sum": for one input and one output channel, k*k multiply-adds of shifted views.
    Products are cut into blocks small enough that OpenBLAS runs each on one thread (it threads
    m*n*k >= 65536*4): threaded, a product was many times slower while another process kept the
    cores busy, as preprocessing or a camera does on the Pi.
    Max-pooling commutes with a per-channel bias and with ReLU, so both follow the pooling.

    Why one long function: the forms are closures over the layer's geometry (k, c, f, the
    input's windows, the BLAS block), built and timed together; as separate functions each would
    take that geometry as eight arguments, and the choice among them would be harder to read.
    """
    kernel, bias, pool_sizes, relu = op.kernel, op.bias, op.pools, op.relu
    c, n, hp, wp = full.shape
    k, f = kernel.shape[0], kernel.shape[-1]
    ho, wo = hp - k + 1, wp - k + 1
    depth = k * k * c
    windows = np.lib.stride_tricks.sliding_window_view(full, (k, k), axis=(2, 3)).transpose(4, 5, 0, 1, 2, 3)
    with_bias = np.concatenate([kernel.reshape(depth, f), bias[None]]).astype(np.float32)
    block = max(1, (BLAS_THREAD_MIN - 1) // ((depth + 1) * f))
    builders = {}  # form name -> function building its buffers: (steps, conv_out, used)
    orders = [("", (1, 1, n, ho, wo), windows[:, :, :, None, None], 1)]
    if len(pool_sizes) == 1:
        # "_phased": pixels ordered by their place in the pooling window, (s, s, N, Ho', Wo'):
        # the pool is then one maximum over s*s slabs, and a slab of zeros among them is the
        # ReLU; rows and columns the pool drops are never computed. The copy's inner runs are
        # strided, though, so it is timed against the natural order.
        s = pool_sizes[0]
        grid = (s, s, n, ho // s, wo // s)
        src = _view(windows[..., :grid[3] * s, :grid[4] * s], (k, k, c, n, grid[3], s, grid[4], s))
        orders.append(("_phased", grid, src.transpose(0, 1, 2, 5, 7, 3, 4, 6), s * s))

    def kp(grid, src, used):
        slabs, pixels = used + int(relu and used > 1), int(np.prod(grid))
        cols = np.empty((depth + 1, pixels), np.float32)
        cols[depth] = 1.0
        out = np.zeros((f, slabs, pixels // used), np.float32)
        product_out = _view(out[:, :used], (f, pixels))
        matrix = np.ascontiguousarray(with_bias.T)
        steps = [partial(np.copyto, _view(cols[:depth], (k, k, c, *grid)), src)]
        if block >= pixels and product_out.flags.c_contiguous:
            steps.append(partial(np.dot, matrix, cols, out=product_out))
        else:  # column blocks are strided views: np.matmul hands them to BLAS with their row stride
            steps += [partial(np.matmul, matrix, cols[:, r:r + block], out=product_out[:, r:r + block])
                      for r in range(0, pixels, block)]
        return steps, _view(out, (f, slabs, *grid[2:])), used

    def pk(grid, src, used):
        # Row blocks as one stacked product: np.matmul runs one (single-threaded) BLAS call per
        # block in C. The last block's spare rows read and write spare memory past the pixels.
        slabs, pixels = used + int(relu and used > 1), int(np.prod(grid))
        q, blocks = pixels // used, -(-pixels // block)
        rows = blocks * block if blocks > 1 else pixels
        cols = np.zeros((rows, depth + 1), np.float32)  # spare rows stay zero
        cols[:, depth] = 1.0
        spare = slabs - used  # the zero slab (ReLU) comes first, so the spare rows come last
        buffer = np.zeros((spare * q + rows, f), np.float32)
        out = _view(buffer[:slabs * q], (slabs, q, f))
        steps = [partial(np.copyto, _view(cols[:pixels].T[:depth], (k, k, c, *grid)), src)]
        if blocks > 1:
            steps.append(partial(np.matmul, _view(cols, (blocks, block, depth + 1)), with_bias,
                                 out=_view(buffer[spare * q:], (blocks, block, f))))
        else:
            steps.append(partial(np.dot, cols, with_bias, out=buffer[spare * q:]))
        return steps, _view(out, (slabs, *grid[2:], f)).transpose(4, 0, 1, 2, 3), used

    for suffix, grid, src, used in orders:
        builders["kp" + suffix] = partial(kp, grid, src, used)
        builders["pk" + suffix] = partial(pk, grid, src, used)

    def kp_wide():
        # Outputs computed at every column of the padded width (the extra ones are dropped by
        # the pooling's views). Then each (kernel offset, channel) row of the matrix is one
        # contiguous run of the input, so the copy streams, for 1.1-1.4x the multiply-adds.
        per_channel = n * hp * wp
        length = (n - 1) * hp * wp + (ho - 1) * wp + wo  # the last valid output is the last read
        size = full.itemsize
        runs = np.lib.stride_tricks.as_strided(full, (k, k, c, length), (wp * size, size, per_channel * size, size),
                                               writeable=False)
        cols = np.empty((depth + 1, length), np.float32)
        cols[depth] = 1.0
        out = np.empty((f, per_channel), np.float32)
        matrix = np.ascontiguousarray(with_bias.T)
        steps = [partial(np.copyto, _view(cols[:depth], (k, k, c, length)), runs)]
        steps += [partial(np.matmul, matrix, cols[:, r:r + block], out=out[:, r:min(r + block, length)])
                  for r in range(0, length, block)]
        return steps, _view(out, (f, n, hp, wp))[:, None, :, :ho, :wo], 1

    if full.flags.c_contiguous:  # channel-major only: each (offset, channel) row is one run
        builders["kp_wide"] = kp_wide

    def shifted_sum():  # the bias is added after pooling
        out = np.empty((1, n, ho, wo), np.float32)
        tmp = np.empty_like(out)
        taps = [(full[:, :, i:i + ho, j:j + wo], np.float32(kernel[i, j, 0, 0])) for i in range(k) for j in range(k)]
        (view, v), *rest = taps
        steps = [partial(np.multiply, view, v, out=out)]
        for view, v in rest:
            steps += [partial(np.multiply, view, v, out=tmp), partial(np.add, out, tmp, out=out)]
        return steps, out[:, None], 0  # 0: bias still to add

    if c == 1 and f == 1:
        builders["shifted_sum"] = shifted_sum

    def finish(conv_out, used):
        """Steps after the product, from conv_out (F, slabs, N, H, W) into dest."""
        if used > 1:
            return [partial(np.maximum.reduce, conv_out, axis=1, out=dest)]
        add_bias = used == 0
        steps, y = [], conv_out[:, 0]
        for m, size in enumerate(pool_sizes):
            pooled = dest if m == len(pool_sizes) - 1 else np.empty(
                (f, n, y.shape[2] // size, y.shape[3] // size), np.float32)
            steps += _pool_into(y, size, pooled)
            y = pooled
        if add_bias:
            steps.append(partial(np.add, y, bias.reshape(-1, 1, 1, 1).astype(np.float32), out=y))
        if not pool_sizes:
            steps.append(partial(np.maximum, y, np.float32(0), out=dest) if relu else partial(np.copyto, dest, y))
        elif relu:
            steps.append(partial(np.maximum, dest, np.float32(0), out=dest))
        return steps

    def build(name):
        conv, conv_out, used = builders[name]()
        return conv + finish(conv_out, used)

    if choice.forms is not None:
        builders = {name: b for name, b in builders.items() if name in choice.forms} or builders
    if n * ho * wo * (depth + 1) <= choice.all_forms_max:  # small (a frame): all built, timed round-robin
        forms = {name: build(name) for name in builders}
        best = _fastest({name: _run(steps) for name, steps in forms.items()})
        return forms[best], best
    # Large batches: one form at a time against the best so far, so at most two sets of buffers.
    best, best_name, best_time = None, None, float("inf")
    for name in builders:
        steps = build(name)
        t = _best_time(_run(steps), 2)
        if t < best_time:
            best, best_name, best_time = steps, name, t
        del steps  # the loser's buffers go before the next form's are made
    return best, best_name


def _fastest(candidates: dict, rounds: int = 9) -> str:
    """Name of the fastest function, timed in turns (in_turns), best round kept."""
    timers = {name: partial(_best_time, fn, 1) for name, fn in candidates.items()}
    best = in_turns(timers, rounds, lambda timer: timer())
    return min(best, key=best.get)


def in_turns(fns: dict, rounds: int, measure) -> dict:
    """The smallest ``measure(fn)`` per name, taking the functions in turn, round after round:
    a burst of load from another process falls on all of them alike, not on whichever ran then.
    (The benchmarks in bench/ use it too.)"""
    best = {}
    for _ in range(rounds):
        for name, fn in fns.items():
            value = measure(fn)
            if name not in best or value < best[name]:
                best[name] = value
    return best


def _run(steps):
    def run():
        for step in steps:
            step()
    return run


def _best_time(fn, repeats: int = 5) -> float:
    """Best of `repeats` timings of fn()."""
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
            _INTERPRETER = (label, _package_version(label, m), cls)
            break
    return _INTERPRETER or None


def _package_version(label: str, module) -> str:
    # The package's own __version__ first: importlib.metadata costs RSS (about a MB) for one string.
    top = importlib.import_module(module.__name__.split(".")[0])
    if isinstance(getattr(top, "__version__", None), str):
        return top.__version__
    from importlib.metadata import PackageNotFoundError, version
    dist = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}.get(label)
    for name in ([dist] if dist else ["tensorflow", "tensorflow-cpu"]):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "?"


# TFLite's C++ logger writes this line straight to the process's stderr (fd 2) whenever an
# interpreter is made, and its Python API has no switch for it: it would open the output of
# `cardcam predict` and `cardcam doctor`, and follow every model load in the journal.
DELEGATE_NOTICE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


def stderr_without_delegate_notice():
    """stderr_without the DELEGATE_NOTICE line."""
    return stderr_without(lambda line: line == DELEGATE_NOTICE)


# fd 2 belongs to the whole process: two redirects that interleave (the web page making a runtime
# while the loop reloads a model) would restore each other's temporary file. One at a time, then;
# re-entrant, so a redirect inside another in the same thread nests (it saves and restores the
# outer one's file).
_STDERR_REDIRECT = threading.RLock()


@contextlib.contextmanager
def stderr_without(unwanted):
    """fd 2 goes to a temporary file while the body runs; afterwards every line written there
    for which unwanted(line) (without its newline) is false is written to stderr: only those
    lines are lost. Where there is no stderr, fd 2 or temporary file, the body runs as is.
    Redirects in other threads wait for this one to end."""
    with _STDERR_REDIRECT:
        yield from _stderr_redirected(unwanted)


def _stderr_redirected(unwanted):
    try:
        sys.stderr.flush()
        caught = tempfile.TemporaryFile()
    except (AttributeError, OSError, ValueError):  # no stderr, or nowhere to write a file
        yield
        return
    with caught:
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2
            yield
            return
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            lines = caught.read().decode(errors="replace").splitlines(keepends=True)
            rest = "".join(line for line in lines if not unwanted(line.rstrip("\n")))
            if rest:
                sys.stderr.write(rest)
                sys.stderr.flush()


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
            # The default op resolver, with XNNPACK: without it (BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            # int8 lenet5 used a little less RSS but an invoke took much longer and gave other
            # int8 scores (README, Benchmarks: the measurements behind the code). What litert
            # costs in RSS is its library's pages, most touched only at load.
            with stderr_without_delegate_notice():
                self._interpreter = cls(model_content=bundle.tflite, num_threads=int(num_threads))
                self._interpreter.allocate_tensors()
        except Exception as e:  # the interpreters raise ValueError/RuntimeError on a bad flatbuffer
            first = (str(e).splitlines() or [type(e).__name__])[0]  # an empty message has no first line
            raise RuntimeUnavailable(f"{where}: the TFLite model cannot be loaded ({first})") from None
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
