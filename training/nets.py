"""Architectures as layer specs, and a Network that trains them with training.layers."""

from __future__ import annotations

import numpy as np

from device import nn
from training import layers as L
from training import registry


def lenet5(classes: int) -> dict:
    """The student Pi project's LeNet-5: 32x32 input, 6 then 16 5x5 kernels, ReLU, max-pool,
    dropout, dense 120 -> 84 -> classes."""
    return {"input_shape": [32, 32, 1], "layers": [
        {"type": "conv2d", "filters": 6, "kernel": 5, "padding": "valid"},
        {"type": "relu"},
        {"type": "maxpool2d", "size": 2},
        {"type": "conv2d", "filters": 16, "kernel": 5, "padding": "valid"},
        {"type": "relu"},
        {"type": "maxpool2d", "size": 2},
        {"type": "dropout", "rate": 0.25},
        {"type": "flatten"},
        {"type": "dense", "units": 120},
        {"type": "relu"},
        {"type": "dropout", "rate": 0.25},
        {"type": "dense", "units": 84},
        {"type": "relu"},
        {"type": "dense", "units": classes},
        {"type": "softmax"},
    ]}


def dwengo(classes: int) -> dict:
    """The school lesson's network: 5 x [conv 3x3 (1, 2, 4, 8, 16 filters), BatchNorm, ReLU,
    max-pool 2, dropout 0.1], flatten, dense 16, dropout, dense -> softmax, on 110x110 grey."""
    blocks = []
    for filters in (1, 2, 4, 8, 16):
        blocks += [
            {"type": "conv2d", "filters": filters, "kernel": 3, "padding": "same"},
            {"type": "batchnorm"},
            {"type": "relu"},
            {"type": "maxpool2d", "size": 2},
            {"type": "dropout", "rate": 0.1},
        ]
    return {"input_shape": [110, 110, 1], "layers": blocks + [
        {"type": "flatten"},
        {"type": "dense", "units": 16},
        {"type": "relu"},
        {"type": "dropout", "rate": 0.1},
        {"type": "dense", "units": classes},
        {"type": "softmax"},
    ]}


def digitnet(classes: int) -> dict:
    """A wider LeNet for ten digits from few examples: 32x32, 16 and 32 5x5 kernels with
    BatchNorm, dense 128."""
    return {"input_shape": [32, 32, 1], "layers": [
        {"type": "conv2d", "filters": 16, "kernel": 5, "padding": "same"},
        {"type": "batchnorm"},
        {"type": "relu"},
        {"type": "maxpool2d", "size": 2},
        {"type": "conv2d", "filters": 32, "kernel": 5, "padding": "same"},
        {"type": "batchnorm"},
        {"type": "relu"},
        {"type": "maxpool2d", "size": 2},
        {"type": "dropout", "rate": 0.25},
        {"type": "flatten"},
        {"type": "dense", "units": 128},
        {"type": "relu"},
        {"type": "dropout", "rate": 0.4},
        {"type": "dense", "units": classes},
        {"type": "softmax"},
    ]}


def smileynet(classes: int) -> dict:
    """For drawn faces, where a mouth's curve is a few pixels at 32x32: 48x48 input, a 5x5 then
    two 3x3 convolutions (8, 16, 32 filters, BatchNorm), each max-pooled, dense 64. About three
    times lenet5's work per picture, and fewer weights."""
    return {"input_shape": [48, 48, 1], "layers": [
        {"type": "conv2d", "filters": 8, "kernel": 5, "padding": "valid"},
        {"type": "relu"},
        {"type": "maxpool2d", "size": 2},
        {"type": "conv2d", "filters": 16, "kernel": 3, "padding": "valid"},
        {"type": "batchnorm"},
        {"type": "relu"},
        {"type": "maxpool2d", "size": 2},
        {"type": "conv2d", "filters": 32, "kernel": 3, "padding": "valid"},
        {"type": "batchnorm"},
        {"type": "relu"},
        {"type": "maxpool2d", "size": 2},
        {"type": "dropout", "rate": 0.25},
        {"type": "flatten"},
        {"type": "dense", "units": 64},
        {"type": "relu"},
        {"type": "dropout", "rate": 0.3},
        {"type": "dense", "units": classes},
        {"type": "softmax"},
    ]}


ARCHS = {"lenet5": lenet5, "dwengo": dwengo, "digitnet": digitnet, "smileynet": smileynet}


def conv_blocks(layers: list) -> list:
    """Per layer spec: its conv block number (1, 2, ...), or 0 outside any block. A conv block is
    a conv2d layer and the layers after it up to the next conv2d or the flatten."""
    out, block, inside = [], 0, False
    for spec in layers:
        if spec["type"] == "conv2d":
            block, inside = block + 1, True
        elif spec["type"] == "flatten":
            inside = False
        out.append(block if inside else 0)
    return out


def _pool_before_relu(layers: list) -> list:
    """The order to run layers in: their own, except that a max-pool right after a ReLU runs
    first, so the ReLU works on a map size*size times smaller.
    The two commute exactly, values and gradients: max(relu(x)) = relu(max(x)); where the
    window's maximum is positive both send its gradient to the same first maximum, and where
    it is not, both send none."""
    order = list(range(len(layers)))
    for k in range(len(order) - 1):
        if type(layers[order[k]]) is L.ReLU and type(layers[order[k + 1]]) is L.MaxPool2D:
            order[k], order[k + 1] = order[k + 1], order[k]
    return order


class Network:
    """A Sequential network built from layer specs, each layer the training form of its type
    (training.registry). Weights are float32 unless asked otherwise (gradient checks use
    float64); ``tuning``: how the layers cut their work (training.layers.Tuning)."""

    def __init__(self, architecture: list, input_shape, rng: np.random.Generator, dtype=np.float32,
                 tuning: L.Tuning = L.TUNING):
        self.architecture = architecture
        self.input_shape = tuple(input_shape)
        self.shapes = nn.infer_shapes(architecture, input_shape)
        self.layers = [registry.forms(s.spec["type"]).layer(s, rng, dtype, tuning) for s in self.shapes]
        self.order = _pool_before_relu(self.layers)
        self.first_trained = next((i for i, l in enumerate(self.layers) if l.params), 0)

    def logits(self, x, training=False):
        for i in self.order:
            x = self.layers[i].forward(x, training)
        return x

    def backward(self, dlogits, input_grad=True):
        """Fill every layer's grads; returns d loss / d input, or None with ``input_grad=False``
        (training: then the first trained layer skips its input gradient, a conv's costliest part)."""
        for i in reversed(self.order):
            layer = self.layers[i]
            if i == self.first_trained and not input_grad and isinstance(layer, (L.Conv2D, L.Dense)):
                layer.backward(dlogits, need_dx=False)
                return None
            dlogits = layer.backward(dlogits)
        return dlogits

    def loss_and_grads(self, x, y):
        loss, d = L.softmax_cross_entropy(self.logits(x, training=True), y)
        self.backward(d, input_grad=False)
        return loss

    def predict(self, x, batch=512):
        out = [nn.softmax(self.logits(x[i:i + batch])) for i in range(0, len(x), batch)]
        return np.concatenate(out)

    def trainables(self):
        """(key, layer, name) for each trained parameter; key is the bundle name."""
        return [(f"L{i}.{n}", l, n) for i, l in enumerate(self.layers) for n in l.params]

    def weights(self) -> dict:
        """Every array, named as in the bundle."""
        out = {}
        for i, layer in enumerate(self.layers):
            for n, a in {**layer.params, **layer.state}.items():
                out[f"L{i}.{n}"] = a.copy()
        return out

    def set_weights(self, weights: dict) -> None:
        for i, layer in enumerate(self.layers):
            for group in (layer.params, layer.state):
                for n in group:
                    group[n] = np.array(weights[f"L{i}.{n}"], dtype=group[n].dtype)

    def parameter_count(self) -> int:
        return nn.parameter_count(self.shapes)
