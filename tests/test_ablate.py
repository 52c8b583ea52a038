"""`cardcam-train ablate`: the variants are the changes they say, the grid trains for real (two
seeds, a worker pool), the table's numbers are sane and a network without its conv blocks does no
better than the whole one, finished runs are not redone, and a changed setting trains anew."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from training.ablate import automatic_variants, format_table, make_variant, plan_variants, summarise
from training.nets import ARCHS


def _marks_folder(root, per_class=150, size=96, seed=0):
    """A task where convolutions matter: one cross or one ring, anywhere inside a drawn frame.
    Preprocessing crops to the frame, so the mark's place varies; a dense layer must learn each
    place apart, a conv layer sees the same local shape everywhere."""
    rng = np.random.default_rng(seed)
    for label in ("cross", "ring"):
        (root / label).mkdir(parents=True)
        for n in range(per_class):
            im = Image.new("L", (size, size), 235)
            d = ImageDraw.Draw(im)
            d.rectangle((4, 4, size - 5, size - 5), outline=20, width=2)
            r = rng.uniform(12, 18)
            cx, cy = rng.uniform(10 + r, size - 10 - r, 2)
            if label == "cross":
                d.line((cx - r, cy - r, cx + r, cy + r), fill=20, width=3)
                d.line((cx - r, cy + r, cx + r, cy - r), fill=20, width=3)
            else:
                d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=20, width=3)
            im.save(root / label / f"{n:03d}.png")
    return root


def _ablate(*args):
    return subprocess.run([sys.executable, "-m", "training", "ablate", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """lenet5 on 300 marks cards: baseline and no-convs, 2 seeds each, 3 epochs, in 2 worker
    processes; pool9 cannot work on lenet5's shapes and must be reported as skipped."""
    root = tmp_path_factory.mktemp("ablate")
    data = _marks_folder(root / "marks")
    out = root / "out"
    args = ["--task", f"folder:{data}", "--arch", "lenet5", "--epochs", "3", "--batch-size", "16", "--jitter", "0",
            "--camera", "0", "--out", str(out)]
    proc = _ablate(*args, "--variants", "baseline,no-convs", "--variants", "pool9", "--runs", "2", "--jobs", "2")
    assert proc.returncode == 0, proc.stderr
    return out, args, proc


def _rows(out):
    with open(out / "ablation.csv", newline="") as f:
        return {r["variant"]: r for r in csv.DictReader(f)}


def test_table_columns_and_sane_numbers(grid):
    out, _, proc = grid
    rows = _rows(out)
    assert list(rows) == ["baseline", "no-convs", "pool9"]
    columns = ["variant", "description", "status", "reason", "parameters", "runs", "val_accuracy_mean",
               "val_accuracy_std", "val_camera_accuracy_mean", "val_camera_accuracy_std", "train_seconds_mean",
               "train_seconds_std", "inference_ms_mean", "inference_ms_std"]
    assert list(next(iter(rows.values()))) == columns
    # Counted by hand from lenet5's shapes (32x32x1 in, 2 classes), weights + biases layer by layer:
    # conv 5x5x1x6, conv 5x5x6x16 (a 5x5x16 map: 400 numbers), dense 400x120, 120x84, 84x2.
    by_hand = {"baseline": (5 * 5 * 1 * 6 + 6) + (5 * 5 * 6 * 16 + 16) + (400 * 120 + 120) + (120 * 84 + 84)
               + (84 * 2 + 2),
               "no-convs": (1024 * 120 + 120) + (120 * 84 + 84) + (84 * 2 + 2)}
    assert by_hand["baseline"] == 61026
    for name in ("baseline", "no-convs"):
        r = rows[name]
        assert r["status"] == "ok" and r["runs"] == "2", r
        assert 0.0 <= float(r["val_accuracy_mean"]) <= 1.0 and 0.0 <= float(r["val_camera_accuracy_mean"]) <= 1.0
        for field in ("val_accuracy_std", "val_camera_accuracy_std", "train_seconds_std", "inference_ms_std"):
            assert float(r[field]) >= 0.0, (name, field)
        assert float(r["train_seconds_mean"]) > 0 and float(r["inference_ms_mean"]) > 0
        assert int(r["parameters"]) == by_hand[name], name
    # The lesson's point: the conv blocks are what reads a mark wherever it is.
    assert float(rows["baseline"]["val_accuracy_mean"]) >= float(rows["no-convs"]["val_accuracy_mean"]) + 0.05, rows
    assert rows["pool9"]["status"] == "skipped" and "does not fit" in rows["pool9"]["reason"]
    # Every run is in the results file: two seeds per trainable variant, the std from them.
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted((r["variant"], r["seed"]) for r in runs) == [("baseline", 0), ("baseline", 1), ("no-convs", 0),
                                                                ("no-convs", 1)]
    base = [r["val_accuracy"] for r in runs if r["variant"] == "baseline"]
    assert float(rows["baseline"]["val_accuracy_mean"]) == pytest.approx(np.mean(base), abs=1e-6)
    assert float(rows["baseline"]["val_accuracy_std"]) == pytest.approx(np.std(base, ddof=1), abs=1e-6)
    # The terminal table, the Markdown file and one progress bar over the whole grid.
    header = next(l for l in proc.stdout.splitlines() if l.startswith("variant"))
    assert header.split() == ["variant", "weights", "val", "accuracy", "camera", "accuracy", "train", "s", "infer",
                              "ms", "runs"]
    assert "pool9" in proc.stdout and "skipped: layer" in proc.stdout
    assert "4 runs trained, 0 reused" in proc.stdout
    assert "4/4" in proc.stderr and proc.stderr.count("ablate:") >= 1
    assert "Traceback" not in proc.stderr and "leaked" not in proc.stderr  # the worker pool shut down cleanly
    md = (out / "ablation.md").read_text().splitlines()
    assert md[0].startswith("# Ablation: lenet5 on folder:")
    table = [l for l in md if l.startswith("| ")]
    assert table[0].startswith("| variant | weights | val accuracy |") and len(table) == 4
    assert "\u00b1" in table[1]


def test_plot_is_a_real_picture(grid):
    out = grid[0]
    with Image.open(out / "ablation.png") as im:
        im.load()
        assert im.format == "PNG" and im.width >= 600 and im.height >= 400
        pixels = np.asarray(im.convert("L"), np.float32)
    assert pixels.std() > 10  # axes, points and labels, not a blank canvas
    assert (pixels < 100).mean() > 0.005


def test_finished_runs_are_not_redone_and_changed_settings_train_anew(grid):
    out, settings, _ = grid
    args = [*settings, "--variants", "baseline,no-convs,pool9", "--runs", "2"]  # one process now: same runs
    results = out / "runs.jsonl"
    lines = results.read_text().splitlines()
    # All done: nothing trains and the results file is untouched.
    proc = _ablate(*args)
    assert proc.returncode == 0 and "0 runs trained, 4 reused" in proc.stdout, proc.stdout + proc.stderr
    assert results.read_text().splitlines() == lines
    # Interrupted after two runs (the third line cut short): only the missing two are trained,
    # and with their fixed seeds they come out as before.
    results.write_text("\n".join(lines[:2]) + "\n" + lines[2][:25])
    proc = _ablate(*args)
    assert proc.returncode == 0 and "2 runs trained, 2 reused" in proc.stdout, proc.stdout + proc.stderr
    again = [json.loads(l) for l in results.read_text().splitlines() if l.startswith("{") and l.endswith("}")]
    assert len(again) == 4
    before = {(r["variant"], r["seed"]): r["val_accuracy"] for r in map(json.loads, lines)}
    assert {(r["variant"], r["seed"]): r["val_accuracy"] for r in again} == before
    # Another learning rate is another experiment: not answered from the old runs.
    proc = _ablate(*settings, "--variants", "baseline", "--runs", "1", "--lr", "0.001")
    assert proc.returncode == 0 and "1 runs trained, 0 reused" in proc.stdout, proc.stdout + proc.stderr
    assert "from other settings or variants left out" in proc.stdout
    assert len(results.read_text().splitlines()) == 6  # 4 + the cut line + the new run
    assert list(_rows(out)) == ["baseline"] and _rows(out)["baseline"]["runs"] == "1"


def test_variants_are_the_changes_they_name():
    arch = ARCHS["dwengo"](2)
    layers, shape = arch["layers"], arch["input_shape"]
    names = automatic_variants(layers)
    assert names == ["baseline", "no-conv1", "no-conv2", "no-conv3", "no-conv4", "no-conv5", "no-convs",
                     "no-batchnorm", "no-dropout", "half-filters", "double-filters",
                     "no-pool1", "no-pool2", "no-pool3", "no-pool4", "no-pool5"]
    v = {x.name: x for x in plan_variants(layers, shape)}
    assert all(not x.skipped for x in v.values())

    def filters(name):
        return [s["filters"] for s in v[name].layers if s["type"] == "conv2d"]

    def count(name, kind):
        return sum(s["type"] == kind for s in v[name].layers)

    assert filters("baseline") == [1, 2, 4, 8, 16] and v["baseline"].layers == layers
    assert filters("no-conv3") == [1, 2, 8, 16] and count("no-conv3", "maxpool2d") == 4
    assert count("no-convs", "conv2d") == 0 and v["no-convs"].layers[0]["type"] == "flatten"
    assert count("no-batchnorm", "batchnorm") == 0 and count("no-batchnorm", "conv2d") == 5
    assert count("no-dropout", "dropout") == 0 and count("no-dropout", "dense") == 2
    assert filters("half-filters") == [1, 1, 2, 4, 8] and filters("double-filters") == [2, 4, 8, 16, 32]
    assert count("no-pool2", "maxpool2d") == 4 and count("no-pool2", "conv2d") == 5
    combined = make_variant("no-batchnorm+no-dropout+kernel5", layers, shape)
    assert {s["type"] for s in combined.layers} == {"conv2d", "relu", "maxpool2d", "flatten", "dense", "softmax"}
    assert {s["kernel"] for s in combined.layers if s["type"] == "conv2d"} == {5}
    # A shape that cannot work is a skipped variant with shape inference's reason; a name that
    # says nothing about this network is an error naming it.
    skipped = make_variant("pool3", layers, shape)
    assert "does not fit" in skipped.skipped
    table = format_table(summarise([skipped], {}, {})).splitlines()
    assert table[0].split()[0] == "variant" and table[2] == f"pool3    skipped: {skipped.skipped}"
    for bad, message in (("no-conv6", "conv blocks 1..5"), ("wider", "unknown variant 'wider'")):
        with pytest.raises(ValueError, match=message):
            make_variant(bad, layers, shape)


def test_a_bad_variant_name_is_one_line_before_any_work(tmp_path):
    proc = _ablate("--arch", "lenet5", "--variants", "baseline,no-conv7", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "cardcam-train: variant 'no-conv7': the network has conv blocks 1..2"
    assert not (tmp_path / "x").exists()
