"""The same layer specs as a Keras model, and weights both ways (bundle <-> Keras).

Keras (TensorFlow) is an optional extra: ``pip install 'cardcam[keras]'``. Each spec becomes one
Keras layer named ``L<index>``, so bundle array ``L3.kernel`` is layer ``L3``'s kernel. Layouts
already agree (conv HWIO, dense (in, out), NHWC flatten order, 'same' padding putting the odd
pixel at the bottom/right), and BatchNorm is carried exactly as gamma, beta, moving mean and
moving variance with the spec's epsilon and momentum, so nothing is folded or approximated.
"""

from __future__ import annotations

import os
from functools import cache

import numpy as np

from device import nn
from device.runtime import stderr_without
from training.registry import TRAINING

# Keras' own order of each layer's arrays, in bundle names.
KERAS_ORDER = {kind: f.keras_weights for kind, f in TRAINING.items() if f.keras_weights}


class KerasMissing(RuntimeError):
    """TensorFlow/Keras is not installed (it is an optional extra)."""


def _tensorflow_start_up_line(line: str) -> bool:
    """The lines TensorFlow's C++ logging writes to fd 2 while it is imported, before it reads
    TF_CPP_MIN_LOG_LEVEL (TensorFlow issue 100442): that oneDNN is on, and absl's note that such
    early lines go to stderr. They opened the output of every Keras training and export."""
    return ("] oneDNN custom operations are on." in line
            or line == "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR")


@cache
def keras():
    """The keras module, or KerasMissing with the command that installs it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no TensorFlow chatter on stderr once it runs
    try:
        with stderr_without(_tensorflow_start_up_line):
            import keras as k
            import tensorflow  # noqa: F401  (the backend Keras and the TFLite converter use)
    except ImportError as e:
        raise KerasMissing(f"Keras/TensorFlow is not installed ({e}); pip install 'cardcam[keras]'") from None
    return k


def build_model(architecture: list, input_shape, name: str = "cardcam"):
    """A functional Keras model of the specs (softmax output, as the bundle's)."""
    k = keras()
    layers = nn.infer_shapes(architecture, input_shape)
    inputs = k.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for layer in layers:  # each spec's Keras layer (training.registry), named L<index>
        x = TRAINING[layer.spec["type"]].keras(k, layer.spec, f"L{layer.index}")(x)
    return k.Model(inputs, x, name=name)


def set_bundle_weights(model, architecture: list, weights: dict) -> None:
    """Load bundle arrays into a model from build_model (shapes are checked by Keras)."""
    for i, spec in enumerate(architecture):
        order = KERAS_ORDER.get(spec["type"])
        if order:
            model.get_layer(f"L{i}").set_weights([np.asarray(weights[f"L{i}.{n}"], np.float32) for n in order])


def bundle_weights(model, architecture: list) -> dict:
    """The model's arrays under bundle names, float32."""
    out = {}
    for i, spec in enumerate(architecture):
        order = KERAS_ORDER.get(spec["type"])
        if order:
            for n, a in zip(order, model.get_layer(f"L{i}").get_weights()):
                out[f"L{i}.{n}"] = np.asarray(a, np.float32).copy()
    return out


def model_from_bundle(bundle):
    """A Keras model holding exactly the bundle's weights."""
    model = build_model(bundle.architecture, bundle.input_shape, name=_keras_name(bundle.name))
    set_bundle_weights(model, bundle.architecture, bundle.weights)
    return model


def _keras_name(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "cardcam"


class KerasLearner:
    """The Keras side of training.trainer.train: one epoch at a time, weights as bundle arrays."""

    def __init__(self, architecture: list, input_shape, optimizer: str, lr: float, seed: int):
        k = keras()
        k.utils.set_random_seed(seed)
        self.architecture = architecture
        self.model = build_model(architecture, input_shape)
        # The NumPy optimisers' settings (training/optim.py).
        opt = k.optimizers.Adam(lr, epsilon=1e-7) if optimizer == "adam" else k.optimizers.SGD(lr, momentum=0.9)
        self.model.compile(optimizer=opt, loss=k.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])

    def fit_epoch(self, x_uint8: np.ndarray, y: np.ndarray, order: np.ndarray, lr: float, batch_size: int,
                  desc: str | None = None):
        """One pass in the given order; returns (mean training loss, training accuracy). The
        trainer prints the epoch's line, so Keras' own progress bar stays off."""
        import tensorflow as tf

        self.model.optimizer.learning_rate.assign(lr)
        data = tf.data.Dataset.from_tensor_slices((x_uint8[order], y[order])).batch(batch_size)
        data = data.map(lambda xb, yb: (tf.cast(xb, tf.float32) / 255.0, yb)).prefetch(2)
        history = self.model.fit(data, epochs=1, shuffle=False, verbose=0).history
        return float(history["loss"][-1]), float(history["accuracy"][-1])

    def predict(self, x: np.ndarray, batch: int = 256) -> np.ndarray:
        if not len(x):
            return np.zeros((0, self.model.output_shape[-1]), np.float32)
        return np.concatenate([np.asarray(self.model(x[i:i + batch], training=False))
                               for i in range(0, len(x), batch)])

    def weights(self) -> dict:
        return bundle_weights(self.model, self.architecture)
