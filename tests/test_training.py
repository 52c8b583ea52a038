"""The trainer: reproducible, learns, logs and records where a model came from; the optimisers
descend; folder data loads or is refused naming the file or folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from device.bundle import load_bundle, weights_sha256
from device.runtime import make_runtime
from training.data import DataError, load_folder, split
from training.layers import softmax_cross_entropy
from training.nets import ARCHS, Network
from training.optim import SGD, Adam
from training.trainer import TrainConfig, as_float, make_inputs, train, validation_inputs

from conftest import blank_paper


# --- reproducibility -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def few_cards(mnist01_cards):
    idx = np.sort(np.random.default_rng(2).choice(len(mnist01_cards), 50, replace=False))
    return mnist01_cards.subset(idx)


def _train_small(cards, out, seed):
    cfg = TrainConfig(task="digits01", arch="lenet5", epochs=2, seed=seed, jitter_variants=0,
                      camera_variants=1, processes=1)
    return train(cfg, out, command="pytest", progress=False, cards=cards, data_description="50 MNIST 0/1 cards")


def test_same_seed_same_weights_other_seed_other_weights(few_cards, tmp_path):
    a = _train_small(few_cards, tmp_path / "a.npz", seed=5)
    b = _train_small(few_cards, tmp_path / "b.npz", seed=5)
    c = _train_small(few_cards, tmp_path / "c.npz", seed=6)
    assert set(a.weights) == set(b.weights) == set(c.weights)
    for name in a.weights:
        assert np.array_equal(a.weights[name], b.weights[name]), name
    assert a.meta["weights_sha256"] == b.meta["weights_sha256"]
    assert any(not np.array_equal(a.weights[n], c.weights[n]) for n in a.weights)
    # The saved files hold exactly what train returned.
    loaded = load_bundle(tmp_path / "a.npz")
    for name in a.weights:
        np.testing.assert_array_equal(loaded.weights[name], a.weights[name])


def test_inputs_do_not_depend_on_the_number_of_processes(few_cards):
    from device.preprocess import PreprocessSettings

    jobs = [(i, kind, v) for i in range(len(few_cards)) for kind, v in (("clean", 0), ("jitter", 1), ("jitter", 2))]
    jobs += [(i, "camera", 100) for i in range(10)]
    jobs += [(i, "jitter", 3) for i in range(len(few_cards))]
    assert len(jobs) > 200
    one, kept1 = make_inputs(few_cards.cards, jobs, PreprocessSettings(), (32, 32, 1), seed=3, processes=1)
    two, kept2 = make_inputs(few_cards.cards, jobs, PreprocessSettings(), (32, 32, 1), seed=3, processes=2)
    assert np.array_equal(kept1, kept2) and np.array_equal(one, two)
    assert one.dtype == np.uint8 and one.shape[1:] == (32, 32, 1)
    assert len(kept1) >= 0.9 * len(jobs)


def test_validation_inputs_are_made_once_for_the_same_cards_split_and_settings(few_cards):
    """The report drawn right after training asks for the trainer's validation inputs again: it
    gets the same (read-only) arrays, not a second preprocessing run; other settings get new ones."""
    from device.preprocess import PreprocessSettings

    _, val_idx = split(few_cards, 0.3)
    first = validation_inputs(few_cards.cards, val_idx, PreprocessSettings(), (32, 32, 1), processes=1)
    assert validation_inputs(few_cards.cards, val_idx.copy(), PreprocessSettings(), (32, 32, 1)) is first
    assert not first["clean"][0].flags.writeable and not first["camera"][0].flags.writeable
    other = validation_inputs(few_cards.cards, val_idx, PreprocessSettings(fit=0.5), (32, 32, 1), processes=1)
    assert other is not first and not np.array_equal(other["clean"][0], first["clean"][0])


def test_train_refuses_an_out_folder_it_cannot_write_before_any_work(tmp_path, capsys):
    from training.cli import main

    (tmp_path / "a-file").write_text("x")
    out = tmp_path / "a-file" / "m.npz"
    assert main(["train", "--task", "digits01", "--epochs", "1", "--out", str(out)]) == 2
    assert capsys.readouterr() == ("", f"cardcam-train: --out {out}: {out.parent} is a file, not a folder\n")
    out = tmp_path / "a-file" / "sub" / "m.npz"
    assert main(["train", "--task", "digits01", "--epochs", "1", "--out", str(out)]) == 2
    assert capsys.readouterr() == ("", f"cardcam-train: --out {out}: cannot write to {out.parent}: Not a directory\n")


@pytest.mark.parametrize("args, message", [
    (["train", "--epochs", "0"], "argument --epochs: must be a whole number >= 1, got '0'"),
    (["train", "--batch-size", "x"], "argument --batch-size: must be a whole number >= 1, got 'x'"),
    (["train", "--lr", "-0.1"], "argument --lr: must be a number > 0, got '-0.1'"),
    (["train", "--camera", "-1"], "argument --camera: must be a whole number >= 0, got '-1'"),
    (["ablate", "--runs", "0"], "argument --runs: must be a whole number >= 1, got '0'"),
    (["export", "--model", "m.npz", "--count", "0"], "argument --count: must be a whole number >= 1, got '0'"),
    (["train", "--seed", "-1"], "argument --seed: must be a whole number >= 0, got '-1'"),
    (["deploy", "--model", "m.npz", "--host", "pi", "--port", "0"], "argument --port: must be a whole number in 1..65535, got '0'"),
    (["deploy", "--model", "m.npz", "--host", "pi", "--timeout", "-1"], "argument --timeout: must be a number of seconds >= 0, got '-1'"),
])
def test_counts_and_rates_are_checked_before_any_work(args, message, capsys):
    """--epochs 0 used to prepare a minute of data, then stop with a traceback."""
    from training.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(message)


# --- a small real run ------------------------------------------------------------------------

def test_small_run_reaches_accuracy(trained01):
    """lenet5, 600 MNIST 0/1 cards, 3 epochs: at least 97% on the validation cards."""
    p = trained01.bundle.meta["provenance"]
    assert p["val_accuracy"] >= 0.97
    # Checked independently: the saved model through the Pi's runtime on the validation cards.
    bundle = load_bundle(trained01.path)
    cards = trained01.cards
    _, val = split(cards)
    x, kept = make_inputs(cards.cards, [(int(i), "clean", 0) for i in val], bundle.preprocess, bundle.input_shape,
                          seed=0, processes=1)
    assert len(kept) >= 0.95 * len(val)
    probs = make_runtime(bundle, "numpy").predict(as_float(x))
    accuracy = float((probs.argmax(axis=1) == cards.labels[val[kept]]).mean())
    assert accuracy >= 0.97
    assert accuracy == pytest.approx(p["val_accuracy"], abs=0.02)


def test_training_log_has_one_line_per_epoch(trained01):
    log = trained01.path.with_suffix(".train.jsonl")
    assert log.parent == trained01.path.parent
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    keys = {"epoch", "lr", "seconds", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_camera_accuracy"}
    for r in records:
        assert keys <= set(r), set(r)
        assert 0.0 <= r["val_accuracy"] <= 1.0 and r["train_loss"] > 0
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    best = trained01.bundle.meta["provenance"]["best_epoch"]
    assert records[best - 1]["val_accuracy"] == trained01.bundle.meta["provenance"]["val_accuracy"]


def test_saved_bundle_records_provenance(trained01):
    bundle = load_bundle(trained01.path)
    p = bundle.meta["provenance"]
    for key in ("data", "command", "seed", "date", "val_accuracy"):
        assert key in p, key
    assert p["data"] == "600 MNIST 0/1 cards (tests)" and p["command"] == "pytest trained01" and p["seed"] == 0
    assert p["date"].startswith("20") and "T" in p["date"]
    assert bundle.meta["weights_sha256"] == weights_sha256(bundle.weights)
    assert bundle.labels == ["0", "1"] and bundle.input_shape == (32, 32, 1)
    assert bundle.meta["architecture"] == ARCHS["lenet5"](2)["layers"]


# --- optimisers ------------------------------------------------------------------------------

TOY = [{"type": "flatten"}, {"type": "dense", "units": 8}, {"type": "relu"}, {"type": "dense", "units": 2},
       {"type": "softmax"}]


def _toy_problem():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 2, 2, 1)).astype(np.float32)
    y = (x[:, 0, 0, 0] + x[:, 1, 1, 0] > 0).astype(np.int64)
    return Network(TOY, (2, 2, 1), np.random.default_rng(1)), x, y


@pytest.mark.parametrize("make", [lambda net: SGD(net, lr=0.05, momentum=0.9), lambda net: Adam(net, lr=0.01)],
                         ids=["sgd-momentum", "adam"])
def test_optimiser_reduces_the_loss(make):
    net, x, y = _toy_problem()
    opt = make(net)
    first = softmax_cross_entropy(net.logits(x), y)[0]
    for _ in range(60):
        net.loss_and_grads(x, y)
        opt.step()
    last = softmax_cross_entropy(net.logits(x), y)[0]
    assert last < 0.5 * first, (first, last)
    assert (net.predict(x).argmax(axis=1) == y).mean() >= 0.9


def test_sgd_first_step_is_minus_lr_times_gradient():
    net, x, y = _toy_problem()
    before = {k: layer.params[n].copy() for k, layer, n in net.trainables()}
    net.loss_and_grads(x, y)
    grads = {k: layer.grads[n].copy() for k, layer, n in net.trainables()}
    SGD(net, lr=0.1, momentum=0.9).step()
    for k, layer, n in net.trainables():
        np.testing.assert_allclose(layer.params[n], before[k] - 0.1 * grads[k], rtol=1e-6, atol=1e-7)


def test_adam_first_step_moves_each_parameter_by_about_lr():
    net, x, y = _toy_problem()
    before = {k: layer.params[n].copy() for k, layer, n in net.trainables()}
    net.loss_and_grads(x, y)
    grads = {k: layer.grads[n].copy() for k, layer, n in net.trainables()}
    Adam(net, lr=0.01).step()
    for k, layer, n in net.trainables():
        step = layer.params[n] - before[k]
        big = np.abs(grads[k]) > 1e-3  # Adam's first step is lr * sign(gradient) (eps aside)
        assert big.any()
        np.testing.assert_allclose(step[big], -0.01 * np.sign(grads[k][big]), rtol=1e-2)


# --- folder data -----------------------------------------------------------------------------

def _write_folder(root, counts={"cat": 2, "dog": 3}):
    for label, n in counts.items():
        (root / label).mkdir(parents=True)
        for k in range(n):
            im = Image.new("L", (40, 30), 230)
            im.paste(20, (10 + k, 8, 20 + k, 22))
            im.save(root / label / f"{k}.png")
    return root


def test_load_folder(tmp_path):
    root = _write_folder(tmp_path / "data")
    (root / "dog" / "readme.txt").write_text("not a picture, not an image suffix: skipped")
    (root / ".hidden").mkdir()
    cards = load_folder(root)
    assert cards.names == ["cat", "dog"]
    assert list(cards.labels) == [0, 0, 1, 1, 1]
    assert len(cards) == 5 and cards.sources == ["folder"] * 5
    for card in cards.cards:
        assert card.dtype == np.uint8 and card.shape == (30, 40)
        assert card[0, 0] == 230 and card[15, 15] == 20


def test_load_folder_empty_label_folder(tmp_path):
    root = _write_folder(tmp_path / "data")
    (root / "emu").mkdir()
    with pytest.raises(DataError, match=str(root / "emu") + ": no images"):
        load_folder(root)


def test_load_folder_corrupt_image(tmp_path):
    root = _write_folder(tmp_path / "data")
    bad = root / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=str(bad)):
        load_folder(root)


def test_load_folder_needs_two_labels(tmp_path):
    root = _write_folder(tmp_path / "data", {"cat": 2})
    with pytest.raises(DataError, match=str(root) + ": needs at least two label folders"):
        load_folder(root)
    with pytest.raises(DataError, match="not a folder"):
        load_folder(tmp_path / "nowhere")


def test_train_refuses_a_label_with_one_picture_in_one_line(tmp_path, capsys):
    """With one picture a label has none left to validate on: it used to train, then stop with
    'need at least one array to concatenate'."""
    from training.cli import main

    root = _write_folder(tmp_path / "data", {"cat": 1, "dog": 3})
    out = tmp_path / "m.npz"
    assert main(["train", "--task", f"folder:{root}", "--epochs", "1", "--processes", "1", "--out", str(out)]) == 2
    assert capsys.readouterr().err == ("cardcam-train: label 'cat' has 1 card; every label needs at least 2 "
                                       "(one or more are kept aside to validate the model)\n")
    assert not out.exists()


def test_train_refuses_pictures_with_no_glyph_to_find_in_one_line(tmp_path, capsys):
    """Blank paper: the validation cards give no input at all. It used to train an epoch, then
    stop with 'need at least one array to concatenate'."""
    from training.cli import main

    root = tmp_path / "data"
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for k in range(3):
            blank_paper((60, 40), seed=k).save(root / label / f"{k}.png")
    out = tmp_path / "m.npz"
    assert main(["train", "--task", f"folder:{root}", "--epochs", "1", "--camera", "0", "--jitter", "0",
                 "--processes", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cardcam-train: preprocessing found a glyph in 0 of 4 training pictures and 0 of 2 "
                          "validation cards: cards need dark ink on light paper") and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--preprocess", "wrok_size=64"], "--preprocess wrok_size=64: expected KEY=VALUE with KEY one of ink, work_size, "),
    (["--preprocess", "work_size=5"], "--preprocess: 'work_size' must be a number in [32, 640], got 5"),
    (["--task", "folder:"], "task 'folder:': name the folder, folder:DIR (DIR/<label>/*.png)"),
])
def test_train_settings_and_tasks_are_refused_naming_the_option(args, message, tmp_path, capsys):
    from training.cli import main

    assert main(["train", "--epochs", "1", "--out", str(tmp_path / "m.npz"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cardcam-train: " + message) and err.count("\n") == 1


def test_a_model_is_saved_under_its_task_by_default(tmp_path, monkeypatch):
    from training.cli import default_out

    (tmp_path / "my-cards").mkdir()
    monkeypatch.chdir(tmp_path / "my-cards")
    assert default_out("digits") == "models/digits.npz"
    assert default_out("smiley:4000") == "models/smiley.npz"
    assert default_out("folder:../my-cards/") == "models/my-cards.npz"
    assert default_out("folder:.") == "models/my-cards.npz"  # was models/.npz, a hidden file


@pytest.mark.parametrize("args", [
    ["train", "--task", "digits01", "--epochs", "1", "--out", "{folder}"],
    ["export", "--model", "never-read.npz", "--tflite", "{folder}"],
    ["report", "--out", "{folder}", "never-read.npz"],
    ["cards", "--out", "{folder}"],
    ["sheet", "make", "--labels", "a,b", "--out", "{folder}"],
], ids=lambda args: args[0] if args[0] != "sheet" else "sheet make")
def test_an_output_file_that_is_a_folder_is_refused_before_any_work(args, tmp_path, capsys):
    """`export --tflite DIR` said '.DIR.tmp: Is a directory', after rewriting the bundle;
    `train --out DIR` would have trained first and failed to save."""
    from training.cli import main

    flag = args[args.index("{folder}") - 1]
    assert main([a.format(folder=tmp_path) for a in args]) == 2
    assert capsys.readouterr().err == f"cardcam-train: {flag} {tmp_path}: is a folder; name the file to write in it\n"


@pytest.mark.parametrize("args, out", [
    (["report", "--out", "{file}/r.html", "never-read.npz"], "{file}/r.html"),
    (["cards", "--out", "{file}/c.pdf"], "{file}/c.pdf"),
    (["sheet", "make", "--labels", "a,b", "--out", "{file}/s.pdf"], "{file}/s.pdf"),
])
def test_an_output_that_cannot_be_written_is_named_as_given(args, out, tmp_path, capsys):
    """These named their temporary file ('.c.pdf.tmp: Not a directory')."""
    from training.cli import main

    (tmp_path / "a-file").write_text("x")
    fill = lambda text: text.format(file=tmp_path / "a-file")  # noqa: E731
    assert main([fill(a) for a in args]) == 2
    assert capsys.readouterr().err == f"cardcam-train: --out {fill(out)}: {tmp_path / 'a-file'} is a file, not a folder\n"
