"""`cardcam-train deploy` for real: a private sshd on 127.0.0.1 (temporary host key and
authorized_keys, as the current user), the daemon as a real subprocess whose model file and state
file are the "Pi" side, and real ssh/scp in between."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from daemon_fixtures import REPO, Daemon, write_config
from device.bundle import load_bundle, save_bundle

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
NEED = [SSHD, shutil.which("ssh"), shutil.which("scp"), shutil.which("ssh-keygen")]
pytestmark = [pytest.mark.laptop, pytest.mark.skipif(
    not all(p and os.path.exists(p) for p in NEED) and not os.environ.get("CI"),
    reason="needs OpenSSH (apt install openssh-server openssh-client); CI installs it")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """An sshd of our own on 127.0.0.1:<free port>; yields the deploy options that reach it."""
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    shutil.copyfile(d / "client_key.pub", d / "authorized_keys")
    port = _free_port()
    (d / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {d / 'host_key'}", f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}", "StrictModes no", "UsePAM no",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
        "Subsystem sftp internal-sftp", "LogLevel ERROR"]) + "\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    end = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > end:
                proc.kill()
                pytest.fail(f"sshd did not start: {proc.stdout.read()}")
            time.sleep(0.05)
    options = [f"IdentityFile={d / 'client_key'}", "IdentitiesOnly=yes", "StrictHostKeyChecking=no",
               "UserKnownHostsFile=/dev/null", "BatchMode=yes", "LogLevel=ERROR", "ConnectTimeout=10"]
    host = f"{os.environ.get('USER') or __import__('getpass').getuser()}@127.0.0.1"
    yield {"host": host, "args": ["--port", str(port)] + [a for o in options for a in ("--ssh-option", o)]}
    proc.terminate()
    proc.wait(5)


@pytest.fixture
def pi(tmp_path):
    """The Pi side: a models folder with digits01.npz, and the daemon running it (simulated camera)."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copyfile(REPO / "models" / "digits01.npz", models / "digits01.npz")
    state = tmp_path / "state.json"
    config = write_config(
        tmp_path / "config.toml",
        camera={"source": "samples", "fps": 30},
        model={"path": str(models / "digits01.npz"), "runtime": "numpy", "poll_interval": 0.1, "stable_time": 0.2},
        daemon={"state_file": str(state), "status_interval": 0.2})
    daemon = Daemon(config, state)
    try:
        daemon.wait_for(lambda: daemon.state().get("model_sha256"), what="the daemon's first state")
        yield {"models": models, "state": state, "daemon": daemon}
    finally:
        daemon.stop()


def retrained(tmp_path) -> Path:
    """digits01 with slightly different weights: same task and labels, another weights hash."""
    bundle = load_bundle(REPO / "models" / "digits01.npz")
    last = [k for k in bundle.weights if k.endswith(".bias")][-1]
    bundle.weights[last] = bundle.weights[last] + np.float32(0.01)
    return save_bundle(bundle, tmp_path / "digits01.npz")


def deploy(sshd, pi, model, *extra, timeout=30):
    cmd = [sys.executable, "-m", "training", "deploy", "--model", str(model), "--host", sshd["host"],
           "--path", str(pi["models"] / "digits01.npz"), "--state-file", str(pi["state"]), *sshd["args"], *extra]
    if not any(a.startswith("--timeout") for a in extra):
        cmd += ["--timeout", "20"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30, cwd=REPO)
    print(done.stdout, done.stderr)  # shown by pytest when a test fails
    return done


def leftovers(models: Path):
    return sorted(p.name for p in models.iterdir() if p.name != "digits01.npz")


def test_a_good_model_lands_atomically_and_the_daemon_reports_it(sshd, pi, tmp_path):
    (tmp_path / "laptop").mkdir()
    new = retrained(tmp_path / "laptop")
    target = pi["models"] / "digits01.npz"
    inode_before = target.stat().st_ino
    old_sha = pi["daemon"].state()["model_sha256"]
    new_sha = load_bundle(new).meta["weights_sha256"]
    assert new_sha != old_sha

    done = deploy(sshd, pi, new)
    assert done.returncode == 0, done.stdout + done.stderr
    assert target.read_bytes() == new.read_bytes()
    assert target.stat().st_ino != inode_before  # replaced by a rename, never written in place
    assert leftovers(pi["models"]) == []  # no temporary file left behind
    assert f"now runs digits01 (weights sha256 {new_sha[:12]})" in done.stdout, done.stdout
    assert pi["daemon"].state()["model_sha256"] == new_sha
    assert "model reloaded: digits01" in pi["daemon"].output


@pytest.mark.parametrize("damage", ["truncated", "not a zip", "NaN weights"])
def test_a_bad_model_never_leaves_the_laptop(sshd, pi, tmp_path, damage):
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    good = retrained(laptop)
    bad = laptop / "bad.npz"
    if damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "not a zip":
        bad.write_text("digits01, honest\n")
    else:  # a well-formed file whose first bias is NaN (save_bundle would refuse to write it)
        with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
            for item in src.infolist():
                data = src.read(item)
                if item.filename == "L0.bias.npy":
                    array = np.load(io.BytesIO(data), allow_pickle=False)
                    out = io.BytesIO()
                    np.save(out, np.full_like(array, np.nan), allow_pickle=False)
                    data = out.getvalue()
                dst.writestr(item, data)
    target = pi["models"] / "digits01.npz"
    before = target.read_bytes(), target.stat().st_ino
    sha = pi["daemon"].state()["model_sha256"]

    done = deploy(sshd, pi, bad)
    assert done.returncode == 2, done.stdout + done.stderr
    assert str(bad) in done.stdout and "nothing was copied" in done.stdout, done.stdout
    assert len(done.stdout.strip().splitlines()) == 1  # one clear line, no traceback
    assert (target.read_bytes(), target.stat().st_ino) == before
    assert leftovers(pi["models"]) == []
    time.sleep(0.5)  # the daemon would have noticed a new file by now
    assert pi["daemon"].state()["model_sha256"] == sha


def test_a_model_for_another_task_is_refused_before_copying(sshd, pi, tmp_path):
    target = pi["models"] / "digits01.npz"
    before = target.read_bytes()
    done = deploy(sshd, pi, REPO / "models" / "smiley.npz")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "the daemon would refuse" in done.stdout and "nothing was copied" in done.stdout, done.stdout
    assert target.read_bytes() == before and leftovers(pi["models"]) == []


def test_a_copy_the_daemon_does_not_pick_up_says_so(sshd, pi, tmp_path):
    other = pi["models"] / "other.npz"
    done = deploy(sshd, pi, REPO / "models" / "digits.npz", "--path", str(other), "--timeout", "1.5")
    assert done.returncode == 1, done.stdout + done.stderr
    assert other.read_bytes() == (REPO / "models" / "digits.npz").read_bytes()
    out = done.stdout
    assert "the copy succeeded" in out and "journalctl -u cardcam" in out and "its [model] path is not" in out, out


def test_forced_copy_of_a_model_the_daemon_refuses_says_so(sshd, pi):
    done = deploy(sshd, pi, REPO / "models" / "smiley.npz", "--force")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the daemon refused the model and still runs digits01" in done.stdout, done.stdout
    assert "journalctl -u cardcam" in done.stdout
    assert pi["daemon"].state()["model"] == "digits01"


def test_under_systemd_the_state_file_is_in_the_runtime_directory(tmp_path):
    """The shipped unit has RuntimeDirectory=cardcam: systemd sets $RUNTIME_DIRECTORY=/run/cardcam, and
    with no [daemon] state_file configured the daemon keeps state.json there (where deploy reads it)."""
    run = tmp_path / "run"
    run.mkdir()
    config = write_config(tmp_path / "config.toml", camera={"source": "samples", "fps": 30},
                          model={"path": str(REPO / "models" / "digits01.npz"), "runtime": "numpy"},
                          daemon={"status_interval": 0.2})
    daemon = Daemon(config, run / "state.json", env={"RUNTIME_DIRECTORY": str(run)})
    try:
        daemon.wait_for(lambda: daemon.state().get("model") == "digits01", what="state.json in $RUNTIME_DIRECTORY")
    finally:
        daemon.stop()
    state = daemon.state()
    assert state["model_sha256"] == load_bundle(REPO / "models" / "digits01.npz").meta["weights_sha256"]
    assert state["task"] == "digits01" and state["labels"] == ["0", "1"]
    assert state["model_path"] == str(REPO / "models" / "digits01.npz")
