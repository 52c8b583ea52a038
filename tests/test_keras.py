"""The Keras path: the same specs as a Keras model, weights both ways with BatchNorm exact, the
Keras trainer writing a bundle the Pi's NumPy runtime runs, and `cardcam-train export` (int8
TFLite checked against float on real validation images)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import require

require("tensorflow")  # skipped on a laptop without the keras extra; a failure under CI
keras = require("keras")

from device.bundle import Bundle, load_bundle, make_meta  # noqa: E402
from device.preprocess import PreprocessSettings  # noqa: E402
from device.runtime import NumpyRuntime, TfliteRuntime, make_runtime  # noqa: E402
from training.data import split  # noqa: E402
from training.keras_model import bundle_weights, build_model, model_from_bundle, set_bundle_weights  # noqa: E402
from training.nets import ARCHS  # noqa: E402
from training.trainer import TrainConfig, as_float, make_inputs, train  # noqa: E402

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def val_inputs(bundle, cards, camera_frames=0):
    """The validation split's cards through the Pi's preprocessing: clean, plus camera frames."""
    _, val = split(cards)
    jobs = [(int(i), "clean", 0) for i in val] + [(int(i), "camera", 999 + v) for i in val for v in range(camera_frames)]
    x, kept = make_inputs(cards.cards, jobs, bundle.preprocess, bundle.input_shape, seed=0, processes=1)
    return as_float(x), cards.labels[[jobs[k][0] for k in kept]]


def keras_probs(model, x):
    return np.asarray(model(x, training=False))


@pytest.fixture(scope="module")
def keras_dwengo(mnist01_cards, tmp_path_factory):
    """dwengo trained by the Keras trainer for five epochs on 160 MNIST 0/1 cards, 80 of each
    (BatchNorm statistics real; validation 1.0 here)."""
    # 80 of each digit (the first 160 were all zeros: the split now refuses a label with no cards)
    cards = mnist01_cards.subset(np.concatenate([np.flatnonzero(mnist01_cards.labels == d)[:80] for d in (0, 1)]))
    out = tmp_path_factory.mktemp("keras") / "dwengo-keras.npz"
    cfg = TrainConfig(task="digits01", arch="dwengo", epochs=5, seed=0, jitter_variants=0, camera_variants=0,
                      processes=1, trainer="keras", batch_size=32)
    bundle = train(cfg, out, command="pytest keras_dwengo", progress=False, cards=cards,
                   data_description="160 MNIST 0/1 cards (tests)")
    return bundle, cards


def test_numpy_trained_lenet5_gives_the_same_outputs_in_keras(trained01):
    bundle = load_bundle(trained01.path)
    x, _ = val_inputs(bundle, trained01.cards, camera_frames=1)
    assert len(x) >= 150
    expected = NumpyRuntime(bundle).predict(x)
    got = keras_probs(model_from_bundle(bundle), x)
    assert np.abs(got - expected).max() <= 1e-4
    assert np.ptp(expected[:, 0]) > 0.5  # real inputs with different answers, not a constant


def test_keras_trained_dwengo_bundle_runs_the_same_in_numpy(keras_dwengo):
    bundle, cards = keras_dwengo
    p = bundle.meta["provenance"]
    assert p["trainer"] == "keras" and p["framework"].startswith("keras ")
    loaded = load_bundle(bundle.path)  # the file the Pi would get
    bn_means = [a for n, a in loaded.weights.items() if n.endswith(".mean")]
    bn_vars = [a for n, a in loaded.weights.items() if n.endswith(".var")]
    assert len(bn_means) == 5 and any(np.abs(m).max() > 1e-3 for m in bn_means)  # trained, not initial
    assert any(np.abs(v - 1).max() > 1e-3 for v in bn_vars)
    x, _ = val_inputs(loaded, cards, camera_frames=1)
    assert len(x) >= 40
    expected = keras_probs(model_from_bundle(loaded), x)
    got = NumpyRuntime(loaded).predict(x)
    assert np.abs(got - expected).max() <= 1e-4
    assert loaded.meta["provenance"]["val_accuracy"] > 0.5


@pytest.mark.parametrize("arch_name", ["lenet5", "dwengo", "digitnet", "custom"])
def test_weights_go_both_ways_exactly(arch_name, weights_factory):
    custom = {"input_shape": [12, 10, 2], "layers": [  # standalone BatchNorm, dense->BatchNorm, even kernel
        {"type": "batchnorm"}, {"type": "conv2d", "filters": 3, "kernel": 4, "padding": "same"}, {"type": "relu"},
        {"type": "maxpool2d", "size": 3}, {"type": "flatten"}, {"type": "dense", "units": 6},
        {"type": "batchnorm", "epsilon": 0.01}, {"type": "relu"}, {"type": "dropout", "rate": 0.2},
        {"type": "dense", "units": 3}, {"type": "softmax"}]}
    arch = custom if arch_name == "custom" else ARCHS[arch_name](3)
    weights = weights_factory(arch["layers"], arch["input_shape"], seed=5)
    model = build_model(arch["layers"], arch["input_shape"])
    set_bundle_weights(model, arch["layers"], weights)
    back = bundle_weights(model, arch["layers"])
    assert set(back) == set(weights)
    for name, a in weights.items():
        np.testing.assert_array_equal(back[name], a, err_msg=name)
    meta = make_meta(name=arch_name, task="test", labels=["a", "b", "c"], input_shape=arch["input_shape"],
                     preprocess=PreprocessSettings(), architecture=arch["layers"], provenance={}, weights=weights)
    x = np.random.default_rng(1).random((4, *arch["input_shape"]), dtype=np.float32)
    np.testing.assert_allclose(keras_probs(model, x), NumpyRuntime(Bundle(meta, weights)).predict(x), atol=1e-5)


def test_int8_tflite_matches_float_on_validation_images(int8_model):
    """Same top-1 on >= 99% of the validation images, accuracy drop <= 0.5 points."""
    bundle = int8_model.bundle
    record = bundle.meta["tflite"]
    assert record["input"] == "int8" and "training split" in record["representative"]
    x, y = val_inputs(bundle, int8_model.cards, camera_frames=3)
    assert len(x) >= 300
    runtime = make_runtime(bundle, "auto")
    assert isinstance(runtime, TfliteRuntime)
    q, f = runtime.predict(x), NumpyRuntime(bundle).predict(x)
    agreement = float((q.argmax(1) == f.argmax(1)).mean())
    drop = float((f.argmax(1) == y).mean() - (q.argmax(1) == y).mean())
    assert agreement >= 0.99, agreement
    assert drop <= 0.005, drop
    assert record["validation"]["top1_agreement"] >= 0.99
    interpreter_input = runtime._interpreter.get_input_details()[0]
    assert np.dtype(interpreter_input["dtype"]) == np.int8  # full-integer at the edges too


def test_export_cli_adds_tflite_to_a_numpy_bundle_and_writes_a_tflite_file(trained01, tmp_path):
    model = tmp_path / "m.npz"
    model.write_bytes(trained01.path.read_bytes())
    before = load_bundle(model)
    data = tmp_path / "cards"
    cards = trained01.cards
    for i in [*np.flatnonzero(cards.labels == 0)[:60], *np.flatnonzero(cards.labels == 1)[:60]]:
        folder = data / cards.names[cards.labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(cards.cards[i]).save(folder / f"{i}.png")
    proc = subprocess.run([sys.executable, "-m", "training", "export", "--model", str(model), "--data",
                           f"folder:{data}", "--count", "60"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "top-1 agreement" in proc.stdout
    assert proc.stderr == ""  # not even TensorFlow's start-up lines (oneDNN, absl)
    after = load_bundle(model)
    assert after.meta["weights_sha256"] == before.meta["weights_sha256"]
    for name, a in before.weights.items():
        np.testing.assert_array_equal(after.weights[name], a)
    standalone = model.with_suffix(".tflite")
    assert standalone.read_bytes() == after.tflite
    assert after.meta["tflite"]["sha256"] == hashlib.sha256(after.tflite).hexdigest()
    assert after.meta["tflite"]["representative"].startswith("60 inputs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cards", "m.npz", "m.tflite"]
    # The int8 model judged like any other: cardcam-train evaluate --runtime tflite.
    proc = subprocess.run([sys.executable, "-m", "training", "evaluate", "--model", str(model), "--runtime", "tflite",
                           "--json", str(data)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["runtime"].startswith("tflite (") and report["count"] == 120 and report["accuracy"] >= 0.95
    # Refusals: one line naming what is wrong, the bundle untouched.
    proc = subprocess.run([sys.executable, "-m", "training", "export", "--model", str(tmp_path / "none.npz")],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "none.npz: cannot read" in proc.stderr
    (data / "7").mkdir()
    Image.fromarray(cards.cards[0]).save(data / "7" / "x.png")
    proc = subprocess.run([sys.executable, "-m", "training", "export", "--model", str(model), "--data",
                           f"folder:{data}"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "are not the model's" in proc.stderr
    assert load_bundle(model).meta == after.meta


def test_keras_is_named_in_the_train_cli(mnist01_cards, tmp_path, capsys):
    """`cardcam-train train --trainer keras` trains with Keras, and the bundle says so."""
    from training.cli import main

    folder = tmp_path / "cards"
    for d in (0, 1):
        (folder / str(d)).mkdir(parents=True)
        for i in np.flatnonzero(mnist01_cards.labels == d)[:20]:
            Image.fromarray(mnist01_cards.cards[i]).save(folder / str(d) / f"{i}.png")
    out = tmp_path / "keras.npz"
    assert main(["train", "--trainer", "keras", "--task", f"folder:{folder}", "--epochs", "1", "--jitter", "0",
                 "--camera", "0", "--processes", "1", "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    provenance = load_bundle(out).meta["provenance"]
    assert provenance["trainer"] == "keras" and "--trainer keras" in provenance["command"]
