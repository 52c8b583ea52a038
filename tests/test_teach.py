"""`cardcam teach`: a base model's frozen network and a new output layer learnt from a folder of
examples, saved as a normal bundle; and every way the examples, the base or the saving can be
wrong, each one line, nothing written."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, draw_card, make_bundle
from device import cli, nn, teach
from device.classify import classify
from device.bundle import load_bundle, save_bundle
from device.preprocess import load_image, preprocess
from device.runtime import NumpyRuntime

NEW_LABELS = ("A", "K", "R")  # letters: a 0/1 model has never seen one


def frame(text: str, rng) -> np.ndarray:
    """A 160 x 120 camera-like frame of a card with ``text``: its size, place and light vary."""
    card = np.asarray(draw_card(text, size=(120, 100), font_size=int(rng.integers(55, 80))), float)
    picture = np.full((120, 160), rng.uniform(150, 200)) + rng.normal(0, 3, (120, 160))
    top, left = int(rng.integers(0, 20)), int(rng.integers(10, 40))
    picture[top:top + 100, left:left + 120] = card * rng.uniform(0.8, 1.0)
    return np.clip(picture, 0, 255).astype(np.uint8)


def write_examples(root, per_label=10, labels=NEW_LABELS, seed=0):
    rng = np.random.default_rng(seed)
    for label in labels:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_label):
            Image.fromarray(frame(label, rng)).save(root / label / f"{i:02d}.png")
    return root


def run(*argv, capsys):
    code = cli.main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def examples(tmp_path):
    return write_examples(tmp_path / "examples")


def test_taught_bundle_loads_keeps_the_base_and_reads_the_new_labels(trained01, examples, tmp_path, capsys):
    out = tmp_path / "taught.npz"
    code, said, err = run("teach", "--model", trained01.path, "--examples", examples, "--out", out, capsys=capsys)
    assert (code, err) == (0, "")
    assert said.startswith(f"saved {out}: A (10), K (10), R (10) taught on {trained01.path.name}")
    taught, base = load_bundle(out), load_bundle(trained01.path)
    assert taught.labels == list(NEW_LABELS)
    assert taught.meta["preprocess"] == base.meta["preprocess"] and taught.input_shape == base.input_shape
    # Frozen: every layer kept is the base's, weight for weight: its layers to the flatten, but for the
    # ReLU before the last max-pool (the new layer reads the values before it).
    kept, origin = teach.kept_layers(base)
    assert [base.architecture[i]["type"] for i in range(origin[-1]) if i not in origin] == ["relu"]
    assert taught.architecture == kept + [{"type": "dense", "units": 3}, {"type": "softmax"}]
    assert kept == [base.architecture[i] for i in origin] and kept[-1] == {"type": "flatten"}
    for new, old in enumerate(origin):
        for name, array in base.weights.items():
            if name.startswith(f"L{old}."):
                np.testing.assert_array_equal(taught.weights[f"L{new}." + name.split(".")[1]], array)
    # What the fit saw is what the saved network computes.
    inputs = teach.read_examples(examples, base).inputs
    last = taught.weights[f"L{len(kept)}.kernel"], taught.weights[f"L{len(kept)}.bias"]
    np.testing.assert_allclose(NumpyRuntime(taught).predict(inputs),
                               nn.softmax(teach.features(base, inputs) @ last[0] + last[1]), atol=1e-5)
    p = taught.meta["provenance"]
    assert "taught on the device" in p["taught"]
    assert p["base_model"] == trained01.path.name and p["base_weights_sha256"] == base.meta["weights_sha256"]
    assert p["examples"]["counts"] == {"A": 10, "K": 10, "R": 10} and len(p["examples"]["sha256"]) == 64
    assert p["date"].startswith("20")
    # Further pictures of the new labels, through predict's own path.
    runtime, rng, right, seen = NumpyRuntime(taught), np.random.default_rng(99), 0, 0
    for index, label in enumerate(NEW_LABELS):
        for _ in range(20):
            seen += 1
            right += classify(frame(label, rng), taught, runtime).label == label
    assert right / seen >= 0.9


def test_cardcam_predict_reads_a_taught_bundle(trained01, examples, tmp_path, capsys):
    out = tmp_path / "taught.npz"
    assert run("teach", "--model", trained01.path, "--examples", examples, "--out", out, capsys=capsys)[0] == 0
    picture = tmp_path / "k.png"
    Image.fromarray(frame("K", np.random.default_rng(5))).save(picture)
    code, said, _ = run("predict", "--model", out, "--json", picture, capsys=capsys)
    assert code == 0
    assert set(json.loads(said)["probabilities"]) == set(NEW_LABELS)


def test_same_examples_give_the_same_hash_and_weights(trained01, examples, tmp_path, capsys):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    for out in (a, b):
        assert run("teach", "--model", trained01.path, "--examples", examples, "--out", out, capsys=capsys)[0] == 0
    assert load_bundle(a).meta["weights_sha256"] == load_bundle(b).meta["weights_sha256"]
    assert load_bundle(a).meta["provenance"]["examples"] == load_bundle(b).meta["provenance"]["examples"]
    Image.fromarray(frame("A", np.random.default_rng(3))).save(examples / "A" / "extra.png")
    assert run("teach", "--model", trained01.path, "--examples", examples, "--out", a, "--force",
               capsys=capsys)[0] == 0
    assert load_bundle(a).meta["provenance"]["examples"]["sha256"] != \
        load_bundle(b).meta["provenance"]["examples"]["sha256"]


def test_sub_folders_and_hidden_files_are_not_examples(trained01, examples, tmp_path, capsys):
    (examples / "A" / "seen").mkdir()
    (examples / "A" / "seen" / "notes.txt").write_text("what the network saw")
    (examples / "A" / ".00.png.tmp").write_bytes(b"half a picture")
    (examples / ".trash").mkdir()
    out = tmp_path / "taught.npz"
    code, said, err = run("teach", "--model", trained01.path, "--examples", examples, "--out", out, capsys=capsys)
    assert (code, err) == (0, "") and "A (10)" in said


def no_hidden_layer(path):
    bundle = make_bundle([{"type": "flatten"}, {"type": "dense", "units": 2}, {"type": "softmax"}],
                         input_shape=(32, 32, 1))
    return save_bundle(bundle, path)


def paper(path):
    """A picture of blank paper: light, a gentle gradient and grain, no ink."""
    rng = np.random.default_rng(1)
    grey = 200 + np.linspace(0, 20, 160)[None, :] + rng.normal(0, 2, (120, 160))
    Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).save(path)


BAD_EXAMPLES = {  # name -> (change to a good examples folder, exit code, words in the message)
    "one example": (lambda root: [p.unlink() for p in sorted((root / "K").iterdir())[1:]], 1,
                    ["label 'K' has 1 example", "at least 2"]),
    "no ink": (lambda root: paper(root / "R" / "03.png"), 1, ["R/03.png", "no card to learn from", "no ink"]),
    "unknown type": (lambda root: (root / "A" / "notes.txt").write_text("x"), 1, ["notes.txt", "unknown file type"]),
    "odd label": (lambda root: (root / "K").rename(root / "K and R"), 1, ["'K and R'", "letters, digits"]),
    "odd label characters": (lambda root: (root / "K").rename(root / "K$"), 1, ["'K$'"]),
    "not a picture": (lambda root: (root / "A" / "05.png").write_bytes(b"not a png"), 1, ["A/05.png", "not an image"]),
    "one label": (lambda root: [(root / l).rename(root / f".{l}") for l in ("K", "R")], 1,
                  ["at least 2 label folders"]),
}


@pytest.mark.parametrize("case", BAD_EXAMPLES)
def test_bad_examples_are_one_line_and_nothing_is_written(case, trained01, examples, tmp_path, capsys):
    change, expected_code, words = BAD_EXAMPLES[case]
    change(examples)
    out = tmp_path / "taught.npz"
    code, said, err = run("teach", "--model", trained01.path, "--examples", examples, "--out", out, capsys=capsys)
    assert code == expected_code and said == ""
    assert err.count("\n") == 1 and err.startswith("cardcam: ") and "Traceback" not in err
    for word in words:
        assert word in err
    assert not out.exists() and list(tmp_path.glob(".taught.npz*")) == []


def test_a_base_with_no_hidden_layer_is_refused(examples, tmp_path, capsys):
    base = no_hidden_layer(tmp_path / "flat.npz")
    code, _, err = run("teach", "--model", base, "--examples", examples, "--out", tmp_path / "t.npz", capsys=capsys)
    assert code == 2 and err.count("\n") == 1
    assert "no hidden layer to keep" in err and str(base) in err
    assert not (tmp_path / "t.npz").exists()


def test_a_base_that_is_not_a_bundle_is_refused(examples, tmp_path, capsys):
    base = tmp_path / "base.npz"
    base.write_bytes(b"PK not really")
    code, _, err = run("teach", "--model", base, "--examples", examples, "--out", tmp_path / "t.npz", capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and str(base) in err


def test_an_existing_out_is_kept_unless_forced(trained01, examples, tmp_path, capsys):
    out = tmp_path / "taught.npz"
    out.write_bytes(b"the user's file")
    code, _, err = run("teach", "--model", trained01.path, "--examples", examples, "--out", out, capsys=capsys)
    assert code == 2 and "exists" in err and "--force" in err and err.count("\n") == 1
    assert out.read_bytes() == b"the user's file"
    assert run("teach", "--model", trained01.path, "--examples", examples, "--out", out, "--force",
               capsys=capsys)[0] == 0
    assert load_bundle(out).labels == list(NEW_LABELS)


@pytest.mark.parametrize("name", ["taught.png", "folder"])
def test_out_must_name_a_bundle_file(name, trained01, examples, tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    code, _, err = run("teach", "--model", trained01.path, "--examples", examples, "--out", tmp_path / name,
                       capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and f"--out {tmp_path / name}" in err


def test_a_full_disk_while_saving_keeps_the_old_bundle(trained01, examples, tmp_path):
    """The file size limit (RLIMIT_FSIZE) makes the write fail as a full disk does, for real."""
    out = tmp_path / "taught.npz"
    save_bundle(load_bundle(trained01.path), out)
    before = out.read_bytes()

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    done = subprocess.run([sys.executable, "-m", "device", "teach", "--model", str(trained01.path),
                           "--examples", str(examples), "--out", str(out), "--force"],
                          cwd=REPO, capture_output=True, text=True, preexec_fn=small_files, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"{out}: cannot write the bundle: File too large" in done.stderr
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["examples", "taught.npz"]  # no temporary file left


def test_examples_go_through_the_bundles_preprocessing(trained01, examples):
    base = load_bundle(trained01.path)
    read = teach.read_examples(examples, base)
    first = preprocess(load_image(examples / "A" / "00.png"), base.preprocess, base.input_shape)
    np.testing.assert_array_equal(read.inputs[0], first.input)
    assert read.labels == list(NEW_LABELS) and list(read.targets[:10]) == [0] * 10


@pytest.mark.laptop
def test_cardcam_train_reports_and_exports_a_taught_bundle(trained01, examples, tmp_path, capsys):
    """The laptop side takes a taught bundle like any other; its task names the examples folder,
    so report and export judge and calibrate on the examples without being told."""
    from conftest import keras_available
    from training import cli as train_cli

    pytest.importorskip("matplotlib", reason="cardcam-train report needs the train extra (matplotlib)")

    out = tmp_path / "taught.npz"
    assert run("teach", "--model", trained01.path, "--examples", examples, "--out", out, capsys=capsys)[0] == 0
    assert load_bundle(out).meta["task"] == f"folder:{examples.resolve()}"
    assert train_cli.main(["report", str(out)]) == 0
    assert (tmp_path / "taught.report" / "report.html").is_file()
    if not keras_available():
        pytest.skip("no Keras here to export to TFLite")
    assert train_cli.main(["export", "--model", str(out)]) == 0
    exported = load_bundle(out)
    assert exported.tflite is not None and exported.labels == list(NEW_LABELS)
    code, said, _ = run("predict", "--model", out, "--runtime", "tflite", examples / "K" / "00.png", capsys=capsys)
    assert code == 0 and ": K (" in said


KEPT = {  # base architecture (input 16 x 16 x 1) -> the taught network's layers before its new output layer
    "conv: to the flatten, before the last ReLU": (
        [{"type": "conv2d", "filters": 2, "kernel": 3, "padding": "same"}, {"type": "relu"},
         {"type": "maxpool2d", "size": 2}, {"type": "dropout", "rate": 0.1}, {"type": "flatten"},
         {"type": "dense", "units": 4}, {"type": "relu"}, {"type": "dense", "units": 2}, {"type": "softmax"}],
        [0, 2, 3, 4]),
    "a wide flatten is max-pooled first": (
        [{"type": "conv2d", "filters": 8, "kernel": 3, "padding": "same"}, {"type": "batchnorm"}, {"type": "relu"},
         {"type": "flatten"}, {"type": "dense", "units": 2}, {"type": "softmax"}],
        [0, 1, None, 3]),
    "no conv: to the last hidden dense layer, before its ReLU": (
        [{"type": "flatten"}, {"type": "dense", "units": 8}, {"type": "relu"}, {"type": "dropout", "rate": 0.1},
         {"type": "dense", "units": 2}, {"type": "softmax"}],
        [0, 1, 3]),
}


@pytest.mark.parametrize("case", KEPT)
def test_kept_layers(case):
    architecture, expected = KEPT[case]
    base = make_bundle(architecture, input_shape=(16, 16, 1))
    kept, origin = teach.kept_layers(base)
    assert origin == expected
    assert kept == [base.architecture[i] if i is not None else {"type": "maxpool2d", "size": 2} for i in origin]
    taught = teach._network(base, ["x", "y", "z"])
    features = teach.features(base, np.random.default_rng(0).random((3, 16, 16, 1), np.float32))
    assert features.shape[1] <= teach.MAX_FEATURES and taught.weights[f"L{len(kept)}.kernel"].shape == (
        features.shape[1], 3)


def test_variants_move_turn_and_scale_the_examples():
    x = np.zeros((2, 16, 16, 1), np.float32)
    x[:, 4:12, 7:9] = 1  # an upright bar
    np.testing.assert_allclose(teach.warped(x, 0.0, 1.0), x, atol=1e-6)
    turned = teach.warped(x, 90.0, 1.0)[0, :, :, 0]
    assert turned[7:9, 4:12].mean() > 0.9 and turned[4:6, 7:9].sum() == 0  # lying down
    assert teach.warped(x, 0.0, 1.1).sum() > x.sum() > teach.warped(x, 0.0, 0.9).sum()
    copies = teach.variants(x)
    assert len(copies) == teach.VARIANTS * len(x)
    np.testing.assert_array_equal(copies[:2], x)
    np.testing.assert_array_equal(teach.variants(x, 2)[2:], teach.warped(x, *teach.TURNS[0]))
    first_shift = 2 * (1 + len(teach.TURNS))
    np.testing.assert_array_equal(copies[first_shift:first_shift + 2], np.roll(x, teach.VARIANT_SHIFTS[0], axis=(1, 2)))
    np.testing.assert_array_equal(copies[-2:], teach.thicker(x))


def test_thicker_strokes_grow_a_pixel_all_round():
    x = np.zeros((1, 8, 8, 1), np.float32)
    x[0, 3, 4] = 1.0   # a dot
    x[0, 0, 0] = 0.5   # a fainter one in the corner: the border is background
    out = teach.thicker(x)[0, :, :, 0]
    assert out[2:5, 3:6].min() == 1.0 and out.sum() == 9 + 4 * 0.5
    assert out[0:2, 0:2].tolist() == [[0.5, 0.5], [0.5, 0.5]]
    assert x.sum() == 1.5  # the input is left as it was


def test_a_heavy_base_or_many_examples_take_fewer_variants():
    base = make_bundle([{"type": "conv2d", "filters": 2, "kernel": 3, "padding": "same"}, {"type": "relu"},
                        {"type": "flatten"}, {"type": "dense", "units": 2}, {"type": "softmax"}],
                       input_shape=(16, 16, 1))
    assert teach.multiply_adds(base) == 16 * 16 * 3 * 3 * 2
    assert teach.variant_count(base, 60) == teach.VARIANTS
    many = teach.NETWORK_BUDGET // teach.multiply_adds(base) // 3
    assert teach.variant_count(base, many) == 3 and teach.variant_count(base, 10 * many) == 1


def test_the_fit_is_the_same_with_fewer_examples_than_features():
    """With fewer examples than features the fit runs on X X' (the dual); repeating every
    example changes neither the loss nor the weights, but makes it run on the features."""
    rng = np.random.default_rng(0)
    targets = np.repeat(np.arange(3), 8)
    feats = rng.normal(size=(24, 40)) + targets[:, None] * rng.normal(size=40)
    dual = teach.fit_output(feats, targets, 3)
    primal = teach.fit_output(np.concatenate([feats, feats]), np.concatenate([targets, targets]), 3)
    np.testing.assert_allclose(dual[0], primal[0], atol=1e-5)
    np.testing.assert_allclose(dual[1], primal[1], atol=1e-5)
    assert (np.argmax(feats @ dual[0] + dual[1], axis=1) == targets).all()
