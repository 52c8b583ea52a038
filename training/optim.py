"""Optimisers: update a Network's parameters in place from the gradients of the last backward."""

from __future__ import annotations

import numpy as np


class SGD:
    def __init__(self, net, lr=0.01, momentum=0.9):
        self.net, self.lr, self.momentum = net, lr, momentum
        self.velocity = {key: np.zeros_like(layer.params[n]) for key, layer, n in net.trainables()}

    def step(self):
        for key, layer, n in self.net.trainables():
            v = self.velocity[key]
            v *= self.momentum
            v -= self.lr * layer.grads[n]
            layer.params[n] += v


class Adam:
    def __init__(self, net, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-7):
        self.net, self.lr, self.beta1, self.beta2, self.eps = net, lr, beta1, beta2, eps
        self.m = {key: np.zeros_like(layer.params[n]) for key, layer, n in net.trainables()}
        self.v = {key: np.zeros_like(layer.params[n]) for key, layer, n in net.trainables()}
        self.t = 0

    def step(self):
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        lr = self.lr * np.sqrt(1 - b2 ** self.t) / (1 - b1 ** self.t)
        for key, layer, n in self.net.trainables():
            g = layer.grads[n]
            m, v = self.m[key], self.v[key]
            dtype = m.dtype.type
            # In place, one scratch array: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
            # p -= lr m / (sqrt(v) + eps).
            m *= dtype(b1)
            m += dtype(1 - b1) * g
            scratch = np.square(g)
            scratch *= dtype(1 - b2)
            v *= dtype(b2)
            v += scratch
            np.sqrt(v, out=scratch)
            scratch += dtype(self.eps)
            np.divide(m, scratch, out=scratch)
            scratch *= dtype(lr)
            layer.params[n] -= scratch


OPTIMISERS = {"sgd": SGD, "adam": Adam}
