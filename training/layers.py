"""Layers as forward/backward pairs (CS231n style), NHWC, vectorised.

``forward(x, training)`` computes and keeps what ``backward`` needs; ``backward(dout)`` fills
``grads`` (same keys as ``params``) and returns the gradient for the layer's input. ``state``
holds non-trained arrays (BatchNorm's running statistics). Parameter names match the bundle's.
Every backward pass is checked against finite differences in tests/test_layers.py.
"""

from __future__ import annotations

import numpy as np

from device import nn


class Layer:
    def __init__(self):
        self.params: dict = {}
        self.grads: dict = {}
        self.state: dict = {}

    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError


class Conv2D(Layer):
    """Stride 1, 'same' or 'valid' padding, as im2col + one matrix product."""

    def __init__(self, kernel, bias, padding="valid"):
        super().__init__()
        self.params = {"kernel": kernel, "bias": bias}
        self.padding = padding

    def forward(self, x, training=False):
        k = self.params["kernel"]
        ksize, cout = k.shape[0], k.shape[-1]
        xp = nn.pad_same(x, ksize) if self.padding == "same" else x
        cols = nn.im2col(xp, ksize)
        self.cache = (x.shape, xp.shape, cols)
        return cols @ k.reshape(-1, cout) + self.params["bias"]

    def backward(self, dout):
        x_shape, xp_shape, cols = self.cache
        k = self.params["kernel"]
        ksize, cin, cout = k.shape[0], k.shape[2], k.shape[3]
        d2 = dout.reshape(-1, cout)
        self.grads["kernel"] = (cols.reshape(-1, cols.shape[-1]).T @ d2).reshape(k.shape)
        self.grads["bias"] = d2.sum(axis=0)
        dcols = (dout @ k.reshape(-1, cout).T).reshape(dout.shape[:3] + (ksize, ksize, cin))
        dxp = np.zeros(xp_shape, dtype=dout.dtype)
        ho, wo = dout.shape[1], dout.shape[2]
        for i in range(ksize):  # scatter-add each kernel offset: k*k array ops, not per pixel
            for j in range(ksize):
                dxp[:, i:i + ho, j:j + wo, :] += dcols[:, :, :, i, j, :]
        if self.padding == "same":
            lo = (ksize - 1) // 2
            return dxp[:, lo:lo + x_shape[1], lo:lo + x_shape[2], :]
        return dxp


class ReLU(Layer):
    def forward(self, x, training=False):
        self.mask = x > 0
        return np.where(self.mask, x, 0).astype(x.dtype, copy=False)

    def backward(self, dout):
        return np.where(self.mask, dout, 0).astype(dout.dtype, copy=False)


class MaxPool2D(Layer):
    """Non-overlapping size x size windows; the gradient goes to one maximum per window."""

    def __init__(self, size=2):
        super().__init__()
        self.size = size

    def forward(self, x, training=False):
        s = self.size
        n, h, w, c = x.shape
        ho, wo = h // s, w // s
        win = x[:, :ho * s, :wo * s, :].reshape(n, ho, s, wo, s, c).transpose(0, 1, 3, 5, 2, 4)
        win = win.reshape(n, ho, wo, c, s * s)
        self.cache = (x.shape, win.argmax(axis=-1))
        return win.max(axis=-1)

    def backward(self, dout):
        (n, h, w, c), arg = self.cache
        s = self.size
        ho, wo = dout.shape[1], dout.shape[2]
        dwin = np.zeros((n, ho, wo, c, s * s), dtype=dout.dtype)
        np.put_along_axis(dwin, arg[..., None], dout[..., None], axis=-1)
        dwin = dwin.reshape(n, ho, wo, c, s, s).transpose(0, 1, 4, 2, 5, 3).reshape(n, ho * s, wo * s, c)
        dx = np.zeros((n, h, w, c), dtype=dout.dtype)
        dx[:, :ho * s, :wo * s, :] = dwin
        return dx


class BatchNorm(Layer):
    """Normalises over every axis but the channels; batch statistics when training, running
    statistics (Keras-style momentum update) at inference."""

    def __init__(self, gamma, beta, mean, var, epsilon=1e-3, momentum=0.99):
        super().__init__()
        self.params = {"gamma": gamma, "beta": beta}
        self.state = {"mean": mean, "var": var}
        self.epsilon, self.momentum = epsilon, momentum

    def forward(self, x, training=False):
        axes = tuple(range(x.ndim - 1))
        if training:
            mu = x.mean(axis=axes)
            var = x.var(axis=axes)
            m = self.momentum
            self.state["mean"] = (m * self.state["mean"] + (1 - m) * mu).astype(self.state["mean"].dtype)
            self.state["var"] = (m * self.state["var"] + (1 - m) * var).astype(self.state["var"].dtype)
        else:
            mu, var = self.state["mean"], self.state["var"]
        inv = 1.0 / np.sqrt(var + self.epsilon)
        xhat = (x - mu) * inv
        self.cache = (xhat, inv, axes)
        return (self.params["gamma"] * xhat + self.params["beta"]).astype(x.dtype, copy=False)

    def backward(self, dout):
        xhat, inv, axes = self.cache
        m = dout.size // dout.shape[-1]
        gamma = self.params["gamma"]
        self.grads["gamma"] = (dout * xhat).sum(axis=axes)
        self.grads["beta"] = dout.sum(axis=axes)
        dxhat = dout * gamma
        # Batch statistics depend on x: the standard three-term BatchNorm gradient.
        return (inv / m) * (m * dxhat - dxhat.sum(axis=axes) - xhat * (dxhat * xhat).sum(axis=axes))


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
        self.mask = (self.rng.random(x.shape) < keep).astype(x.dtype) / np.asarray(keep, x.dtype)
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
    def __init__(self, kernel, bias):
        super().__init__()
        self.params = {"kernel": kernel, "bias": bias}

    def forward(self, x, training=False):
        self.x = x
        return x @ self.params["kernel"] + self.params["bias"]

    def backward(self, dout):
        self.grads["kernel"] = self.x.T @ dout
        self.grads["bias"] = dout.sum(axis=0)
        return dout @ self.params["kernel"].T


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
