"""`cardcam-train deploy`: put a model on the Pi and see the daemon run it.

1. The bundle is checked here first, completely (the daemon's own load_model: format, shapes,
   hash, NaN, a test forward pass), and against the task and labels of the model the daemon runs
   (a hot reload keeps them): a model the Pi would refuse never leaves the laptop.
2. `scp` copies it to a hidden temporary name in the target's folder; one `ssh` checks its SHA-256
   there and renames it over the target (`mv` within a folder is atomic), or removes it. The
   daemon never sees half a file, and a broken copy never replaces a good one.
3. The daemon's state file (/run/cardcam/state.json, device/status.py) is read over ssh until it
   reports the new weights' SHA-256, and that is what is printed.

ssh and scp are OpenSSH's own: ~/.ssh/config, keys and agents work as usual; --port and
--ssh-option add to them.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shlex
import subprocess
import time
from pathlib import Path, PurePosixPath

from device.bundle import BundleError
from device.modelfile import ModelRefused, load_model
from device.runtime import RuntimeUnavailable
from device.status import DEFAULT_STATE_FILE
from training.options import count, seconds

DEFAULT_DIR = "/var/lib/cardcam/models"
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._+/-]+$")


class DeployError(Exception):
    """Deployment stopped; ``code`` is the exit status (2: nothing was copied, 1: after copying)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def add_command(sub) -> None:
    p = sub.add_parser("deploy", help="check a model, copy it to the Pi atomically, report what the daemon runs")
    p.add_argument("--model", required=True, help="the bundle (.npz) to deploy")
    p.add_argument("--host", required=True, help="where the daemon runs, as for ssh: pi@cardcam.local")
    p.add_argument("--path", help=f"file on the Pi (default: {DEFAULT_DIR}/<the model's file name>)")
    p.add_argument("--port", type=count(1, 65535), help="ssh port")
    p.add_argument("--ssh-option", action="append", default=[], metavar="OPTION",
                   help="an ssh/scp -o option, e.g. IdentityFile=~/.ssh/pi (repeatable)")
    p.add_argument("--state-file", default=DEFAULT_STATE_FILE,
                   help=f"the daemon's state file on the Pi (default: {DEFAULT_STATE_FILE})")
    p.add_argument("--timeout", type=seconds, default=30.0,
                   help="seconds to wait for the daemon to run the new model (default 30; 0: do not wait)")
    p.add_argument("--force", action="store_true", help="copy even if the running model has another task or labels")
    p.set_defaults(func=deploy)


class Remote:
    """ssh and scp to one host, with the same options for both."""

    def __init__(self, host: str, port: int | None = None, options=()):
        if not host or host.startswith("-") or any(c.isspace() for c in host):
            raise DeployError(f"--host {host!r}: expected user@host", 2)
        self.host = host
        self.options = [a for o in options for a in ("-o", o)]
        self.ssh_base = ["ssh", *(["-p", str(port)] if port else []), *self.options, host, "--"]
        self.scp_base = ["scp", "-q", *(["-P", str(port)] if port else []), *self.options]

    def run(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(self.ssh_base + [command], capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DeployError(f"ssh {self.host}: no answer in {timeout:g} s") from None

    def copy(self, local: Path, remote: str, timeout: float = 300) -> None:
        try:
            done = subprocess.run(self.scp_base + [str(local), f"{self.host}:{remote}"], capture_output=True,
                                  text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DeployError(f"scp to {self.host}: not done in {timeout:g} s; nothing was replaced") from None
        if done.returncode != 0:
            raise DeployError(f"scp {local} {self.host}:{remote} failed: {_last_line(done)}; nothing was replaced"
                              f"{_permission_hint(done, remote)}")

    def read_state(self, path: str) -> dict | None:
        done = self.run(f"cat {shlex.quote(path)} 2>/dev/null", timeout=30)
        if done.returncode == 255:  # ssh itself failed
            raise DeployError(f"ssh {self.host}: {_last_line(done)}")
        try:
            state = json.loads(done.stdout)
        except ValueError:
            return None
        return state if isinstance(state, dict) else None


def _last_line(done: subprocess.CompletedProcess) -> str:
    lines = [l for l in (done.stderr or done.stdout or "").strip().splitlines() if l.strip()]
    return lines[-1] if lines else f"exit status {done.returncode}"


def _permission_hint(done, remote: str) -> str:
    if "ermission denied" not in (done.stderr or ""):
        return ""
    folder = PurePosixPath(remote).parent
    return (f" (the ssh user may not write {folder}: install.sh adds the user who ran sudo to the group cardcam, "
            "which may; log in again after that, or deploy as another user)")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def describe(state: dict) -> str:
    """What the daemon runs and shows, in one line, from its state record."""
    shown = state.get("label")
    conf = state.get("confidence")
    showing = f"shows {shown} ({conf:.0%})" if shown is not None and isinstance(conf, (int, float)) else "shows no card"
    sha = state.get("model_sha256") or ""
    return (f"{state.get('model')} (weights sha256 {sha[:12]}) from {state.get('model_path')}; {state.get('state')}, "
            f"{showing}, {state.get('fps', 0):.1f} fps")


def deploy(args) -> int:
    try:
        return _deploy(args)
    except DeployError as e:
        print(f"cardcam-train deploy: {e}", flush=True)
        return e.code


def _deploy(args) -> int:
    local = Path(args.model)
    # 1. Everything the daemon will check, checked here (NumPy: the laptop may have no TFLite).
    try:
        bundle, _ = load_model(local, "numpy")
    except (BundleError, ModelRefused, RuntimeUnavailable, ValueError) as e:
        raise DeployError(f"{e}; nothing was copied", 2) from None
    sha = bundle.meta["weights_sha256"]
    target = args.path or f"{DEFAULT_DIR}/{local.name}"
    if not _SAFE_PATH.match(target) or not target.endswith(".npz") or "/../" in f"{target}/":
        raise DeployError(f"--path {target!r}: expected an absolute path of letters, digits and ._+-/, "
                          "ending in .npz; nothing was copied", 2)
    remote = Remote(args.host, args.port, args.ssh_option)
    print(f"{local}: {bundle.name}, task {bundle.meta.get('task')}, labels {' '.join(bundle.labels)}, "
          f"weights sha256 {sha[:12]}: checked", flush=True)

    try:
        before = remote.read_state(args.state_file)
    except DeployError as e:
        raise DeployError(f"{e}; nothing was copied") from None
    if before and before.get("model_path") == target and before.get("task") is not None and not args.force:
        if before.get("task") != bundle.meta.get("task") or before.get("labels") != list(bundle.labels):
            raise DeployError(
                f"{args.host} runs {before.get('model')} for task {before.get('task')!r} with labels "
                f"{' '.join(before.get('labels') or [])} from {target}; {local} is task {bundle.meta.get('task')!r} "
                f"with labels {' '.join(bundle.labels)}, which the daemon would refuse to swap in. Deploy it under "
                "another --path, point [model] path at it and run `sudo systemctl reload cardcam` "
                "(or --force); nothing was copied", 2)

    # 2. Copy to a temporary name beside the target, check it arrived whole, rename.
    folder = str(PurePosixPath(target).parent)
    temporary = f"{folder}/.{PurePosixPath(target).name}.{secrets.token_hex(4)}.tmp"
    remote.copy(local, temporary)
    file_sha = _sha256_file(local)
    q_tmp, q_target = shlex.quote(temporary), shlex.quote(target)
    done = remote.run(f'if [ "$(sha256sum < {q_tmp} | cut -c1-64)" = {file_sha} ]; then mv -f {q_tmp} {q_target}; '
                      f'else rm -f {q_tmp}; echo "the copy arrived damaged" >&2; exit 3; fi')
    if done.returncode != 0:
        remote.run(f"rm -f {q_tmp}")
        raise DeployError(f"renaming {temporary} to {target} on {args.host} failed: {_last_line(done)}; "
                          "the old model is untouched")
    print(f"copied to {args.host}:{target} (atomic rename)", flush=True)

    # 3. Wait for the daemon to run it.
    if args.timeout <= 0:
        return 0
    journal = f"ssh {args.host} journalctl -u cardcam -n 30"
    end = time.monotonic() + args.timeout
    state = None
    while True:
        state = remote.read_state(args.state_file)
        if state and state.get("model_sha256") == sha:
            print(f"{args.host} now runs {describe(state)}", flush=True)
            return 0
        if state and before and state.get("pid") == before.get("pid") \
                and state.get("refusals", 0) > before.get("refusals", 0):
            raise DeployError(f"the copy succeeded, but the daemon refused the model and still runs "
                              f"{describe(state)}; why: {journal}")
        if time.monotonic() >= end:
            break
        time.sleep(0.5)
    if state is None:
        now = f"no daemon state in {args.host}:{args.state_file} (is the service running? systemctl status cardcam)"
    else:
        now = f"it still runs {describe(state)}"
        if state.get("model_path") not in (None, target):
            now += f" — its [model] path is not {target}"
    raise DeployError(f"the copy succeeded, but after {args.timeout:g} s the daemon has not picked the model up: "
                      f"{now}. Look at the log: {journal}")
