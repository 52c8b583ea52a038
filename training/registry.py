"""The trainer's side of each layer type, by the names of device.nn.LAYERS: the NumPy layer it
trains with (training.layers) and the Keras layer it becomes (training.keras_model).

device.nn's class for a type holds its spec checks, its weights, its plain forward and the Pi's
fast form; device/ never imports training/, so the training side of the same type is here, in
one table. A new layer type is one class in device/nn.py and one entry in TRAINING
(tests/test_layers.py checks that the two agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from device import nn
from training import layers as L


@dataclass(frozen=True)
class TrainingForms:
    """What a layer type is in training."""

    layer: Callable  # (nn.LayerShape, rng, dtype, L.Tuning) -> a training.layers.Layer, freshly initialised
    keras: Callable  # (the keras module, spec, layer name) -> a Keras layer
    keras_weights: tuple = ()  # its arrays (bundle names) in the order Keras' get_weights() gives them


def _he_kernel(shape: nn.LayerShape, rng: np.random.Generator, dtype):
    """He-initialised kernel (for the ReLU after it) and zero bias of a conv or dense layer."""
    kshape = shape.weights["kernel"]
    fan_in = int(np.prod(kshape[:-1]))
    kernel = (rng.standard_normal(kshape) * np.sqrt(2.0 / fan_in)).astype(dtype)
    return kernel, np.zeros(kshape[-1], dtype)


def _batchnorm_settings(spec: dict) -> dict:
    return {**nn.BATCHNORM_DEFAULTS, **{k: v for k, v in spec.items() if k != "type"}}


def _conv_layer(shape, rng, dtype, tuning):
    return L.Conv2D(*_he_kernel(shape, rng, dtype), shape.spec.get("padding", "valid"), tuning=tuning)


def _dense_layer(shape, rng, dtype, tuning):
    return L.Dense(*_he_kernel(shape, rng, dtype), tuning=tuning)


def _batchnorm_layer(shape, rng, dtype, tuning):
    c = shape.weights["gamma"][0]
    bn = _batchnorm_settings(shape.spec)
    return L.BatchNorm(np.ones(c, dtype), np.zeros(c, dtype), np.zeros(c, dtype), np.ones(c, dtype),
                       epsilon=bn["epsilon"], momentum=bn["momentum"], tuning=tuning)


def _keras_conv(k, spec, name):
    return k.layers.Conv2D(spec["filters"], spec["kernel"], padding=spec.get("padding", "valid"),
                           kernel_initializer="he_normal", name=name)


def _keras_batchnorm(k, spec, name):
    bn = _batchnorm_settings(spec)
    return k.layers.BatchNormalization(epsilon=bn["epsilon"], momentum=bn["momentum"], name=name)


TRAINING = {
    "conv2d": TrainingForms(
        layer=_conv_layer,
        keras=_keras_conv,
        keras_weights=("kernel", "bias")),
    "relu": TrainingForms(
        layer=lambda shape, rng, dtype, tuning: L.ReLU(),
        keras=lambda k, spec, name: k.layers.ReLU(name=name)),
    "maxpool2d": TrainingForms(
        layer=lambda shape, rng, dtype, tuning: L.MaxPool2D(shape.spec.get("size", 2), tuning=tuning),
        keras=lambda k, spec, name: k.layers.MaxPooling2D(spec.get("size", 2), name=name)),
    "batchnorm": TrainingForms(
        layer=_batchnorm_layer,
        keras=_keras_batchnorm,
        keras_weights=("gamma", "beta", "mean", "var")),
    "dropout": TrainingForms(
        layer=lambda shape, rng, dtype, tuning: L.Dropout(shape.spec.get("rate", 0.5), rng),
        keras=lambda k, spec, name: k.layers.Dropout(spec.get("rate", 0.5), name=name)),
    "flatten": TrainingForms(
        layer=lambda shape, rng, dtype, tuning: L.Flatten(),
        keras=lambda k, spec, name: k.layers.Flatten(name=name)),
    "dense": TrainingForms(
        layer=_dense_layer,
        keras=lambda k, spec, name: k.layers.Dense(spec["units"], kernel_initializer="he_normal", name=name),
        keras_weights=("kernel", "bias")),
    "softmax": TrainingForms(
        layer=lambda shape, rng, dtype, tuning: L.Identity(),  # the loss applies it (softmax_cross_entropy)
        keras=lambda k, spec, name: k.layers.Softmax(name=name)),
}


def forms(kind: str) -> TrainingForms:
    """The training side of a layer type (its spec already checked by device.nn.infer_shapes)."""
    return TRAINING[kind]
