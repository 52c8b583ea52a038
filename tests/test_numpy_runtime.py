"""Every formulation the NumPy runtime may pick for a conv layer gives the plain forward pass's
answer (the runtime times them and keeps the fastest, so each is forced here in turn), for any
batch size, with fused ReLU/max-pool, and with buffers reused safely between calls."""

from __future__ import annotations

import numpy as np
import pytest

from device import nn, runtime
from device.bundle import Bundle, make_meta
from device.preprocess import PreprocessSettings

SHAPES = [  # (input shape, conv spec, pool size)
    ((32, 32, 1), {"type": "conv2d", "filters": 6, "kernel": 5, "padding": "valid"}, 2),   # LeNet's first layer
    ((14, 14, 6), {"type": "conv2d", "filters": 16, "kernel": 5, "padding": "valid"}, 2),
    ((13, 11, 3), {"type": "conv2d", "filters": 4, "kernel": 4, "padding": "same"}, 3),     # even kernel, odd sizes
    ((20, 20, 1), {"type": "conv2d", "filters": 1, "kernel": 3, "padding": "same"}, 2),     # dwengo's first layer
]
FORMS = [("one_copy", "im2col"), ("slice_copies", "im2col"), ("one_copy", "row_band")]


def reference(bundle, x):
    """The forward pass written out with device.nn's plain operations, nothing fused."""
    for layer in nn.infer_shapes(bundle.architecture, bundle.input_shape):
        spec, w = layer.spec, {n: bundle.weights[f"L{layer.index}.{n}"] for n in layer.weights}
        kind = spec["type"]
        if kind == "conv2d":
            x = nn.conv2d(x, w["kernel"], w["bias"], spec["padding"])
        elif kind == "batchnorm":
            scale, shift = nn.fold_batchnorm(w, nn.BATCHNORM_DEFAULTS["epsilon"])
            x = x * scale + shift
        elif kind == "relu":
            x = np.maximum(x, 0)
        elif kind == "maxpool2d":
            x = nn.maxpool2d(x, spec["size"])
        elif kind == "flatten":
            x = x.reshape(len(x), -1)
        elif kind == "dense":
            x = x @ w["kernel"] + w["bias"]
        elif kind == "softmax":
            x = nn.softmax(x)
    return x


def bundle_for(input_shape, conv, pool, weights_factory):
    arch = [conv, {"type": "batchnorm"}, {"type": "relu"}, {"type": "maxpool2d", "size": pool},
            {"type": "flatten"}, {"type": "dense", "units": 3}, {"type": "softmax"}]
    weights = weights_factory(arch, input_shape, seed=7)
    meta = make_meta(name="t", task="test", labels=["a", "b", "c"], input_shape=input_shape,
                     preprocess=PreprocessSettings(), architecture=arch, provenance={}, weights=weights)
    return Bundle(meta, weights)


@pytest.mark.parametrize("fill,form", FORMS)
@pytest.mark.parametrize("input_shape,conv,pool", SHAPES)
def test_each_conv_formulation_matches_the_plain_forward_pass(input_shape, conv, pool, fill, form,
                                                              weights_factory, monkeypatch):
    chosen = []

    def prefer(fn, repeats=3):
        chosen.append(fn.__name__)
        return 0.0 if fn.__name__ in (fill, form) else 1.0
    monkeypatch.setattr(runtime, "_best_time", prefer)
    bundle = bundle_for(input_shape, conv, pool, weights_factory)
    rt = runtime.NumpyRuntime(bundle)
    x = np.random.default_rng(3).random((4, *input_shape), dtype=np.float32)
    expected = reference(bundle, x)
    got = rt.predict(x)
    np.testing.assert_allclose(got, expected, atol=2e-6)
    np.testing.assert_allclose(rt.predict(x[1:2]), expected[1:2], atol=2e-6)  # another batch size
    assert np.ptp(expected, axis=0).max() > 1e-3
    if conv["filters"] > 1 or input_shape[2] > 1:
        assert fill in chosen and form in chosen  # the forced formulation really was on offer


def test_returned_arrays_are_not_the_reused_buffers(weights_factory):
    bundle = bundle_for(*SHAPES[0], weights_factory)
    rt = runtime.NumpyRuntime(bundle)
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 1, 32, 32, 1), dtype=np.float32)
    first = rt.predict(a)
    kept = first.copy()
    rt.predict(b)
    np.testing.assert_array_equal(first, kept)
    np.testing.assert_array_equal(rt.predict(a), kept)
    for n in range(1, 8):  # many batch sizes: compiled plans are bounded, answers unchanged
        assert rt.predict(np.repeat(a, n, axis=0)).shape == (n, 3)
    assert len(rt._compiled) <= 5
    np.testing.assert_array_equal(rt.predict(a), kept)
