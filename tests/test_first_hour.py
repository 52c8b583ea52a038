"""A new user's first hour (issue 21): cardcam-train installs, says what is missing in one line,
never replaces a model unless told to, keeps prepared inputs, stops cleanly on Ctrl-C, and the
doctor checks the frames for real. Every CLI here runs as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.laptop  # cardcam-train on the laptop, not the Pi

REPO = Path(__file__).resolve().parent.parent


def run(*args, cwd=REPO, prelude="", timeout=300, env=None):
    """python -m <args> (module first), with ``prelude`` run before it (to hide a package)."""
    code = f"{prelude}\nimport runpy, sys\nsys.argv = {list(args)!r}\nrunpy.run_module({args[0]!r}, run_name='__main__')"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def hide(*modules) -> str:
    """Code that makes importing these modules fail, as if they were not installed."""
    return "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)


def one_line(result, code=2) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def cards_folder(tmp_path_factory, mnist):
    """DIR/0 and DIR/1, eight MNIST cards each, saved larger like photos of cards."""
    root = tmp_path_factory.mktemp("first-hour") / "my_cards"
    for digit in (0, 1):
        (root / str(digit)).mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(mnist.labels == digit)[:8]):
            Image.fromarray(255 - mnist.images[i]).resize((112, 112), Image.Resampling.BILINEAR).save(
                root / str(digit) / f"card{k}.png")
    return root


QUICK = ["--epochs", "1", "--jitter", "0", "--camera", "0", "--quiet"]


# --- 1, 4: extras -------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["--help"], ["train", "--task", "digits01"], ["cache"]])
def test_a_missing_training_extra_is_one_line_naming_it(args):
    line = one_line(run("training", *args, prelude=hide("threadpoolctl")))
    assert "threadpoolctl" in line and "pip install 'cardcam[train]'" in line


def test_keras_missing_is_refused_before_any_work(cards_folder, tmp_path):
    result = run("training", "train", "--task", f"folder:{cards_folder}", "--trainer", "keras", "--out",
                 str(tmp_path / "k.npz"), prelude=hide("tensorflow", "keras"))
    assert "pip install 'cardcam[keras]'" in one_line(result)
    assert result.stdout == "" and not list(tmp_path.iterdir())  # no data prepared, nothing written


def test_sheet_cut_without_opencv_leaves_no_folder(tmp_path):
    photo = tmp_path / "page.png"
    Image.new("L", (300, 400), 255).save(photo)
    line = one_line(run("training", "sheet", "cut", "--out", str(tmp_path / "data"), str(photo), prelude=hide("cv2")))
    assert "cardcam[sheets]" in line and not (tmp_path / "data").exists()


def test_sheet_cut_with_no_usable_photo_leaves_no_folder(tmp_path):
    photo = tmp_path / "page.png"
    Image.new("L", (300, 400), 255).save(photo)
    result = run("training", "sheet", "cut", "--out", str(tmp_path / "data"), str(photo))
    assert result.returncode == 1 and f"cardcam-train: {photo}: " in result.stderr
    assert not (tmp_path / "data").exists()


# --- 2: models are never replaced unless told to --------------------------------------------------

def test_an_existing_out_is_refused_without_force_and_replaced_with_it(cards_folder, tmp_path):
    model = tmp_path / "mine.npz"
    first = run("training", "train", "--task", f"folder:{cards_folder}", "--out", str(model), *QUICK)
    assert first.returncode == 0, first.stderr
    old = model.read_bytes()
    (tmp_path / "mine.tflite").write_bytes(b"an int8 model of the old weights")
    assert (tmp_path / "mine.report").is_dir()
    (tmp_path / "mine.report" / "report.html").write_text("the old model's page")

    refused = one_line(run("training", "train", "--task", f"folder:{cards_folder}", "--out", str(model), *QUICK))
    assert "exists" in refused and "--force" in refused and model.read_bytes() == old

    forced = run("training", "train", "--task", f"folder:{cards_folder}", "--out", str(model), "--force", *QUICK)
    assert forced.returncode == 0, forced.stderr
    assert model.read_bytes() != old  # a new date in its provenance at least
    assert not (tmp_path / "mine.tflite").exists()  # made from the old weights: gone with them
    assert not (tmp_path / "mine.report" / "report.html").exists() and "mine.tflite" in forced.stdout


def test_without_out_a_run_takes_the_next_free_name(cards_folder, tmp_path):
    (tmp_path / "models").mkdir()
    shipped = tmp_path / "models" / "my_cards.npz"
    shipped.write_bytes(b"the shipped model")
    result = run("training", "train", "--task", f"folder:{cards_folder}", *QUICK, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert shipped.read_bytes() == b"the shipped model"
    assert (tmp_path / "models" / "my_cards-2.npz").is_file()
    assert "saved models/my_cards-2.npz" in result.stdout and "models/my_cards.npz is kept" in result.stdout


@pytest.mark.parametrize("args, flag", [
    (["train", "--task", "digits01", "--out", "picture.png"], "--out picture.png"),
    (["sheet", "make", "--labels", "a,b", "--out", "s.png"], "--out s.png"),
    (["cards", "--out", "cards.png"], "--out cards.png"),
    (["report", "models/digits01.npz", "--out", "page.png"], "--out page.png"),
    (["export", "--model", "models/digits01.npz", "--tflite", "model.bin"], "--tflite model.bin"),
])
def test_an_output_named_for_another_kind_of_file_is_refused(args, flag, tmp_path):
    (tmp_path / "picture.png").write_bytes(b"a photo")
    result = run("training", *[str(REPO / a) if a.startswith("models/") else a for a in args], cwd=tmp_path)
    line = one_line(result)
    assert line.startswith(f"cardcam-train: {flag}: ") and "must end in" in line
    assert (tmp_path / "picture.png").read_bytes() == b"a photo"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["picture.png"]


# --- 3: the prepared-inputs cache, progress ----------------------------------------------------

def test_prepared_inputs_are_kept_and_given_back(mnist01_cards, monkeypatch, tmp_path):
    from device.preprocess import PreprocessSettings
    from training import cache, trainer

    monkeypatch.setenv("CARDCAM_CACHE", str(tmp_path))
    jobs = [(i, kind, 3) for i in range(12) for kind in ("clean", "jitter", "camera")]
    x, kept = trainer.make_inputs(mnist01_cards.cards, jobs, PreprocessSettings(), (32, 32, 1), 7, processes=1)
    assert len(cache.entries()) == 1
    with np.load(cache.entries()[0], allow_pickle=False) as f:  # plain arrays, no pickles
        np.testing.assert_array_equal(f["x"], x)
    again = trainer.make_inputs(mnist01_cards.cards, jobs, PreprocessSettings(), (32, 32, 1), 7, processes=1)
    np.testing.assert_array_equal(again[0], x)
    np.testing.assert_array_equal(again[1], kept)
    # Anything that changes the inputs is another key: seed, settings, jobs, a card's pixels.
    key = cache.inputs_key(mnist01_cards.cards, jobs, PreprocessSettings(), (32, 32, 1), 7)
    changed = [list(mnist01_cards.cards), jobs, PreprocessSettings(), (32, 32, 1), 7]
    others = {cache.inputs_key(*changed[:4], 8), cache.inputs_key(*changed[:4][:3], (28, 28, 1), 7),
              cache.inputs_key(changed[0], jobs[:-1], *changed[2:]),
              cache.inputs_key(changed[0], jobs, PreprocessSettings(min_ink=PreprocessSettings().min_ink / 2),
                               *changed[3:])}
    cards = list(mnist01_cards.cards)
    cards[5] = cards[5].copy()
    cards[5][0, 0] ^= 1
    others.add(cache.inputs_key(cards, *changed[1:]))
    assert key not in others and len(others) == 5


def test_an_edit_to_the_data_path_code_is_a_new_key(mnist01_cards, monkeypatch, tmp_path):
    import shutil

    from device.preprocess import PreprocessSettings
    from training import cache

    args = (mnist01_cards.cards, [(0, "camera", 1)], PreprocessSettings(), (32, 32, 1), 0)
    before = cache.inputs_key(*args)
    for name in cache.CODE:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    monkeypatch.setattr(cache, "PROJECT", tmp_path)
    cache.code_version.cache_clear()
    try:
        assert cache.inputs_key(*args) == before  # the same files, the same key
        with open(tmp_path / "training" / "augment.py", "a") as f:
            f.write("\n# a new camera simulation\n")
        cache.code_version.cache_clear()
        assert cache.inputs_key(*args) != before
    finally:
        cache.code_version.cache_clear()


def test_the_code_version_covers_every_module_the_data_path_imports():
    """Making an input runs the modules training.trainer's _make_input imports and what
    load_task imports; any project module among them missing from cache.CODE would let an
    edit to it reuse stale inputs."""
    from training import cache

    code = ("import sys\nimport device.preprocess, training.augment, training.data, training.smileys\n"
            "print('\\n'.join(m.__file__ for m in list(sys.modules.values()) if getattr(m, '__file__', None)))")
    files = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                           timeout=60).stdout.split()
    ours = {str(Path(f).resolve().relative_to(REPO)) for f in files
            if any(Path(f).resolve().is_relative_to(REPO / package) for package in ("device", "training"))}
    assert ours and ours <= set(cache.CODE), ours - set(cache.CODE)


def test_an_unreadable_cache_entry_is_a_miss_and_goes(monkeypatch, tmp_path):
    from training import cache

    monkeypatch.setenv("CARDCAM_CACHE", str(tmp_path))
    cache.save("abc", x=np.arange(3))
    assert cache.load("abc")["x"].tolist() == [0, 1, 2]
    (tmp_path / "inputs" / "abc.npz").write_bytes(b"cut short")
    assert cache.load("abc") is None and not (tmp_path / "inputs" / "abc.npz").exists()


def test_no_cache_and_cache_clear(cards_folder, tmp_path):
    env = {"CARDCAM_CACHE": str(tmp_path / "cache")}
    result = run("training", "train", "--task", f"folder:{cards_folder}", "--out", str(tmp_path / "a.npz"),
                 "--no-cache", *QUICK, env=env)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "cache").exists()
    result = run("training", "train", "--task", f"folder:{cards_folder}", "--out", str(tmp_path / "b.npz"), *QUICK,
                 env=env)
    assert result.returncode == 0 and len(list((tmp_path / "cache" / "inputs").glob("*.npz"))) >= 2
    shown = run("training", "cache", env=env)
    assert shown.returncode == 0 and str(tmp_path / "cache") in shown.stdout
    cleared = run("training", "cache", "clear", env=env)
    assert cleared.returncode == 0 and cleared.stdout.startswith("removed ")
    assert not list((tmp_path / "cache" / "inputs").glob("*"))


def test_progress_in_a_log_is_plain_lines(mnist01_cards, capsys, monkeypatch, tmp_path):
    from device.preprocess import PreprocessSettings
    from training import trainer

    monkeypatch.setenv("CARDCAM_CACHE", str(tmp_path))
    trainer.make_inputs(mnist01_cards.cards, [(i % 600, "clean", 0) for i in range(500)], PreprocessSettings(),
                        (32, 32, 1), 0, processes=1)
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("preparing inputs: 0/500 pictures (0%)")
    assert lines[-1].startswith("preparing inputs: 500/500 pictures (100%)")


# --- 5: Ctrl-C -----------------------------------------------------------------------------------

def ctrl_c_after(args, ready, env=None, timeout=300, delay=0.5):
    """Start cardcam-train in a process group of its own, wait for a line containing ``ready``
    (stdout or stderr), then send SIGINT to the whole group, as a terminal's Ctrl-C does."""
    # SIGINT as a terminal leaves it: a suite started in the background of a shell without job
    # control inherits SIGINT ignored, and Python then installs no KeyboardInterrupt for it.
    proc = subprocess.Popen([sys.executable, "-m", "training", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    seen = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        if ready in line or time.monotonic() > deadline:
            break
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    return proc.returncode, "".join(seen) + rest


def test_ctrl_c_while_preparing_data_is_one_line(tmp_path):
    code, output = ctrl_c_after(["train", "--task", "digits01", "--out", str(tmp_path / "m.npz"), "--no-cache"],
                                "preparing inputs: 0/")
    assert code == 130, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert output.rstrip().endswith("cardcam-train: stopped (Ctrl-C)")
    assert not (tmp_path / "m.npz").exists()


def test_ctrl_c_while_training_keeps_the_best_epoch(cards_folder, tmp_path):
    from device.bundle import load_bundle

    model = tmp_path / "m.npz"
    code, output = ctrl_c_after(["train", "--task", f"folder:{cards_folder}", "--out", str(model), "--epochs",
                                 "100000", "--jitter", "0", "--camera", "0"], "epoch  1/100000")
    assert code == 130, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    provenance = load_bundle(model).meta["provenance"]
    assert provenance["interrupted"].startswith("stopped (Ctrl-C) during epoch")
    assert 1 <= provenance["best_epoch"] <= provenance["epochs_run"] < 100000
    log = model.with_suffix(".train.jsonl").read_text().splitlines()
    assert len(log) == provenance["epochs_run"]
    assert f"saved {model}" in output and "the best of the" in output


# --- 6: the doctor -------------------------------------------------------------------------------

def test_doctor_reads_a_frame_from_the_configured_source(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[camera]\nreplay = "/nonexistent"\n')
    result = run("device", "doctor", "--config", str(config))
    assert result.returncode == 1, result.stdout
    frames = next(line for line in result.stdout.splitlines() if line.split()[1:2] == ["frames"])
    assert frames.startswith("FAIL") and "/nonexistent" in frames and "fix: set [camera] replay" in frames
    assert "all checks passed" not in result.stdout
    good = run("device", "doctor")
    assert any(line.startswith("ok    frames") for line in good.stdout.splitlines()), good.stdout


def test_doctor_on_a_missing_config_file_does_not_say_fix_that_key(tmp_path):
    result = run("device", "doctor", "--config", str(tmp_path / "missing.toml"))
    line = next(line for line in result.stdout.splitlines() if line.split()[1:2] == ["config"])
    assert "no such config file" in line and "fix that key" not in line and "name a config file that exists" in line


# --- 8: smaller things ---------------------------------------------------------------------------

def test_capture_with_a_bad_replay_path_leaves_no_folder(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[camera]\nreplay = "/nonexistent"\n')
    result = subprocess.run([sys.executable, "-m", "device", "capture", "--label", "1", "--count", "1", "--simulate",
                             "--config", str(config), "--out", str(tmp_path / "captures")], cwd=REPO,
                            capture_output=True, text=True, input="\n", timeout=60)
    assert result.returncode == 1 and "/nonexistent" in result.stderr
    assert not (tmp_path / "captures").exists()


def test_capture_in_simulation_says_so(tmp_path):
    result = subprocess.run([sys.executable, "-m", "device", "capture", "--label", "1", "--count", "1", "--simulate",
                             "--out", str(tmp_path / "captures")], cwd=REPO, capture_output=True, text=True,
                            input="\n", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "simulation: no camera" in result.stdout


def test_run_without_gpiozero_is_one_line():
    line = one_line(run("device", "run", "--simulate", prelude=hide("gpiozero"), timeout=60))
    assert line == "cardcam: gpiozero is not installed: pip install 'cardcam[pi]' (also needed to simulate)"


def test_predict_names_a_bad_file_once(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_text("not a picture")
    result = subprocess.run([sys.executable, "-m", "device", "predict", "--model", str(REPO / "models/digits01.npz"),
                             str(bad)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout.startswith(f"{bad}: error: ") and result.stdout.count(str(bad)) == 1, result.stdout


def test_evaluate_frames_without_camera_is_refused():
    line = one_line(run("training", "evaluate", "--model", str(REPO / "models/digits01.npz"), "--frames", "3",
                        "digits01"))
    assert "--frames 3: only with --camera" in line


def test_license_file_and_its_other_terms():
    assert "MIT License" in (REPO / "LICENSE").read_text()
    readme = (REPO / "README.md").read_text()
    assert "CC BY-SA 3.0" in readme and "LICENSE" in readme


def test_report_of_a_model_whose_pictures_moved_says_data_and_leaves_nothing(cards_folder, tmp_path):
    import shutil

    pictures = tmp_path / "pictures"
    shutil.copytree(cards_folder, pictures)
    model = tmp_path / "m.npz"
    assert run("training", "train", "--task", f"folder:{pictures}", "--out", str(model), *QUICK).returncode == 0
    shutil.rmtree(tmp_path / "m.report")
    pictures.rename(tmp_path / "moved")
    line = one_line(run("training", "report", str(model)))
    assert str(pictures) in line and "--data DIR" in line
    assert not (tmp_path / "m.report").exists()
    again = run("training", "report", str(model), "--data", str(tmp_path / "moved"))
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "m.report" / "report.html").is_file()


def test_the_mistakes_picture_title_fits_with_one_mistake(tmp_path):
    """Its title ran off both sides of a one-picture figure ("ctures wrong (true → p")."""
    from types import SimpleNamespace

    from training.report import plot_misclassified

    x = np.zeros((3, 32, 32, 1), np.float32)
    x[:, 8:24, 14:18] = 1.0
    sets = {"clean": {"x": x, "y": np.array([0, 1, 1]), "pred": np.array([0, 0, 1]), "confidence": np.ones(3) * 0.9},
            "camera": {"x": x, "y": np.array([0, 1, 1]), "pred": np.array([0, 1, 1]), "confidence": np.ones(3)}}
    path = tmp_path / "misclassified.png"
    plot_misclassified(SimpleNamespace(labels=["0", "1"]), SimpleNamespace(sets=sets), path)
    picture = np.asarray(Image.open(path).convert("L"))
    title = picture[:picture.shape[0] // 5]  # the top band: the title's two lines
    columns = np.flatnonzero((title < 128).any(axis=0))
    assert len(columns), "no title drawn"
    assert columns[0] >= 3 and columns[-1] <= picture.shape[1] - 4  # ink clear of both edges: nothing cut


def test_evaluate_on_your_own_photos_says_what_became_of_each(cards_folder, trained01, tmp_path):
    """Issue 19, 5: per class right, wrong (as what), no card / no ink; the worst files listed."""
    import shutil

    photos = tmp_path / "photos"
    shutil.copytree(cards_folder, photos)
    shutil.copy(photos / "1" / "card0.png", photos / "0" / "a-one-among-the-zeros.png")
    Image.new("L", (160, 120), 235).save(photos / "0" / "blank.png")
    (photos / "1" / "broken.png").write_text("not a picture")
    result = run("training", "evaluate", "--model", str(trained01.path), "--json", f"folder:{photos}")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    zero, one = report["classes"]["0"], report["classes"]["1"]
    assert zero["pictures"] == 10 and one["pictures"] == 9 and report["count"] == 19 and report["split"] == "all"
    assert zero["wrong"] == {"1": 1} and zero["right"] == 8
    # The blank is not read, as no card, no ink or one flat colour, whichever preprocessing says.
    assert zero["pictures"] - zero["right"] - 1 == 1 and one["unreadable"] == 1 and one["right"] == 8
    blank = next(f for f in report["files"] if f["file"].endswith("blank.png"))
    assert blank["read_as"] is None and blank["reason"] in ("no card", "no ink", "unreadable")
    worst = report["files"]
    assert {f["file"] for f in worst[:3]} == {str(photos / "0" / "blank.png"), str(photos / "1" / "broken.png"),
                                              str(photos / "0" / "a-one-among-the-zeros.png")}
    assert [f["p_true"] for f in worst] == sorted(f["p_true"] for f in worst) and len(worst) == 19
    text = run("training", "evaluate", "--model", str(trained01.path), "--worst", "3", str(photos))
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert "0  10 pictures: 8 right, 1 wrong (as 1: 1)" in out and "1 unreadable" in out
    assert "broken.png  1: unreadable (" in out  # and why
    listed = out.split("worst pictures")[1].strip().splitlines()[1:]
    assert len(listed) == 3 and any("a-one-among-the-zeros.png  0: read as 1" in line for line in listed)


def test_ablate_refuses_variants_that_change_nothing_or_cannot_work():
    from training import ablate

    arch = ablate.ARCHS["dwengo"](2)
    layers, shape = arch["layers"], arch["input_shape"]
    with pytest.raises(ablate.NoChange, match="kernel3"):  # dwengo's kernels are 3x3 already
        ablate.plan_variants(layers, shape, ["baseline", "kernel3"])
    with pytest.raises(ablate.NoChange):
        ablate.plan_variants(layers, shape, ["kernel3+no-dropout"])
    with pytest.raises(ablate.VariantError, match="at least 1"):
        ablate.plan_variants(layers, shape, ["kernel0"])
    (big,) = ablate.plan_variants(layers, shape, ["kernel99"])
    assert "99x99 window is larger than the" in big.skipped
    assert [v.name for v in ablate.plan_variants(layers, shape)] == ablate.automatic_variants(layers)


def test_ablate_with_no_variant_named_is_refused():
    line = one_line(run("training", "ablate", "--variants", ""))
    assert "--variants '': names no variant" in line


def test_ablate_shows_no_spread_where_one_run_measured_none():
    from training import ablate

    one = {"variant": "baseline", "description": "", "status": "ok", "runs": 1, "parameters": 10}
    for field in ("val_accuracy", "val_camera_accuracy", "train_seconds", "inference_ms"):
        one[f"{field}_mean"], one[f"{field}_std"] = ablate._mean_std([0.5])
    three = dict(one, variant="no-dropout", runs=3)
    for field in ("val_accuracy", "val_camera_accuracy", "train_seconds", "inference_ms"):
        three[f"{field}_mean"], three[f"{field}_std"] = ablate._mean_std([0.4, 0.5, 0.6])
    table = ablate.format_table([one, three]).splitlines()
    assert "\u00b1" not in table[2] and "50.00%" in table[2]
    assert "50.00% \u00b1 10.00%" in table[3]


def test_ctrl_c_during_ablate_is_one_line_and_keeps_finished_runs(tmp_path):
    code, output = ctrl_c_after(["ablate", "--task", "smiley:20", "--variants", "baseline,no-dropout", "--runs", "1",
                                 "--epochs", "400", "--jobs", "2", "--out", str(tmp_path / "lab")], "ablate: 0/2 runs",
                                delay=4)  # the workers are up and training
    assert code == 130, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert output.rstrip().endswith("cardcam-train: stopped (Ctrl-C)")
    assert not list((tmp_path / "lab").glob(".inputs-*"))  # the workers' copy of the inputs is gone


def test_the_cache_keeps_what_was_used_last_within_its_limit(monkeypatch, tmp_path):
    from training import cache

    monkeypatch.setenv("CARDCAM_CACHE", str(tmp_path))
    monkeypatch.setattr(cache, "LIMIT", 3 * 2300)  # three entries of 2256 bytes
    for n, key in enumerate("abc"):
        cache.save(key, x=np.zeros(2000, np.uint8))
        os.utime(tmp_path / "inputs" / f"{key}.npz", (1000 + n, 1000 + n))  # written a, b, c in turn
    assert cache.load("a") is not None  # a is used again: b is now the one used longest ago
    cache.save("d", x=np.zeros(2000, np.uint8))
    assert sorted(p.stem for p in cache.entries()) == ["a", "c", "d"]
