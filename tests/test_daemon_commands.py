"""`cardcam capture` and `cardcam doctor`, run as the commands a person types."""

import subprocess
import sys

import numpy as np
from PIL import Image

from device.preprocess import load_frame

from daemon_fixtures import REPO, tiny_model, write_config, write_frames  # noqa: F401


def cardcam(*args, stdin="", timeout=60):
    return subprocess.run([sys.executable, "-m", "device", *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_capture_saves_raw_frames_and_what_the_network_sees(tmp_path, tiny_model):
    frames = write_frames(tmp_path / "frames", tiny_model, [(1, 2), (None, 1)])
    config = write_config(tmp_path / "c.toml", camera={"source": "replay", "replay": str(frames), "fps": 0},
                          model={"path": str(tiny_model)})
    out = tmp_path / "captures"
    proc = cardcam("capture", "--simulate", "--config", str(config), "--label", "1", "--count", "3",
                   "--out", str(out), stdin="\n\n\n")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    raw = sorted((out / "raw" / "1").glob("*.png"))
    seen = sorted((out / "seen" / "1").glob("*.png"))
    assert len(raw) == 3 and len(seen) == 2  # the blank frame has no card to show the network
    # The frame as the camera gives it: at the size preprocessing works at (a replayed 640x480
    # picture is reduced to it once, on load, as the Pi camera's ISP scales its lores stream).
    assert Image.open(raw[0]).size == (160, 120)
    np.testing.assert_array_equal(np.asarray(Image.open(raw[0])), load_frame(frames / "0000.png", 160))
    assert Image.open(seen[0]).size == (32, 32)
    assert "no card found" in proc.stdout
    assert not list(out.rglob("*.tmp"))


def test_capture_with_a_bad_config_is_one_clear_line(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[camera]\nfsp = 30\n")
    proc = cardcam("capture", "--simulate", "--config", str(config), "--label", "1", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and not (tmp_path / "o").exists()
    assert proc.stderr.count("\n") == 1 and str(config) in proc.stderr, proc.stderr
    assert "[camera] unknown key 'fsp' (did you mean 'fps'?)" in proc.stderr and "Traceback" not in proc.stderr


def test_capture_stops_on_q_and_rejects_bad_labels(tmp_path, tiny_model):
    config = write_config(tmp_path / "c.toml", model={"path": str(tiny_model)})
    proc = cardcam("capture", "--simulate", "--config", str(config), "--label", "0", "--count", "5",
                   "--out", str(tmp_path / "o"), stdin="\nq\n")
    assert proc.returncode == 1 and len(list((tmp_path / "o" / "raw" / "0").glob("*.png"))) == 1
    proc = cardcam("capture", "--simulate", "--label", "../x", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "must be a plain name" in proc.stderr


def test_capture_into_a_folder_it_cannot_make_is_one_clear_line_before_any_picture(tmp_path, tiny_model):
    config = write_config(tmp_path / "c.toml", model={"path": str(tiny_model)})
    (tmp_path / "a-file").write_text("not a folder")
    proc = cardcam("capture", "--simulate", "--config", str(config), "--label", "0", "--out", str(tmp_path / "a-file"),
                   stdin="\n")
    assert proc.returncode == 2 and "ready" not in proc.stdout
    assert proc.stderr == f"cardcam: --out {tmp_path / 'a-file'}: cannot make {tmp_path / 'a-file' / 'raw' / '0'}: " \
                          "Not a directory\n"


def test_doctor_one_line_per_check_with_fixes(tmp_path, tiny_model):
    good = write_config(tmp_path / "good.toml", model={"path": str(tiny_model)})
    proc = cardcam("doctor", "--config", str(good))
    lines = proc.stdout.splitlines()
    names = [line.split()[1] for line in lines[:-1]]
    assert names == ["python", "libraries", "runtimes", "gpiozero", "camera", "gpio", "groups", "config", "model",
                     "frames", "service"]
    assert proc.returncode == 0 and lines[-1] == "all checks passed", proc.stdout
    assert any(l.startswith("ok") and "tiny" in l for l in lines)

    bad = write_config(tmp_path / "bad.toml", model={"path": str(tmp_path / "missing.npz")})
    proc = cardcam("doctor", "--config", str(bad))
    assert proc.returncode == 1
    model_line = next(l for l in proc.stdout.splitlines() if l.split()[1] == "model")
    assert model_line.startswith("FAIL") and "missing.npz" in model_line and "— fix:" in model_line

    (tmp_path / "typo.toml").write_text("[model]\npth = 'x'\n")
    proc = cardcam("doctor", "--config", str(tmp_path / "typo.toml"))
    config_line = next(l for l in proc.stdout.splitlines() if l.split()[1] == "config")
    assert config_line.startswith("FAIL") and "did you mean 'path'" in config_line
