"""`cardcam-train fetch`: the examples taught on the Pi, back to the laptop (deploy's counterpart).

The Pi's teach mode keeps every example it was shown in /var/lib/cardcam/examples/<label>/ (the
camera frames, with what the network saw in seen/). Copied here they are training data like any
folder: ``cardcam-train train --task folder:DIR``. `scp -r` copies them into a hidden folder beside
--out, which is renamed into place only once the copy is whole: an interrupted fetch never leaves
half a folder where training would read it, and an existing --out is replaced only with --force.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

from training.deploy import DeployError, Remote, _last_line
from training.options import count

DEFAULT_EXAMPLES = "/var/lib/cardcam/examples"
PICTURES = (".png", ".jpg", ".jpeg")


def add_command(sub) -> None:
    p = sub.add_parser("fetch", help="copy the examples taught on the Pi to a folder here, to train on")
    p.add_argument("--host", required=True, help="the Pi, as for ssh: pi@cardcam.local")
    p.add_argument("--path", default=DEFAULT_EXAMPLES, help=f"the examples on the Pi (default: {DEFAULT_EXAMPLES})")
    p.add_argument("--out", required=True, help="folder to make here: OUT/<label>/*.png")
    p.add_argument("--port", type=count(1, 65535), help="ssh port")
    p.add_argument("--ssh-option", action="append", default=[], metavar="OPTION",
                   help="an ssh/scp -o option, e.g. IdentityFile=~/.ssh/pi (repeatable)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=fetch)


def fetch(args) -> int:
    try:
        counts = _fetch(args)
    except DeployError as e:
        print(f"cardcam-train fetch: {e}", flush=True)
        return e.code
    total = sum(counts.values())
    print(f"fetched {total} examples into {args.out}: " + ", ".join(f"{l} {c}" for l, c in counts.items()))
    print(f"train on them: cardcam-train train --task folder:{args.out} --out models/mine.npz")
    return 0


def _fetch(args) -> dict:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise DeployError(f"--out {out}: exists; choose another name, or add --force to replace it", 2)
    if not args.path.startswith("/") or any(c.isspace() or c in "'\"\\$`;&|<>*?" for c in args.path):
        raise DeployError(f"--path {args.path!r}: expected a plain absolute path like {DEFAULT_EXAMPLES}", 2)
    remote = Remote(args.host, args.port, args.ssh_option)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.fetch-{secrets.token_hex(4)}"
    try:
        try:
            done = subprocess.run(remote.scp_base + ["-r", f"{remote.host}:{args.path.rstrip('/')}", str(partial)],
                                  capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DeployError(f"scp from {remote.host}: not done in 600 s; {out} left as it was") from None
        if done.returncode != 0:
            raise DeployError(f"scp {remote.host}:{args.path} failed: {_last_line(done)}; {out} left as it was")
        counts = {folder.name: sum(1 for p in folder.iterdir() if p.suffix.lower() in PICTURES)
                  for folder in sorted(partial.iterdir()) if folder.is_dir() and not folder.name.startswith(".")}
        if not any(counts.values()):
            raise DeployError(f"{remote.host}:{args.path} has no examples (<label>/*.png); {out} left as it was")
        if out.exists():  # --force: the old folder goes only once the new one is whole
            old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
            out.rename(old)
            partial.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            partial.rename(out)
        return counts
    finally:
        shutil.rmtree(partial, ignore_errors=True)
