"""`cardcam-train fetch` for real: the examples folder of a "Pi" (a folder here) over a private
sshd on 127.0.0.1 and real scp, then a full training run on what came back."""

from __future__ import annotations

import subprocess
import sys

import pytest

from test_deploy import NEED, REPO, sshd  # noqa: F401  (the fixture)
from test_teach import write_examples

pytestmark = [pytest.mark.laptop,
              pytest.mark.skipif(not all(NEED), reason="needs OpenSSH (apt install openssh-server openssh-client)")]


def fetch(sshd, path, out, *extra):
    done = subprocess.run([sys.executable, "-m", "training", "fetch", "--host", sshd["host"], "--path", str(path),
                           "--out", str(out), *sshd["args"], *extra], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    print(done.stdout, done.stderr)
    return done


def test_fetch_brings_the_examples_back_and_they_train(sshd, tmp_path):  # noqa: F811
    pi = write_examples(tmp_path / "pi" / "examples", per_label=4, labels=("A", "K"))
    (pi / "A" / "seen").mkdir()  # what the network saw: copied along, not training data
    out = tmp_path / "laptop" / "examples"
    done = fetch(sshd, pi, out)
    assert done.returncode == 0
    assert f"fetched 8 examples into {out}: A 4, K 4" in done.stdout
    assert sorted(p.name for p in (out / "K").iterdir()) == sorted(p.name for p in (pi / "K").iterdir())
    assert [p.name for p in out.parent.iterdir()] == ["examples"]  # no partial folder left
    # Fetched again: refused without --force, the folder as it was; replaced with it.
    (pi / "K" / "04.png").write_bytes((pi / "K" / "00.png").read_bytes())
    again = fetch(sshd, pi, out)
    assert again.returncode == 2 and "exists" in again.stdout and not (out / "K" / "04.png").exists()
    assert fetch(sshd, pi, out, "--force").returncode == 0 and (out / "K" / "04.png").exists()
    # The retrain loop: taught examples become a full training run.
    model = tmp_path / "mine.npz"
    trained = subprocess.run([sys.executable, "-m", "training", "train", "--task", f"folder:{out}", "--out",
                              str(model), "--epochs", "1", "--camera", "0", "--jitter", "0", "--quiet"],
                             capture_output=True, text=True, timeout=300, cwd=REPO)
    assert trained.returncode == 0, trained.stderr
    from device.bundle import load_bundle
    assert load_bundle(model).labels == ["A", "K"]


def test_fetch_of_a_missing_folder_leaves_nothing(sshd, tmp_path):  # noqa: F811
    out = tmp_path / "examples"
    done = fetch(sshd, tmp_path / "nowhere", out)
    assert done.returncode == 1 and "failed" in done.stdout and "left as it was" in done.stdout
    assert list(tmp_path.iterdir()) == []
