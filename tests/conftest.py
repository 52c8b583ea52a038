"""Shared fixtures: MNIST pictures, drawn cards, random-weight bundles and one small trained model.

Fixtures that need the trainer import ``training`` inside the fixture, so tests of ``device``
alone never pull it in.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from device import nn
from device.bundle import Bundle, make_meta
from device.preprocess import PreprocessSettings

REPO = Path(__file__).resolve().parent.parent
# The checkout's copy, named here: with cardcam installed (tests/pi-cpu), training/ is in site-packages
# and its own default path (next to the package) does not exist.
MNIST_PATH = REPO / "data" / "mnist-8k.npz"

# No example database in the work tree, no per-example deadline (2 shared cores are noisy).
settings.register_profile("cardcam", deadline=None, database=None, max_examples=40)
settings.register_profile("thorough", deadline=None, database=None, max_examples=2000)  # --hypothesis-profile=thorough
settings.load_profile("cardcam")


@pytest.fixture(scope="session", autouse=True)
def prepared_inputs_cache(tmp_path_factory):
    """training.cache in the session's temporary folder (subprocesses inherit it): tests never
    read or fill the user's ~/.cache/cardcam."""
    os.environ["CARDCAM_CACHE"] = str(tmp_path_factory.mktemp("prepared-inputs"))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def mnist():
    """The shipped MNIST subset as it is stored: white digits on black, uint8 (N, 28, 28)."""
    with np.load(MNIST_PATH, allow_pickle=False) as f:
        return SimpleNamespace(images=f["images"], labels=f["labels"])


def blank_paper(size=(160, 120), level=230, seed=0) -> Image.Image:
    """Blank paper as a camera sees it: grain and uneven light, no ink (a picture of one flat
    colour is refused as a file, not read as blank)."""
    w, h = size
    grain = np.random.default_rng(seed).normal(0.0, 2.0, (h, w)) + np.linspace(level - 6, level + 6, w)
    return Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8))


def draw_card(text: str = "7", size=(160, 120), paper=228, ink=24, font_size=90, mode="L"):
    """A dark glyph on light paper, drawn with Pillow's built-in font (the same on every machine).
    ``paper``/``ink`` are grey levels, or colour tuples for mode "RGB"/"RGBA"."""
    im = Image.new(mode, size, paper)
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:
        # Pillow < 10.1 (Debian 12's python3-pil 9.4, which install.sh gives the Pi) has only a small
        # bitmap font: draw that as a mask, blow it up to about font_size and thicken it like the stroke.
        im.paste(ink, mask=_bitmap_glyph(text, size, font_size))
        return im
    ImageDraw.Draw(im).text((size[0] / 2, size[1] / 2), text, fill=ink, font=font, anchor="mm",
                            stroke_width=3, stroke_fill=ink)
    return im


def _bitmap_glyph(text: str, size, font_size: int) -> Image.Image:
    font = ImageFont.load_default()
    left, top, right, bottom = font.getbbox(text)
    glyph = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(glyph).text((-left, -top), text, fill=255, font=font)
    scale = max(1, round(0.75 * font_size / glyph.height))  # the TrueType glyph's ink is ~3/4 of its size
    glyph = glyph.resize((glyph.width * scale, glyph.height * scale), Image.Resampling.NEAREST)
    glyph = glyph.point(lambda v: 255 if v > 96 else 0).filter(ImageFilter.MaxFilter(7))  # solid ink, stroked
    mask = Image.new("L", size, 0)
    mask.paste(glyph, ((size[0] - glyph.width) // 2, (size[1] - glyph.height) // 2))
    return mask


@pytest.fixture(scope="session")
def card_drawer():
    return draw_card


def random_weights(architecture, input_shape, seed=0) -> dict:
    """Float32 weights for an architecture, every array non-trivial (BatchNorm's running
    statistics included), scaled so activations stay O(1) and the softmax is not saturated."""
    rng = np.random.default_rng(seed)
    layers = nn.infer_shapes(architecture, input_shape)
    weights = {}
    for layer in layers:
        for name, shape in layer.weights.items():
            key = f"L{layer.index}.{name}"
            if name == "kernel":
                fan_in = int(np.prod(shape[:-1]))
                a = rng.standard_normal(shape) * np.sqrt(1.0 / fan_in)
            elif name == "gamma":
                a = rng.uniform(0.5, 1.5, shape)
            elif name == "var":
                a = rng.uniform(0.3, 2.0, shape)
            else:  # bias, beta, mean
                a = rng.normal(0.0, 0.2, shape)
            weights[key] = a.astype(np.float32)
    return weights


def make_bundle(architecture=None, input_shape=(8, 8, 1), labels=("a", "b"), seed=0, name="tiny") -> Bundle:
    """A valid bundle with random weights (not saved)."""
    if architecture is None:
        architecture = [
            {"type": "conv2d", "filters": 2, "kernel": 3, "padding": "same"},
            {"type": "batchnorm"},
            {"type": "relu"},
            {"type": "maxpool2d", "size": 2},
            {"type": "flatten"},
            {"type": "dense", "units": len(labels)},
            {"type": "softmax"},
        ]
    weights = random_weights(architecture, input_shape, seed)
    meta = make_meta(name=name, task="test", labels=list(labels), input_shape=input_shape,
                     preprocess=PreprocessSettings(), architecture=architecture,
                     provenance={"data": "random weights", "command": "tests", "seed": seed}, weights=weights)
    return Bundle(meta, weights)


@pytest.fixture(scope="session")
def bundle_factory():
    return make_bundle


@pytest.fixture(scope="session")
def weights_factory():
    return random_weights


@pytest.fixture(scope="session")
def mnist01_cards():
    """A fixed subset of 600 MNIST 0/1 cards (dark on light), as a training.data.CardSet."""
    from training.data import load_mnist

    cards = load_mnist(MNIST_PATH, digits=(0, 1))
    idx = np.sort(np.random.default_rng(1).choice(len(cards), 600, replace=False))
    return cards.subset(idx)


@pytest.fixture(scope="session")
def trained01(tmp_path_factory, mnist01_cards):
    """A lenet5 trained for 3 epochs on 600 MNIST 0/1 cards, saved as a bundle (a few seconds)."""
    from training.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("trained") / "digits01-small.npz"
    cfg = TrainConfig(task="digits01", arch="lenet5", epochs=3, seed=0, jitter_variants=0,
                      camera_variants=0, processes=1)
    bundle = train(cfg, out, command="pytest trained01", progress=False, cards=mnist01_cards,
                   data_description="600 MNIST 0/1 cards (tests)")
    return SimpleNamespace(path=out, bundle=bundle, config=cfg, cards=mnist01_cards)


def missing(reason: str, require: str = "CI"):
    """Something a test needs is not here: skip on a laptop without it, but fail where it must be
    (``CI`` set: .ci/run exports CI=1, so a missing TensorFlow or OpenCV is a failure there, not a
    quiet skip; or the variable named by ``require``)."""
    for name in dict.fromkeys(("CI", require)):
        if os.environ.get(name) not in (None, "", "0"):
            pytest.fail(f"{name}={os.environ[name]} but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require(module: str, why: str = ""):
    """``module``, imported; missing, the test is skipped off CI and fails under CI (``missing``)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing(f"{module} cannot be imported{why} ({e})")


def skip_or_fail(reason: str):
    """For the TFLite tests: fail also when CARDCAM_REQUIRE_TFLITE=1 (tests/pi-cpu, .ci/run's numpy<2
    venv, where the TFLite tests are the point)."""
    missing(reason, require="CARDCAM_REQUIRE_TFLITE")


def keras_available() -> bool:
    return importlib.util.find_spec("keras") is not None and importlib.util.find_spec("tensorflow") is not None


@pytest.fixture(scope="session")
def int8_model(request, tmp_path_factory):
    """A 0/1 lenet5 bundle with its int8 TFLite entry: ``trained01`` exported here when Keras is
    installed; otherwise (the numpy<2 + tflite-runtime venv) the shipped models/digits01.npz if it
    has one. ``.exported`` says which."""
    from device.bundle import load_bundle

    if keras_available():
        from training.export import add_tflite

        trained01 = request.getfixturevalue("trained01")
        bundle = load_bundle(trained01.path)
        tflite, record = add_tflite(bundle, trained01.cards, "600 MNIST 0/1 cards (tests)", count=200)
        bundle.tflite, bundle.meta["tflite"] = tflite, record
        from device.bundle import save_bundle

        path = save_bundle(bundle, tmp_path_factory.mktemp("int8") / "digits01-int8.npz")
        return SimpleNamespace(path=path, bundle=load_bundle(path), cards=trained01.cards, exported=True)
    shipped = REPO / "models" / "digits01.npz"
    if not shipped.exists() or load_bundle(shipped).tflite is None:
        skip_or_fail("no Keras to export a TFLite model here, and models/digits01.npz has no TFLite entry "
                     "(after retraining it, run: cardcam-train export --model models/digits01.npz)")
    return SimpleNamespace(path=shipped, bundle=load_bundle(shipped), cards=None, exported=False)


@pytest.fixture(scope="session")
def mnist01_inputs(mnist):
    """Real model inputs: 150 MNIST 0s and 150 1s as dark-on-light cards through the Pi's preprocessing
    (32x32), with their labels. Device code only, so it runs in every environment."""
    from device.preprocess import preprocess

    keep = np.concatenate([np.flatnonzero(mnist.labels == d)[:150] for d in (0, 1)])  # the file is sorted
    xs, ys = [], []
    for i in keep:
        prepared = preprocess(255 - mnist.images[i], PreprocessSettings(), (32, 32, 1))
        if prepared.found:
            xs.append(prepared.input)
            ys.append(int(mnist.labels[i]))
    return np.stack(xs).astype(np.float32), np.array(ys)
