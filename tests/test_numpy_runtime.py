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
    ((10, 9, 8), {"type": "conv2d", "filters": 5, "kernel": 3, "padding": "same"}, 2),      # input stored channel-last
]
FORMS = ["kp", "pk", "kp_phased", "pk_phased", "kp_wide", "shifted_sum"]  # shifted_sum: one input and output channel only


def reference(bundle, x):
    """The plain forward pass: each layer type's own forward (device.nn.LAYERS), nothing fused."""
    return nn.forward(bundle.architecture, bundle.input_shape, bundle.weights, x)


def bundle_for(input_shape, conv, pool, weights_factory):
    arch = [conv, {"type": "batchnorm"}, {"type": "relu"}, {"type": "maxpool2d", "size": pool},
            {"type": "flatten"}, {"type": "dense", "units": 3}, {"type": "softmax"}]
    weights = weights_factory(arch, input_shape, seed=7)
    meta = make_meta(name="t", task="test", labels=["a", "b", "c"], input_shape=input_shape,
                     preprocess=PreprocessSettings(), architecture=arch, provenance={}, weights=weights)
    return Bundle(meta, weights)


@pytest.mark.parametrize("large", [False, True], ids=["frame", "large-batch"])
@pytest.mark.parametrize("form", FORMS + [None], ids=FORMS + ["fastest"])
@pytest.mark.parametrize("input_shape,conv,pool", SHAPES)
def test_each_conv_formulation_matches_the_plain_forward_pass(input_shape, conv, pool, form, large, weights_factory):
    bundle = bundle_for(input_shape, conv, pool, weights_factory)
    # large: forms built and timed one at a time, as for big batches
    rt = runtime.NumpyRuntime(bundle, conv_forms=None if form is None else [form],
                              all_forms_max=0 if large else runtime.ALL_FORMS_MAX)
    x = np.random.default_rng(3).random((4, *input_shape), dtype=np.float32)
    expected = reference(bundle, x)
    got = rt.predict(x)
    np.testing.assert_allclose(got, expected, atol=2e-6)
    np.testing.assert_allclose(rt.predict(x[1:2]), expected[1:2], atol=2e-6)  # another batch size
    assert np.ptp(expected, axis=0).max() > 1e-3
    if form is not None:
        offered = {"shifted_sum": conv["filters"] == 1 and input_shape[2] == 1,
                   "kp_wide": input_shape[2] < runtime.CHANNELS_LAST}.get(form, True)
        assert (rt.conv_forms(4) == [form]) == offered  # the forced form really was on offer (or rightly not)
        assert (rt.conv_forms(1) == [form]) == offered


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


def test_unfused_layer_orders_match_the_plain_forward_pass(weights_factory):
    """BatchNorm after ReLU or after flatten, a conv with no pool, a pool on its own, and stacked
    dense layers: the in-place and standalone steps, for batch 1 and a larger batch."""
    arch = [{"type": "conv2d", "filters": 3, "kernel": 3, "padding": "same"}, {"type": "relu"},
            {"type": "batchnorm"}, {"type": "maxpool2d", "size": 2},
            {"type": "conv2d", "filters": 4, "kernel": 3, "padding": "valid"}, {"type": "relu"},
            {"type": "batchnorm"}, {"type": "maxpool2d", "size": 2},
            {"type": "flatten"}, {"type": "batchnorm"}, {"type": "relu"},
            {"type": "dense", "units": 7}, {"type": "relu"}, {"type": "dense", "units": 5}, {"type": "batchnorm"},
            {"type": "dense", "units": 3}, {"type": "softmax"}]
    input_shape = (14, 12, 2)
    weights = weights_factory(arch, input_shape, seed=5)
    meta = make_meta(name="t", task="test", labels=["a", "b", "c"], input_shape=input_shape,
                     preprocess=PreprocessSettings(), architecture=arch, provenance={}, weights=weights)
    bundle = Bundle(meta, weights)
    rt = runtime.NumpyRuntime(bundle)
    x = np.random.default_rng(4).random((5, *input_shape), dtype=np.float32)
    expected = reference(bundle, x.astype(np.float64))
    np.testing.assert_allclose(rt.predict(x), expected, atol=2e-6)
    np.testing.assert_allclose(rt.predict(x[2]), expected[2:3], atol=2e-6)
    assert np.ptp(expected, axis=0).max() > 1e-3
