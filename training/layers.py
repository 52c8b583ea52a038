"""Layers as forward/backward pairs (CS231n style), NHWC, vectorised.

``forward(x, training)`` computes and keeps what ``backward`` needs; ``backward(dout)`` fills
``grads`` (same keys as ``params``) and returns the gradient for the layer's input. ``state``
holds non-trained arrays (BatchNorm's running statistics). Parameter names match the bundle's.
Every backward pass is checked against finite differences in tests/test_layers.py.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from functools import cache

import numpy as np
from threadpoolctl import threadpool_limits

from device import nn
from training import parallel


class Layer:
    def __init__(self):
        self.params: dict = {}
        self.grads: dict = {}
        self.state: dict = {}

    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError


# OpenBLAS runs a product on every core once m*n*k > 65536*4. Threaded, with another process
# busy on the other core (the usual state of a shared laptop, and of this project's CI), products
# took many times longer (README, Benchmarks: the measurements behind the code); so the trainer keeps
# OpenBLAS (and any other BLAS NumPy uses) on one thread, from the first product on. The cores
# are used by training.parallel instead: its threads wait without spinning, and run the pieces a
# convolution is cut into (each still one-threaded OpenBLAS).
_ROWS_MAX = 65536 * 4 - 1  # multiply-adds per block of rows (cache-sized: faster than one call)
_INNER_BLOCK = 1024  # length of the inner axis per block
_BLOCKS_PER_PIECE = 4  # inner blocks per piece of work for training.parallel's threads
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt() parameters


@dataclass(frozen=True)
class Tuning:
    """Where the layers cut their work into pieces and which form they take: how fast they run,
    never what they compute beyond the order of float additions. Tests pass other values to
    reach every form on small arrays."""

    patch_group_bytes: int = 4 << 20  # a conv's patches are built and multiplied this much at a time
    row_patches_from: int = 64  # numbers in a kernel row (k * C) from which a conv uses row patches
    # A dense layer's two backward products run side by side from this many multiply-adds each
    # (digitnet's 2048x128 at batch 64 gains; lenet5's 400x120 loses more to the hand-over).
    dense_split: int = 1 << 23
    map_split: int = 1 << 18  # BatchNorm and max-pool maps: cut from this many numbers ...
    map_pieces: int = 4  # ... into so many pieces


TUNING = Tuning()


@cache
def _trainer_process() -> None:
    """Settings for the whole process, made before the trainer's first product:
    - BLAS on one thread (above);
    - glibc's malloc keeps the big blocks a step frees for the next step (up to 32 MiB each, the
      most it allows) instead of handing them back to the kernel: every step allocates the same
      few-MiB temporaries, and each fresh page from the kernel costs a fault and zeroing (less
      CPU per step, README's measurements). The process keeps its peak memory until it exits.
      Other C libraries (macOS, musl): as is."""
    threadpool_limits(1, user_api="blas")
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no mallopt(), or (Windows) no C library by that name
        return
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    mallopt(_M_TRIM_THRESHOLD, 1 << 30)


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """a @ b for 2-D arrays (into ``out`` if given), on one BLAS thread, cut into blocks where
    one-threaded OpenBLAS is slow on the whole, each form one stacked np.matmul (its loop over
    blocks runs in C):
    - a weight gradient (small m and n, the pixels of a batch as the inner axis): blocks of 1024
      along the inner axis, summed; pieces of 4 blocks run on training.parallel's threads;
    - a conv's patches times its kernel (tall a, narrow b): blocks of rows;
    - anything else in one call: small products, and any b that is a transposed view (a dense
      layer's input gradient, dout @ W.T, is slower in blocks of rows).
    Each form was timed against one whole call (README, Benchmarks: the measurements behind the code)."""
    _trainer_process()
    m, k = a.shape
    n = b.shape[1]
    if out is None:
        out = np.empty((m, n), np.result_type(a, b))
    if k >= 4 * _INNER_BLOCK and k > 4 * max(m, n) and min(m, n) > 1:
        blocks = k // _INNER_BLOCK
        cut = blocks * _INNER_BLOCK
        a_blocks = a[:, :cut].reshape(m, blocks, _INNER_BLOCK).transpose(1, 0, 2)
        b_blocks = b[:cut].reshape(blocks, _INNER_BLOCK, n)
        parts = np.empty((blocks, m, n), out.dtype)
        pieces = [slice(i, i + _BLOCKS_PER_PIECE) for i in range(0, blocks, _BLOCKS_PER_PIECE)]
        parallel.each(lambda s: np.matmul(a_blocks[s], b_blocks[s], out=parts[s]), pieces)
        np.sum(parts, axis=0, out=out)
        if cut < k:
            out += a[:, cut:] @ b[cut:]
        return out
    rows = _ROWS_MAX // (k * n) if k * n else 0
    if rows and m > rows and m * k * n >= 1 << 20 and out.flags.c_contiguous and b.flags.c_contiguous:
        least = -(-m // rows)
        for blocks in range(least, min(m, 4 * least) + 1):
            if m % blocks == 0:  # a's rows as a stack of blocks: a view, whatever a's strides
                rows, (s0, s1) = m // blocks, a.strides
                stack = np.lib.stride_tricks.as_strided(a, (blocks, rows, k), (s0 * rows, s0, s1), writeable=False)
                np.matmul(stack, b, out=out.reshape(blocks, rows, n))
                return out
    return np.matmul(a, b, out=out)


class Conv2D(Layer):
    """Stride 1, 'same' or 'valid' padding, as matrix products of patches, in one of two forms by
    the layer's shape, both on training.parallel's threads:
    - im2col (k*k*C numbers a patch), a group of pictures at a time (image_groups): each group's
      patches are multiplied while they are still in the cache;
    - row patches, where a kernel row holds tuning.row_patches_from numbers or more (digitnet's second
      conv, 5 x 16): one kernel row's patch (k*C numbers) per pixel, k products summed. The
      patches are k times fewer than im2col's (5 instead of 25 copies of the input); with the
      pictures' rows outermost, each kernel row's patches are one matrix, so each product and
      the kernel gradient's are whole (faster for digitnet's second conv; README's measurements).
      Shorter kernel rows make the products too thin: slower (lenet5's 5 x 6, dwengo's 3 x 8).
    The input gradient is the same for both: per group of pictures, each kernel offset's share."""

    def __init__(self, kernel, bias, padding="valid", tuning: Tuning = TUNING):
        super().__init__()
        self.params = {"kernel": kernel, "bias": bias}
        self.padding = padding
        self.tuning = tuning

    def forward(self, x, training=False):
        k = self.params["kernel"]
        ksize, cin, cout = k.shape[0], k.shape[2], k.shape[3]
        xp = nn.pad_same(x, ksize) if self.padding == "same" else np.ascontiguousarray(x)
        n, hp, wp, _ = xp.shape
        ho, wo = hp - ksize + 1, wp - ksize + 1
        out = np.empty((n, ho, wo, cout), np.result_type(xp, k))
        groups = image_groups(n, ho * wo * ksize * ksize * cin * xp.itemsize, self.tuning.patch_group_bytes)
        by_rows = ksize * cin >= self.tuning.row_patches_from
        patches = self._row_patches(xp, out) if by_rows else self._im2col(xp, out, groups)
        self.cache = (x.shape, xp.shape, by_rows, patches, groups)
        return out

    def _im2col(self, xp, out, groups):
        """out from im2col patches; returns them as a (pixels, k*k*C) matrix."""
        k = self.params["kernel"]
        ksize, cout = k.shape[0], k.shape[-1]
        n, hp, wp, cin = xp.shape
        ho, wo = out.shape[1:3]
        per_image = ho * wo
        if cin == 1:
            # One channel (a first layer): the patch matrix stored transposed, one row per kernel
            # offset, each a slice copy of whole image rows; much faster than the strided copy.
            offsets = np.empty((ksize * ksize, n, ho, wo), xp.dtype)
            cols2 = offsets.reshape(ksize * ksize, -1).T
        else:
            cols2 = np.empty((n * per_image, ksize * ksize * cin), xp.dtype)
        kernel2, out2 = k.reshape(-1, cout), out.reshape(-1, cout)

        def group(images: slice):
            rows = slice(images.start * per_image, images.stop * per_image)
            if cin == 1:
                for i in range(ksize):
                    for j in range(ksize):
                        offsets[i * ksize + j, images] = xp[images, i:i + ho, j:j + wo, 0]
            else:
                nn.im2col(xp[images], ksize, out=cols2[rows])
            matmul(cols2[rows], kernel2, out=out2[rows])
            wide, r = _wide(out2[rows])  # + bias along rows of ~256 numbers, not of cout
            wide += np.tile(self.params["bias"], r)
        parallel.each(group, groups)
        return cols2

    def _row_patches(self, xp, out):
        """out from row patches; returns them as (padded row, picture, column, k*C)."""
        k = self.params["kernel"]
        ksize, cin, cout = k.shape[0], k.shape[2], k.shape[3]
        n, hp, wp, _ = xp.shape
        ho, wo = out.shape[1:3]
        kc = ksize * cin
        s = xp.strides  # in NHWC a kernel row's patch is k*C numbers in a row of xp
        view = np.lib.stride_tricks.as_strided(xp, (hp, n, wo, kc), (s[1], s[0], s[2], s[3]), writeable=False)
        patches = np.empty((hp, n, wo, kc), xp.dtype)
        parallel.each(lambda ys: np.copyto(patches[ys], view[ys]), map_pieces(hp, patches.size, self.tuning))
        kernel_rows = k.reshape(ksize, kc, cout)

        def piece(ys: slice):  # a range of output rows
            part = np.empty((ys.stop - ys.start, n, wo, cout), out.dtype)
            total = part.reshape(-1, cout)
            term = np.empty_like(total)
            for i in range(ksize):
                np.matmul(patches[ys.start + i:ys.stop + i].reshape(-1, kc), kernel_rows[i], out=term if i else total)
                if i:
                    total += term
            total += self.params["bias"]
            out[:, ys] = part.transpose(1, 0, 2, 3)
        parallel.each(piece, map_pieces(ho, out.size, self.tuning))
        return patches

    def backward(self, dout, need_dx=True):
        """``need_dx=False``: the first layer's input gradient is not needed by training."""
        x_shape, xp_shape, by_rows, patches, groups = self.cache
        k = self.params["kernel"]
        ksize, cin, cout = k.shape[0], k.shape[2], k.shape[3]
        d2 = dout.reshape(-1, cout)
        if by_rows:
            kc, ho = ksize * cin, dout.shape[1]

            def piece(ys: slice):  # a range of output rows: its share of each kernel row's gradient
                d_rows = np.ascontiguousarray(dout[:, ys].transpose(1, 0, 2, 3)).reshape(-1, cout)
                return np.stack([d_rows.T @ patches[ys.start + i:ys.stop + i].reshape(-1, kc) for i in range(ksize)])
            grad_rows = _sum(parallel.each(piece, map_pieces(ho, dout.size, self.tuning)))  # (k, cout, k*C)
            self.grads["kernel"] = np.ascontiguousarray(grad_rows.transpose(0, 2, 1)).reshape(k.shape)
        else:
            self.grads["kernel"] = matmul(patches.T, d2).reshape(k.shape)
        self.grads["bias"] = _column_sums(d2)
        if not need_dx:
            return None
        dxp = np.empty(xp_shape, dtype=dout.dtype)
        n, ho, wo = dout.shape[:3]
        per_image = ho * wo

        def group(images: slice):
            d2s = d2[images.start * per_image:images.stop * per_image]
            dxs = dxp[images]
            dxs[...] = 0
            part = np.empty((len(d2s), cin), dout.dtype)
            part4 = part.reshape(-1, ho, wo, cin)
            for i in range(ksize):  # each kernel offset's share, added where it came from (col2im
                for j in range(ksize):  # without the k*k-times-larger patch-gradient matrix)
                    matmul(d2s, k[i, j].T, out=part)
                    dxs[:, i:i + ho, j:j + wo, :] += part4
        parallel.each(group, groups)
        if self.padding == "same":
            lo = (ksize - 1) // 2
            return dxp[:, lo:lo + x_shape[1], lo:lo + x_shape[2], :]
        return dxp


def image_groups(n: int, bytes_per_image: int, group_bytes: int = TUNING.patch_group_bytes) -> list[slice]:
    """A batch of n pictures cut into groups of about equal size, each with at most
    group_bytes of patches (building them, then multiplying them while they are still in
    the cache, which is faster than building them all first), and in at least
    two groups from group_bytes / 4 on (work for a second thread). The cut depends on the
    sizes only, never on the threads."""
    total = n * bytes_per_image
    count = min(n, max(-(-total // group_bytes), 2 if 4 * total >= group_bytes else 1))
    bounds = [n * i // count for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


class ReLU(Layer):
    def forward(self, x, training=False):
        out = np.maximum(x, 0)
        self.mask = out > 0
        return out

    def backward(self, dout):
        return np.multiply(dout, self.mask, dtype=dout.dtype)


class MaxPool2D(Layer):
    """Non-overlapping size x size windows; the gradient goes to one maximum per window (the
    first in row-major order, as TensorFlow's). Forward: the maximum of the size*size strided
    views; backward: each view's share of dout through a boolean mask, no index arithmetic.
    Both in pieces of the batch (map_pieces) on training.parallel's threads."""

    def __init__(self, size=2, tuning: Tuning = TUNING):
        super().__init__()
        self.size = size
        self.tuning = tuning

    def forward(self, x, training=False):
        s = self.size
        n, h, w, c = x.shape
        ho, wo = h // s, w // s
        out = np.empty((n, ho, wo, c), x.dtype)
        masks = np.empty((s * s, n, ho, wo, c), bool)

        def piece(images: slice):
            views = [x[images, i:ho * s:s, j:wo * s:s, :] for i in range(s) for j in range(s)]
            top = out[images]
            np.maximum(views[0], views[1], out=top)
            for v in views[2:]:
                np.maximum(top, v, out=top)
            free = np.ones(top.shape, bool)  # windows whose maximum is not yet claimed
            for v, hit in zip(views, masks[:, images]):
                np.equal(v, top, out=hit)
                hit &= free
                free ^= hit
        parallel.each(piece, map_pieces(n, x.size, self.tuning))
        self.cache = (x.shape, masks)
        return out

    def backward(self, dout):
        (n, h, w, c), masks = self.cache
        s = self.size
        ho, wo = dout.shape[1], dout.shape[2]
        alloc = np.empty if (h, w) == (ho * s, wo * s) else np.zeros  # every pixel written, or not
        dx = alloc((n, h, w, c), dtype=dout.dtype)
        offsets = [(i, j) for i in range(s) for j in range(s)]

        def piece(images: slice):
            for (i, j), hit in zip(offsets, masks[:, images]):
                np.multiply(dout[images], hit, out=dx[images, i:ho * s:s, j:wo * s:s, :])
        parallel.each(piece, map_pieces(n, dx.size, self.tuning))
        return dx


class BatchNorm(Layer):
    """Normalises over every axis but the channels; batch statistics when training, running
    statistics (Keras-style momentum update) at inference. Its passes run in pieces of rows
    (map_pieces) on training.parallel's threads; the statistics are sums of the pieces' sums."""

    def __init__(self, gamma, beta, mean, var, epsilon=1e-3, momentum=0.99, tuning: Tuning = TUNING):
        super().__init__()
        self.params = {"gamma": gamma, "beta": beta}
        self.state = {"mean": mean, "var": var}
        self.epsilon, self.momentum = epsilon, momentum
        self.tuning = tuning

    def forward(self, x, training=False):
        c = x.shape[-1]
        flat = x.reshape(-1, c)
        wide, r = _wide(flat)
        rows = map_pieces(len(wide), x.size, self.tuning)
        if training:
            mu = _sum(parallel.each(lambda p: _column_sums(wide[p].reshape(-1, c)), rows)) / len(flat)
        else:
            mu = self.state["mean"]
        centred = np.empty_like(wide)
        mu_wide = np.tile(mu.astype(x.dtype), r)

        def centre(p: slice):
            np.subtract(wide[p], mu_wide, out=centred[p])
            if training:
                return _column_sums(centred[p].reshape(-1, c), centred[p].reshape(-1, c))
        squares = parallel.each(centre, rows)
        if training:
            var = _sum(squares) / len(flat)
            m = self.momentum
            self.state["mean"] = (m * self.state["mean"] + (1 - m) * mu).astype(self.state["mean"].dtype)
            self.state["var"] = (m * self.state["var"] + (1 - m) * var).astype(self.state["var"].dtype)
        else:
            var = self.state["var"]
        inv = (1.0 / np.sqrt(var + self.epsilon)).astype(x.dtype)
        inv_wide, gamma_wide, beta_wide = (np.tile(v.astype(x.dtype), r) for v in
                                           (inv, self.params["gamma"], self.params["beta"]))
        out = np.empty_like(wide)

        def scale(p: slice):
            xhat = np.multiply(centred[p], inv_wide, out=centred[p])
            np.multiply(xhat, gamma_wide, out=out[p])
            out[p] += beta_wide
        parallel.each(scale, rows)
        self.cache = (centred, inv, r)  # centred now holds xhat
        return out.reshape(x.shape)

    def backward(self, dout):
        xhat, inv, r = self.cache
        c = dout.shape[-1]
        d = dout.reshape(xhat.shape)
        m = xhat.size // c
        rows = map_pieces(len(d), d.size, self.tuning)
        sums = parallel.each(lambda p: (_column_sums(d[p].reshape(-1, c), xhat[p].reshape(-1, c)),
                                        _column_sums(d[p].reshape(-1, c))), rows)
        dgamma, dbeta = _sum([g for g, _ in sums]), _sum([b for _, b in sums])
        self.grads["gamma"], self.grads["beta"] = dgamma, dbeta
        # Batch statistics depend on x: the standard three-term BatchNorm gradient,
        # (gamma * inv / m) * (m * dout - sum(dout) - xhat * sum(dout * xhat)).
        a, b, g = (np.tile(v.astype(dout.dtype), r) for v in (-dgamma / m, dbeta / m, self.params["gamma"] * inv))
        dx = np.empty_like(d)

        def piece(p: slice):
            part = np.multiply(xhat[p], a, out=dx[p])
            part += d[p]
            part -= b
            part *= g
        parallel.each(piece, rows)
        return dx.reshape(dout.shape)


def map_pieces(count: int, numbers: int, tuning: Tuning = TUNING) -> list[slice]:
    """count pictures (or rows of a _wide view) cut into ranges for training.parallel's threads,
    for a memory-bound layer's passes over a map of ``numbers`` numbers: tuning.map_pieces from
    tuning.map_split on (more than two, so a helper thread that starts late finds work left),
    else one. By the shapes only, as every cut in this module."""
    k = min(count, tuning.map_pieces) if numbers >= tuning.map_split else 1
    bounds = [count * i // k for i in range(k + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def _sum(parts: list) -> np.ndarray:
    """The pieces' partial sums added in piece order (the same numbers on any thread count)."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def _wide(flat: np.ndarray) -> tuple[np.ndarray, int]:
    """A (pixels, C) array seen as (pixels / r, r * C) rows, and r: per-channel arithmetic with
    np.tile(v, r) then runs along rows of ~256 numbers instead of C (many times faster for a
    few channels). One channel stays as it is: NumPy treats a (1,) operand like a scalar,
    faster still."""
    pixels, c = flat.shape
    r = 1 if c == 1 else math.gcd(pixels, max(1, 256 // c))
    return flat.reshape(pixels // r, r * c), r


def _column_sums(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Sums over rows of a (or of a * b) for (pixels, C) arrays, as a ones vector times them on
    one BLAS thread: NumPy's axis-0 sum runs rows of C numbers, and einsum's loops were slower
    for 2 to 32 columns (README's measurements)."""
    _trainer_process()
    return _ones(len(a), a.dtype) @ (a * b if b is not None else a)


_ONES: dict = {}


def _ones(n: int, dtype) -> np.ndarray:
    """A vector of n ones (kept: the same few sizes come back every batch)."""
    key = (n, np.dtype(dtype))
    if key not in _ONES:
        if len(_ONES) > 16:
            _ONES.clear()
        _ONES[key] = np.ones(n, dtype)
    return _ONES[key]


class Dropout(Layer):
    """Inverted dropout: scaled at training time, identity at inference."""

    def __init__(self, rate, rng):
        super().__init__()
        self.rate, self.rng = rate, rng

    def forward(self, x, training=False):
        if not training or self.rate == 0:
            self.mask = None
            return x
        keep = 1.0 - self.rate
        self.mask = (self.rng.random(x.shape, dtype=np.float32) < keep) * np.asarray(1 / keep, x.dtype)
        return x * self.mask

    def backward(self, dout):
        return dout if self.mask is None else dout * self.mask


class Flatten(Layer):
    def forward(self, x, training=False):
        self.shape = x.shape
        return x.reshape(len(x), -1)

    def backward(self, dout):
        return dout.reshape(self.shape)


class Dense(Layer):
    def __init__(self, kernel, bias, tuning: Tuning = TUNING):
        super().__init__()
        self.params = {"kernel": kernel, "bias": bias}
        self.tuning = tuning

    def forward(self, x, training=False):
        self.x = x
        out = matmul(x, self.params["kernel"])
        out += self.params["bias"]
        return out

    def backward(self, dout, need_dx=True):
        x, kernel = self.x, self.params["kernel"]
        products = [lambda: matmul(x.T, dout)] + ([lambda: matmul(dout, kernel.T)] if need_dx else [])
        if x.size * dout.shape[1] >= self.tuning.dense_split:  # the two products side by side on the threads
            results = parallel.each(lambda product: product(), products)
        else:
            results = [product() for product in products]
        self.grads["kernel"] = results[0]
        self.grads["bias"] = dout.sum(axis=0)
        return results[1] if need_dx else None


class Identity(Layer):
    """The final softmax: the loss below applies it, fused with cross-entropy for stability."""

    def forward(self, x, training=False):
        return x

    def backward(self, dout):
        return dout


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray):
    """Mean cross-entropy of softmax(logits) against integer labels, and d loss / d logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = len(labels)
    loss = -logp[np.arange(n), labels].mean()
    dlogits = np.exp(logp)
    dlogits[np.arange(n), labels] -= 1.0
    return float(loss), (dlogits / n).astype(logits.dtype)
