"""Every layer's backward pass against central finite differences (float64), the forward passes
against plain loops, and the Pi's NumPy runtime against the trainer's Network."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from device import nn
from device.bundle import Bundle, load_bundle, make_meta, save_bundle
from device.preprocess import PreprocessSettings
from device.runtime import NumpyRuntime, make_runtime
from training import layers as L
from training import registry
from training.nets import ARCHS, Network


# --- helpers ---------------------------------------------------------------------------------

def numeric_grad(f, x: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """d f() / d x by central differences, perturbing ``x`` in place (f reads it)."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        plus = f()
        x[idx] = old - h
        minus = f()
        x[idx] = old
        grad[idx] = (plus - minus) / (2 * h)
    return grad


def assert_grad_close(analytic, numeric, what, rtol=1e-5, floor=1e-4):
    """Elementwise relative error, with an absolute floor so true zeros (a bias before
    BatchNorm) compare by absolute error instead of dividing noise by noise."""
    assert analytic.shape == numeric.shape, what
    err = np.abs(analytic - numeric) / np.maximum(np.abs(analytic) + np.abs(numeric), floor)
    worst = np.unravel_index(int(err.argmax()), err.shape)
    assert err.max() < rtol, (f"{what}: relative error {err.max():.2e} at {worst} "
                              f"(analytic {analytic[worst]:.6g}, numeric {numeric[worst]:.6g})")


def check_layer(layer, x, training=True, seed=0):
    """Gradient check of a layer for the loss sum(out * R): its input and every parameter."""
    rng = np.random.default_rng(seed)
    out = layer.forward(x, training)
    upstream = rng.standard_normal(out.shape)

    def loss():
        return float((layer.forward(x, training) * upstream).sum())

    layer.forward(x, training)
    dx = layer.backward(upstream)
    analytic = {name: layer.grads[name].copy() for name in layer.params}
    assert_grad_close(dx, numeric_grad(loss, x), f"{type(layer).__name__} d/dx")
    for name, param in layer.params.items():
        assert_grad_close(analytic[name], numeric_grad(loss, param), f"{type(layer).__name__} d/d{name}")


def away_from_zero(rng, shape, margin=0.05):
    """Values at least ``margin`` from 0, so no finite difference steps across a ReLU kink."""
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(margin, 1.0, size=shape)


def distinct(rng, shape):
    """Values spaced 0.01 apart in random order: no ties for max-pooling, none within h."""
    return (rng.permutation(int(np.prod(shape))) * 0.01 - 1.0).reshape(shape)


# --- convolution -----------------------------------------------------------------------------

def conv_reference(x, kernel, bias, padding):
    """Keras' stride-1 convolution (cross-correlation, HWIO kernel), one output at a time."""
    k = kernel.shape[0]
    if padding == "same":
        lo, hi = (k - 1) // 2, k // 2
        x = np.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
    n, h, w, _ = x.shape
    out = np.zeros((n, h - k + 1, w - k + 1, kernel.shape[3]))
    for i in range(h - k + 1):
        for j in range(w - k + 1):
            out[:, i, j, :] = np.tensordot(x[:, i:i + k, j:j + k, :], kernel, axes=([1, 2, 3], [0, 1, 2]))
    return out + bias


# Conv2D's two forms, whatever the shape: row patches from kernel rows of one number on, or never.
CONV_FORMS = {"im2col": L.Tuning(row_patches_from=1 << 30), "row-patches": L.Tuning(row_patches_from=1)}


@pytest.fixture(params=list(CONV_FORMS))
def conv_form(request):
    """The Tuning that makes Conv2D take one of its two forms."""
    return CONV_FORMS[request.param]


@pytest.mark.parametrize("padding,k,cin,cout,h,w", [
    ("same", 3, 1, 2, 6, 5),
    ("valid", 3, 3, 4, 7, 6),
    ("same", 5, 2, 3, 7, 7),
    ("valid", 5, 3, 2, 8, 7),
    ("same", 3, 4, 4, 5, 5),
    ("same", 4, 2, 2, 6, 6),  # even kernel: Keras pads one more after than before
])
def test_conv2d_gradients(padding, k, cin, cout, h, w, conv_form):
    rng = np.random.default_rng(k * 100 + cin)
    layer = L.Conv2D(rng.standard_normal((k, k, cin, cout)), rng.standard_normal(cout), padding, tuning=conv_form)
    check_layer(layer, rng.standard_normal((2, h, w, cin)))


@pytest.mark.parametrize("form", list(CONV_FORMS))
@given(n=st.integers(1, 2), h=st.integers(5, 9), w=st.integers(5, 9), cin=st.integers(1, 3),
       cout=st.integers(1, 3), k=st.sampled_from([1, 2, 3, 5]), padding=st.sampled_from(["same", "valid"]),
       seed=st.integers(0, 2**16))
def test_conv2d_forward_matches_loops(form, n, h, w, cin, cout, k, padding, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, cin))
    kernel, bias = rng.standard_normal((k, k, cin, cout)), rng.standard_normal(cout)
    expected = conv_reference(x, kernel, bias, padding)
    out = L.Conv2D(kernel, bias, padding, tuning=CONV_FORMS[form]).forward(x)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(nn.conv2d(x.astype(np.float32), kernel.astype(np.float32),
                                         bias.astype(np.float32), padding), expected, rtol=1e-4, atol=1e-4)
    if padding == "same":
        assert out.shape == (n, h, w, cout)


def test_conv2d_in_groups_of_images_is_the_whole_product():
    """Patches built and multiplied a few images at a time (7 images in groups of 2, 2, 3):
    the same output and gradients as in one piece."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((7, 9, 9, 3))
    kernel, bias = rng.standard_normal((3, 3, 3, 4)), rng.standard_normal(4)
    dout = rng.standard_normal((7, 9, 9, 4))
    results = []
    for group_bytes in (1 << 40, 3 * 81 * 27 * 8):
        layer = L.Conv2D(kernel, bias, "same", tuning=L.Tuning(patch_group_bytes=group_bytes))
        out = layer.forward(x, True)
        results.append((out, layer.backward(dout), layer.grads["kernel"]))
    np.testing.assert_allclose(results[1][0], conv_reference(x, kernel, bias, "same"), rtol=1e-10, atol=1e-10)
    for whole, grouped in zip(*results):
        np.testing.assert_allclose(grouped, whole, rtol=1e-12, atol=1e-12)


def test_conv2d_form_follows_the_kernel_row_length():
    """Row patches where a kernel row holds 64 numbers or more (digitnet's 5 x 16), im2col below."""
    rng = np.random.default_rng(6)
    for cin, by_rows in ((16, True), (12, False), (1, False)):
        layer = L.Conv2D(rng.standard_normal((5, 5, cin, 2)), np.zeros(2), "same")
        layer.forward(rng.standard_normal((1, 6, 6, cin)), True)
        assert layer.cache[2] is by_rows, cin


def test_layers_cut_into_pieces_give_the_numbers_of_one_piece():
    """A row-patch conv, BatchNorm and max-pool with their maps cut into pieces for the threads
    (7 pictures, 4 pieces): the outputs and gradients of one piece."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((7, 9, 9, 3))
    kernel, bias = rng.standard_normal((3, 3, 3, 4)), rng.standard_normal(4)
    gamma, beta = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
    dout = rng.standard_normal((7, 4, 4, 4))
    results = []
    for split in (1 << 40, 1):
        tuning = L.Tuning(row_patches_from=1, map_split=split)
        assert len(L.map_pieces(7, x.size, tuning)) == (1 if split > 1 else 4)
        conv = L.Conv2D(kernel, bias, "same", tuning=tuning)
        bn = L.BatchNorm(gamma, beta, np.zeros(4), np.ones(4), tuning=tuning)
        pool = L.MaxPool2D(2, tuning=tuning)
        out = pool.forward(bn.forward(conv.forward(x, True), True), True)
        dx = conv.backward(bn.backward(pool.backward(dout)))
        results.append([out, dx, conv.grads["kernel"], conv.grads["bias"], bn.grads["gamma"], bn.grads["beta"],
                        bn.state["mean"], bn.state["var"]])
    for whole, pieces in zip(*results):
        np.testing.assert_allclose(pieces, whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m, k, n, layout", [
    (25, 5000, 6, "C"),       # a weight gradient: inner blocks of 1024, and a remainder of 904
    (9, 8192, 4, "F"),        # the same from a transposed patch matrix (cols.T), no remainder
    (20000, 25, 6, "C"),      # a conv's patches times its kernel: blocks of rows
    (20000, 25, 6, "F"),      # ... from a first layer's transposed patch rows
    (64, 300, 120, "C"),      # a dense layer: one product
    (3, 9000, 1, "C"),        # a matrix-vector product: one product
])
def test_matmul_blocks_give_the_product(m, k, n, layout):
    """training.layers.matmul cuts products into blocks (of the inner axis, of rows): each form
    gives a @ b, in a new array or into ``out``."""
    rng = np.random.default_rng(m + k + n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    a = a if layout == "C" else np.asfortranarray(a)
    b = rng.standard_normal((k, n)).astype(np.float32)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    tolerance = 2e-5 * np.sqrt(k) * np.abs(expected).max()
    np.testing.assert_allclose(L.matmul(a, b), expected, atol=tolerance)
    out = np.full((m, n), np.nan, np.float32)
    assert L.matmul(a, b, out=out) is out
    np.testing.assert_allclose(out, expected, atol=tolerance)


# --- ReLU, pooling, flatten, dense -----------------------------------------------------------

def test_relu_gradient():
    rng = np.random.default_rng(1)
    x = away_from_zero(rng, (3, 4, 5, 2))
    check_layer(L.ReLU(), x)
    out = L.ReLU().forward(x)
    assert (out >= 0).all() and np.array_equal(out > 0, x > 0)


@pytest.mark.parametrize("h,w,size", [(4, 4, 2), (7, 5, 2), (5, 9, 2), (9, 7, 3), (6, 6, 3)])
def test_maxpool_gradient(h, w, size):
    rng = np.random.default_rng(h * w)
    x = distinct(rng, (2, h, w, 3))
    layer = L.MaxPool2D(size)
    check_layer(layer, x)
    assert layer.forward(x).shape == (2, h // size, w // size, 3)
    # The rows and columns that the floor drops get no gradient.
    dx = layer.backward(np.ones((2, h // size, w // size, 3)))
    assert not dx[:, (h // size) * size:, :, :].any() and not dx[:, :, (w // size) * size:, :].any()
    assert dx.sum() == 2 * (h // size) * (w // size) * 3  # one maximum per window


def test_maxpool_gradient_goes_to_the_first_of_tied_maxima():
    """As TensorFlow's: one maximum per window takes the gradient, the first in row-major order."""
    x = np.array([[1, 3, 0, 0], [3, 3, 0, -1]], np.float32).reshape(1, 2, 4, 1)
    pool = L.MaxPool2D(2)
    np.testing.assert_array_equal(pool.forward(x, True).ravel(), [3, 0])
    dx = pool.backward(np.array([5, 7], np.float32).reshape(1, 1, 2, 1))
    np.testing.assert_array_equal(dx.reshape(2, 4), [[0, 5, 7, 0], [0, 0, 0, 0]])


@given(h=st.integers(2, 11), w=st.integers(2, 11), size=st.sampled_from([2, 3]), seed=st.integers(0, 2**16))
def test_maxpool_forward_matches_loops(h, w, size, seed):
    assume(h >= size and w >= size)
    x = np.random.default_rng(seed).standard_normal((2, h, w, 2))
    ho, wo = h // size, w // size
    expected = np.empty((2, ho, wo, 2))
    for i in range(ho):
        for j in range(wo):
            expected[:, i, j, :] = x[:, i * size:(i + 1) * size, j * size:(j + 1) * size, :].max(axis=(1, 2))
    np.testing.assert_array_equal(L.MaxPool2D(size).forward(x), expected)
    np.testing.assert_array_equal(nn.maxpool2d(x, size), expected)


@pytest.mark.parametrize("size", [2, 3])
def test_pool_then_relu_is_relu_then_pool_exactly(size):
    """Network runs a max-pool before the ReLU that precedes it: the same numbers both ways,
    gradients included, on windows with tied maxima, zeros and no positive value."""
    rng = np.random.default_rng(size)
    x = rng.integers(-3, 3, (4, 3 * size + 1, 2 * size, 3)).astype(np.float32)  # many ties
    dout = rng.standard_normal((4, 3, 2, 3)).astype(np.float32)
    relu, pool = L.ReLU(), L.MaxPool2D(size)
    spec_order = pool.forward(relu.forward(x, True), True)
    spec_dx = relu.backward(pool.backward(dout))
    relu, pool = L.ReLU(), L.MaxPool2D(size)
    run_order = relu.forward(pool.forward(x, True), True)
    run_dx = pool.backward(relu.backward(dout))
    assert (x.reshape(-1) == 0).any() and (x < 0).any()
    np.testing.assert_array_equal(run_order, spec_order)
    np.testing.assert_array_equal(run_dx, spec_dx)


def test_network_runs_a_pool_before_the_relu_before_it():
    net = Network(ARCHS["smileynet"](3)["layers"], (48, 48, 1), np.random.default_rng(0))
    kinds = [type(net.layers[i]).__name__ for i in net.order]
    assert kinds[:4] == ["Conv2D", "MaxPool2D", "ReLU", "Conv2D"]
    assert kinds[4:8] == ["BatchNorm", "MaxPool2D", "ReLU", "Conv2D"]
    assert sorted(net.order) == list(range(len(net.layers)))  # weights keep their layer numbers


def test_flatten_gradient():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 2, 3, 4))
    layer = L.Flatten()
    assert layer.forward(x).shape == (3, 24)
    check_layer(layer, x)


@pytest.mark.parametrize("side_by_side", [False, True], ids=["in-turn", "side-by-side"])
def test_dense_gradient(side_by_side):
    rng = np.random.default_rng(3)
    tuning = L.Tuning(dense_split=1 if side_by_side else 1 << 40)
    layer = L.Dense(rng.standard_normal((6, 4)), rng.standard_normal(4), tuning=tuning)
    check_layer(layer, rng.standard_normal((5, 6)))


# --- BatchNorm -------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 4, 5, 3), (6, 4), (2, 4, 4, 1), (2, 8, 8, 2)],
                         ids=["conv-4d", "dense-2d", "one-channel", "rows-of-256"])
def test_batchnorm_training_gradient(shape):
    rng = np.random.default_rng(4)
    c = shape[-1]
    layer = L.BatchNorm(rng.uniform(0.5, 1.5, c), rng.standard_normal(c), np.zeros(c), np.ones(c))
    x = rng.standard_normal(shape) * 2.0 + 0.5
    check_layer(layer, x)


@pytest.mark.parametrize("shape", [(3, 4, 5, 3), (6, 4)], ids=["conv-4d", "dense-2d"])
def test_batchnorm_training_normalises_and_updates_running_stats(shape):
    rng = np.random.default_rng(5)
    c = shape[-1]
    mean0, var0 = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    layer = L.BatchNorm(np.ones(c), np.zeros(c), mean0.copy(), var0.copy(), epsilon=1e-3, momentum=0.9)
    x = rng.standard_normal(shape) * 3.0 + 2.0
    out = layer.forward(x, training=True)
    axes = tuple(range(len(shape) - 1))
    np.testing.assert_allclose(out.mean(axis=axes), 0.0, atol=1e-10)
    np.testing.assert_allclose(out.var(axis=axes), x.var(axis=axes) / (x.var(axis=axes) + 1e-3), rtol=1e-10)
    np.testing.assert_allclose(layer.state["mean"], 0.9 * mean0 + 0.1 * x.mean(axis=axes), rtol=1e-12)
    np.testing.assert_allclose(layer.state["var"], 0.9 * var0 + 0.1 * x.var(axis=axes), rtol=1e-12)


@pytest.mark.parametrize("shape", [(3, 4, 5, 3), (6, 4)], ids=["conv-4d", "dense-2d"])
def test_batchnorm_eval_uses_running_stats(shape):
    rng = np.random.default_rng(6)
    c = shape[-1]
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
    mean, var = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    layer = L.BatchNorm(gamma, beta, mean.copy(), var.copy(), epsilon=1e-3)
    x = rng.standard_normal(shape)
    out = layer.forward(x, training=False)
    np.testing.assert_allclose(out, gamma * (x - mean) / np.sqrt(var + 1e-3) + beta, rtol=1e-12)
    np.testing.assert_array_equal(layer.state["mean"], mean)  # inference leaves the statistics alone
    np.testing.assert_array_equal(layer.state["var"], var)
    # Each sample on its own gives the same answer: nothing depends on the batch.
    np.testing.assert_allclose(layer.forward(x[:1], training=False), out[:1], rtol=1e-12)
    # And the runtime's folded form is the same affine map.
    scale, shift = nn.fold_batchnorm({"gamma": gamma, "beta": beta, "mean": mean, "var": var}, 1e-3)
    np.testing.assert_allclose(x * scale + shift, out, rtol=1e-10, atol=1e-12)


# --- Dropout ---------------------------------------------------------------------------------

def test_dropout_gradient_uses_the_forward_mask():
    rate, seed = 0.4, 7
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 3, 3, 2))
    upstream = rng.standard_normal(x.shape)

    def forward(x):  # the same generator state every time, so the same mask
        layer = L.Dropout(rate, np.random.default_rng(seed))
        return layer, layer.forward(x, training=True)

    layer, out = forward(x)
    dx = layer.backward(upstream)
    assert_grad_close(dx, numeric_grad(lambda: float((forward(x)[1] * upstream).sum()), x), "Dropout d/dx")
    dropped = out == 0
    assert 0 < dropped.sum() < x.size
    assert not dx[dropped].any()
    np.testing.assert_allclose(dx[~dropped], upstream[~dropped] / (1 - rate))
    np.testing.assert_allclose(out[~dropped], x[~dropped] / (1 - rate))


def test_dropout_rate_and_inference():
    layer = L.Dropout(0.3, np.random.default_rng(0))
    x = np.ones((100, 100))
    out = layer.forward(x, training=True)
    assert 0.27 < (out == 0).mean() < 0.33
    assert abs(out.mean() - 1.0) < 0.05  # inverted dropout keeps the expected activation
    assert layer.forward(x, training=False) is x
    g = np.random.default_rng(1).standard_normal(x.shape)
    assert layer.backward(g) is g


# --- loss ------------------------------------------------------------------------------------

def test_softmax_cross_entropy_value_and_gradient():
    rng = np.random.default_rng(9)
    logits = rng.standard_normal((5, 4)) * 3
    labels = np.array([0, 3, 1, 1, 2])
    loss, dlogits = L.softmax_cross_entropy(logits, labels)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.log(p[np.arange(5), labels]).mean(), rel=1e-12)
    numeric = numeric_grad(lambda: L.softmax_cross_entropy(logits, labels)[0], logits)
    assert_grad_close(dlogits, numeric, "softmax_cross_entropy d/dlogits")


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, -1000.0, 0.0], [-5000.0, 5000.0, 4990.0]])
    loss, d = L.softmax_cross_entropy(logits, np.array([0, 2]))
    assert np.isfinite(loss) and np.isfinite(d).all()
    assert loss == pytest.approx((10.0 + np.log1p(np.exp(-10.0))) / 2, rel=1e-9)  # second sample: 10 nats behind
    np.testing.assert_allclose(d.sum(axis=1), 0.0, atol=1e-12)


# --- a whole network -------------------------------------------------------------------------

SMALL_NET = [
    {"type": "conv2d", "filters": 3, "kernel": 3, "padding": "same"},
    {"type": "batchnorm"},
    {"type": "relu"},
    {"type": "maxpool2d", "size": 2},
    {"type": "conv2d", "filters": 4, "kernel": 3, "padding": "valid"},
    {"type": "relu"},
    {"type": "dropout", "rate": 0.3},
    {"type": "flatten"},
    {"type": "dense", "units": 5},
    {"type": "batchnorm"},
    {"type": "relu"},
    {"type": "dense", "units": 3},
    {"type": "softmax"},
]


def test_network_gradients_for_every_parameter_and_the_input():
    rng = np.random.default_rng(10)
    net = Network(SMALL_NET, (8, 8, 2), rng, dtype=np.float64)
    for _, layer, name in net.trainables():  # make every parameter count, biases included
        layer.params[name][...] = rng.standard_normal(layer.params[name].shape) * (0.5 if name != "gamma" else 0.3) \
            + (1.0 if name == "gamma" else 0.0)
    x = rng.uniform(0, 1, (4, 8, 8, 2))
    y = np.array([0, 2, 1, 2])

    def logits():
        for layer in net.layers:  # one dropout mask for every evaluation
            if isinstance(layer, L.Dropout):
                layer.rng = np.random.default_rng(11)
        return net.logits(x, training=True)

    def loss():
        return L.softmax_cross_entropy(logits(), y)[0]

    _, dlogits = L.softmax_cross_entropy(logits(), y)
    dx = net.backward(dlogits)
    assert any(isinstance(l, L.Dropout) and l.mask is not None and (l.mask == 0).any() for l in net.layers)
    analytic = {key: layer.grads[name].copy() for key, layer, name in net.trainables()}
    assert set(analytic) == {k for k in nn.weight_names(net.shapes) if not k.endswith((".mean", ".var"))}
    assert_grad_close(dx, numeric_grad(loss, x), "network d/dinput")
    for key, layer, name in net.trainables():
        assert_grad_close(analytic[key], numeric_grad(loss, layer.params[name]), f"network d/d{key}")
    # The conv bias feeding BatchNorm cannot change the loss: its gradient is zero.
    np.testing.assert_allclose(analytic["L0.bias"], 0.0, atol=1e-12)


def test_network_keeps_the_dtype_it_was_built_with():
    net = Network(SMALL_NET, (8, 8, 2), np.random.default_rng(0), dtype=np.float64)
    assert net.logits(np.zeros((2, 8, 8, 2)), training=True).dtype == np.float64
    net32 = Network(SMALL_NET, (8, 8, 2), np.random.default_rng(0))
    assert net32.logits(np.zeros((2, 8, 8, 2), np.float32), training=True).dtype == np.float32
    assert net32.parameter_count() == sum(int(np.prod(a.shape)) for a in net32.weights().values())


def test_every_layer_type_has_its_training_forms():
    """device.nn.LAYERS (checks, weights, plain and fast forward) and training.registry.TRAINING
    (the trainer's layer, the Keras layer) name the same layer types, and the arrays Keras
    carries are the ones the device's type owns."""
    assert list(registry.TRAINING) == list(nn.LAYERS)
    shapes = {layer.spec["type"]: layer for layer in nn.infer_shapes(SMALL_NET, (8, 8, 2))}
    assert shapes.keys() == nn.LAYERS.keys()  # SMALL_NET has every type
    for kind, forms in registry.TRAINING.items():
        assert set(forms.keras_weights) == set(shapes[kind].weights), kind
        made = forms.layer(shapes[kind], np.random.default_rng(0), np.float32, L.TUNING)
        assert set({**made.params, **made.state}) == set(shapes[kind].weights), kind


# --- the Pi's runtime agrees with the trainer ------------------------------------------------

CUSTOM = {"input_shape": [12, 10, 2], "layers": [  # standalone BatchNorm first, dense->BatchNorm, even kernel
    {"type": "batchnorm"},
    {"type": "conv2d", "filters": 3, "kernel": 4, "padding": "same"},
    {"type": "relu"},
    {"type": "maxpool2d", "size": 3},
    {"type": "flatten"},
    {"type": "dense", "units": 6},
    {"type": "batchnorm", "epsilon": 0.01},
    {"type": "relu"},
    {"type": "dropout", "rate": 0.2},
    {"type": "dense", "units": 3},
    {"type": "softmax"},
]}


@pytest.mark.parametrize("arch_name", [*ARCHS, "custom"])
def test_numpy_runtime_matches_network_predict(arch_name, tmp_path, weights_factory):
    arch = CUSTOM if arch_name == "custom" else ARCHS[arch_name](4)
    input_shape = tuple(arch["input_shape"])
    net = Network(arch["layers"], input_shape, np.random.default_rng(0))
    weights = weights_factory(arch["layers"], input_shape, seed=3)
    net.set_weights(weights)
    labels = [f"c{i}" for i in range(arch["layers"][-2]["units"])]
    meta = make_meta(name=arch_name, task="test", labels=labels, input_shape=input_shape,
                     preprocess=PreprocessSettings(), architecture=arch["layers"], provenance={},
                     weights=net.weights())
    bundle = load_bundle(save_bundle(Bundle(meta, net.weights()), tmp_path / f"{arch_name}.npz"))
    x = np.random.default_rng(4).uniform(0, 1, (5, *input_shape)).astype(np.float32)
    expected = net.predict(x)
    runtime = make_runtime(bundle, "numpy")
    assert isinstance(runtime, NumpyRuntime) and runtime.labels == labels
    got = runtime.predict(x)
    assert got.shape == (5, len(labels))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    # The comparison means something only if the network says different things for different inputs.
    assert np.ptp(expected, axis=0).max() > 1e-3
    np.testing.assert_allclose(runtime.predict(x[0]), got[:1], atol=1e-6)  # a single (H, W, C) input
    with pytest.raises(ValueError, match="does not match"):
        runtime.predict(np.zeros((1, 5, 5, 1), np.float32))
