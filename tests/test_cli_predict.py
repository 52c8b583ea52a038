"""`cardcam predict --json` and `cardcam-train evaluate`, run as real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from device.bundle import load_bundle
from device.preprocess import load_image, preprocess
from device.runtime import make_runtime


def run(repo, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", *args], cwd=repo, capture_output=True, text=True, timeout=timeout)


def assert_clean_failure(result, *must_name):
    """Exit 2, one line on stderr naming what was wrong, no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in must_name:
        assert text in lines[0], lines[0]


def save_card(card: np.ndarray, path, scale=4):
    """A 28x28 card saved larger, like a photo of a card cropped close."""
    Image.fromarray(card).resize((28 * scale, 28 * scale), Image.Resampling.BILINEAR).save(path)
    return path


@pytest.fixture(scope="module")
def pictures(trained01, tmp_path_factory):
    """A "0" and a "1" from the model's validation cards, a blank card, a text file named .png,
    and a file that does not exist."""
    from training.data import split

    cards = trained01.cards
    _, val = split(cards)
    folder = tmp_path_factory.mktemp("pictures")
    zero = save_card(cards.cards[next(i for i in val if cards.labels[i] == 0)], folder / "zero.png")
    one = save_card(cards.cards[next(i for i in val if cards.labels[i] == 1)], folder / "one.jpg")
    blank = folder / "blank.png"  # a blank card as a camera sees it: paper with grain, lit unevenly
    grain = np.random.default_rng(0).normal(0, 2.0, (90, 120)) + np.linspace(225, 240, 120)
    Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8)).save(blank)
    text = folder / "notes.png"
    text.write_text("shopping list: milk\n")
    return {"zero": zero, "one": one, "blank": blank, "text": text, "missing": folder / "missing.png"}


def test_predict_json_one_record_per_file_in_order(repo, trained01, pictures):
    order = ["zero", "blank", "text", "one", "missing"]
    files = [str(pictures[k]) for k in order]
    result = run(repo, "device", "predict", "--model", str(trained01.path), "--json", *files)
    assert result.returncode == 1, result.stderr  # some files failed
    assert "Traceback" not in result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["file"] for r in records] == files
    by_name = dict(zip(order, records))
    labels = trained01.bundle.labels
    runtime = make_runtime(load_bundle(trained01.path), "numpy")
    for name, expected in (("zero", "0"), ("one", "1")):
        r = by_name[name]
        assert set(r) == {"file", "label", "confidence", "probabilities"}
        assert r["label"] == expected
        assert set(r["probabilities"]) == set(labels)
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert r["confidence"] == max(r["probabilities"].values())
        assert r["probabilities"][r["label"]] == r["confidence"]
        # The same numbers as the library gives in this process.
        prepared = preprocess(load_image(pictures[name]), trained01.bundle.preprocess, trained01.bundle.input_shape)
        probs = runtime.predict(prepared.input[None])[0]
        for label, p in zip(labels, probs):
            assert r["probabilities"][label] == pytest.approx(float(p), abs=2e-6)
    assert by_name["blank"]["label"] is None and "error" not in by_name["blank"]
    for name in ("text", "missing"):
        r = by_name[name]
        assert set(r) == {"file", "error"} and str(pictures[name]) in r["error"]
        assert "\n" not in r["error"]


def test_predict_exit_status_0_when_every_file_is_read(repo, trained01, pictures):
    files = [str(pictures[k]) for k in ("one", "blank", "zero")]
    result = run(repo, "device", "predict", "--model", str(trained01.path), "--json", "--runtime", "numpy", *files)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["label"] for r in records] == ["1", None, "0"]


def test_predict_refuses_pictures_with_nothing_in_them_one_line_each(repo, trained01, tmp_path):
    """Bad pictures (issue 19): unreadable, an absurd declared size, all black, all white, one
    colour. Each is one line naming the file, and the exit status is 1."""
    from test_preprocess import png_header_only

    bad = {"black.png": Image.new("L", (640, 480), 0), "white.png": Image.new("L", (640, 480), 255),
           "blue.png": Image.new("RGB", (640, 480), (40, 90, 200))}
    for name, picture in bad.items():
        picture.save(tmp_path / name)
    (tmp_path / "bomb.png").write_bytes(png_header_only(30000, 30000))
    (tmp_path / "notes.jpg").write_text("not a picture")
    files = [str(tmp_path / name) for name in [*bad, "bomb.png", "notes.jpg"]]
    result = run(repo, "device", "predict", "--model", str(trained01.path), *files)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(files)
    for path, line in zip(files, lines):
        assert line.startswith(f"{path}: error: "), line
    assert "one flat colour" in lines[0] and "one flat colour" in lines[2]
    assert "image is over 400 megapixels; the most accepted is 200 megapixels" in lines[3]


def test_predict_plain_output_one_line_per_file(repo, trained01, pictures):
    files = [str(pictures[k]) for k in ("zero", "text")]
    result = run(repo, "device", "predict", "--model", str(trained01.path), *files)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{files[0]}: 0 (") and lines[1].startswith(f"{files[1]}: error:")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped bytes", "missing"])
def test_predict_with_a_bad_model_exits_2_with_one_line(repo, trained01, pictures, tmp_path, damage):
    model = tmp_path / "model.npz"
    data = trained01.path.read_bytes()
    if damage == "garbage":
        model.write_bytes(b"\x00not a model at all" * 10)
    elif damage == "truncated":
        model.write_bytes(data[: len(data) // 2])
    elif damage == "flipped bytes":  # inside the compressed weights
        damaged = bytearray(data)
        for i in range(len(data) // 3, len(data) // 3 + 40):
            damaged[i] ^= 0x5A
        model.write_bytes(bytes(damaged))
    result = run(repo, "device", "predict", "--model", str(model), "--json", str(pictures["zero"]))
    assert_clean_failure(result, str(model))
    assert result.stdout == ""


@pytest.fixture(scope="module")
def folder_dataset(trained01, tmp_path_factory):
    """DIR/0/*.png and DIR/1/*.png: six validation cards of each label."""
    from training.data import split

    cards = trained01.cards
    _, val = split(cards)
    root = tmp_path_factory.mktemp("folder-data")
    for label in (0, 1):
        (root / str(label)).mkdir()
        for k, i in enumerate([i for i in val if cards.labels[i] == label][:6]):
            save_card(cards.cards[i], root / str(label) / f"card{k}.png", scale=2)
    return root


@pytest.mark.laptop
def test_evaluate_prints_accuracy(repo, trained01, folder_dataset):
    result = run(repo, "training", "evaluate", "--model", str(trained01.path), "--json", str(folder_dataset))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["count"] == 12 and report["split"] == "all"
    assert report["accuracy"] >= 0.9
    assert set(report["per_class"]) == {"0", "1"}
    assert np.array(report["confusion"]).sum() == 12
    plain = run(repo, "training", "evaluate", "--model", str(trained01.path), str(folder_dataset))
    assert plain.returncode == 0, plain.stderr
    assert f"accuracy {report['accuracy']:.2%}" in plain.stdout


@pytest.mark.laptop
@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_evaluate_with_a_bad_model_gives_one_line(repo, folder_dataset, tmp_path, damage):
    model = tmp_path / "model.npz"
    if damage == "garbage":
        model.write_text("not a model")
    result = run(repo, "training", "evaluate", "--model", str(model), str(folder_dataset))
    assert_clean_failure(result, str(model))
