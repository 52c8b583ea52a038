"""Training reports: `cardcam-train train` draws the pictures beside the model, they are real
pictures of the right things, `cardcam-train report` redraws what is missing and writes one
self-contained HTML page that a real browser shows without an error or a failed request."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from device.bundle import load_bundle
from training.report import PICTURES, block_outputs, report_dir

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """smiley:30 (60 cards), lenet5, 2 epochs, through the train command as a user runs it."""
    from training.cli import main

    out = tmp_path_factory.mktemp("report") / "faces.npz"
    assert main(["train", "--task", "smiley:30", "--arch", "lenet5", "--epochs", "2", "--jitter", "0", "--camera", "0",
                 "--processes", "1", "--out", str(out), "--quiet"]) == 0
    return out


def _picture(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG", path
        return np.asarray(im.convert("L"), np.float32)


def test_train_writes_every_picture_and_the_metadata(trained):
    folder = report_dir(trained)
    assert folder == trained.parent / "faces.report"
    assert sorted(p.name for p in folder.iterdir()) == sorted([f for f, _ in PICTURES.values()] + ["meta.json"])
    for file, _ in PICTURES.values():
        pixels = _picture(folder / file)
        assert pixels.shape[0] >= 150 and pixels.shape[1] >= 300, (file, pixels.shape)
        assert pixels.std() > 10 and (pixels < 128).mean() > 0.005, file  # drawn on, not blank
    record = json.loads((folder / "meta.json").read_text())
    bundle = load_bundle(trained)
    assert record["meta"]["weights_sha256"] == bundle.meta["weights_sha256"]
    # The report judged the validation split itself, with the Pi's runtime: the same figures
    # the trainer recorded for the kept epoch, and every validation card in its confusion matrix.
    p = bundle.meta["provenance"]
    clean, camera = record["validation"]["clean"], record["validation"]["camera"]
    assert clean["pictures"] == camera["pictures"] == p["val_cards"]
    assert clean["accuracy"] == pytest.approx(p["val_accuracy"], abs=0.02)
    assert camera["accuracy"] == pytest.approx(p["val_camera_accuracy"], abs=0.02)
    assert np.array(clean["confusion"]).sum() == p["val_cards"] and len(clean["confusion"]) == 2
    assert [r["epoch"] for r in record["epochs"]] == [1, 2]


def test_feature_maps_are_the_networks_own_activations(trained):
    """What the picture shows after block 1 is conv -> ReLU -> pool of the input, by hand."""
    bundle = load_bundle(trained)
    x = np.random.default_rng(0).random(bundle.input_shape, dtype=np.float32)
    blocks = block_outputs(bundle, x)
    assert [name for name, _ in blocks] == ["conv block 1", "conv block 2"]
    assert blocks[0][1].shape == (14, 14, 6) and blocks[1][1].shape == (5, 5, 16)
    from device import nn

    k, b = bundle.weights["L0.kernel"], bundle.weights["L0.bias"]
    expected = nn.maxpool2d(np.maximum(nn.conv2d(x[None], k, b, "valid"), 0), 2)[0]
    np.testing.assert_allclose(blocks[0][1], expected, rtol=1e-5, atol=1e-5)


def _browser():
    if not Path(CHROMIUM).exists() and not os.environ.get("CARDCAM_REQUIRE_BROWSER"):
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    return sync_playwright()


def test_report_page_is_self_contained_and_opens_cleanly(trained, tmp_path):
    # A copy of the model whose curves and mistakes pictures were lost: the command redraws them.
    model = tmp_path / "copy.npz"
    shutil.copy(trained, model)
    shutil.copy(trained.with_suffix(".train.jsonl"), model.with_suffix(".train.jsonl"))
    shutil.copytree(report_dir(trained), report_dir(model))
    for name in ("curves.png", "misclassified.png"):
        (report_dir(model) / name).unlink()
    proc = subprocess.run([sys.executable, "-m", "training", "report", str(model)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    page = report_dir(model) / "report.html"
    assert proc.stdout.strip() == f"wrote {page}"
    for name in ("curves.png", "misclassified.png"):
        assert _picture(report_dir(model) / name).std() > 10
    text = page.read_text()
    images = re.findall(r'<img src="([^"]*)"', text)
    assert len(images) == len(PICTURES) and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(?!data:)', text)  # nothing fetched from anywhere
    assert "cardcam-train train --task smiley:30" in text and "conv2d" in text

    # The page moves away from its folder and still shows everything.
    alone = tmp_path / "elsewhere" / "page.html"
    alone.parent.mkdir()
    shutil.move(page, alone)
    with _browser() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
        try:
            tab = browser.new_page()
            errors, failed, requests = [], [], []
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.on("requestfailed", lambda r: failed.append(r.url[:80]))
            tab.on("request", lambda r: requests.append(r.url[:80]))
            tab.goto(alone.as_uri(), wait_until="load")
            widths = tab.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : -1)")
            title = tab.title()
        finally:
            browser.close()
    assert errors == [] and failed == []
    assert all(not u.startswith(("http:", "https:")) for u in requests), requests
    assert len(widths) == len(PICTURES) and min(widths) > 100, widths
    assert title == "faces: training report"  # the model's own name, kept in the copy


def test_report_of_a_missing_or_broken_model_is_one_line(tmp_path):
    (tmp_path / "broken.npz").write_bytes(b"not a bundle")
    for name in ("missing.npz", "broken.npz"):
        proc = subprocess.run([sys.executable, "-m", "training", "report", str(tmp_path / name)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith(f"cardcam-train: {tmp_path / name}"), proc.stderr
    assert not report_dir(tmp_path / "missing.npz").exists()


def test_first_layer_picture_of_a_network_without_convs(bundle_factory, tmp_path):
    """A dense first layer is shown as what each unit looks for: its weight on each input pixel,
    in the picture's own layout (pixel (r, c) is flattened input r * width + c)."""
    from training.report import _first_weights, plot_filters

    arch = [{"type": "flatten"}, {"type": "dense", "units": 5}, {"type": "relu"}, {"type": "dense", "units": 2},
            {"type": "softmax"}]
    bundle = bundle_factory(arch, input_shape=(6, 8, 1))
    images, title = _first_weights(bundle)
    kernel = bundle.weights["L1.kernel"]
    assert images.shape == (5, 6, 8) and "5 dense units" in title
    for unit in range(5):
        for r, c in ((0, 0), (2, 7), (5, 3)):
            assert images[unit, r, c] == kernel[r * 8 + c, unit]
    plot_filters(bundle, tmp_path / "f.png")
    assert _picture(tmp_path / "f.png").std() > 10
