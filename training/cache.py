"""The prepared-inputs cache.

Making a model's inputs (each card jittered and photographed by the simulated camera, then
preprocessed) takes 20-50 times as long as an epoch, and gives the same arrays every time for the
same cards, jobs, settings and seed. So training.trainer.make_inputs keeps each answer here and
a second `train`, `ablate`, `evaluate --camera` or `report` reads it back in a fraction of a second.

The key is a SHA-256 of everything the inputs depend on:
- the code that makes them: the source of every module on the data path (``CODE``), so an edit
  to preprocessing or the camera simulation makes new inputs by itself;
- NumPy's and Pillow's versions (their resampling and JPEG are part of the pictures);
- the cards themselves, every pixel: what the task's data files (MNIST, a folder of photos) and
  generators became, so a changed photo or a changed task is a new key;
- the jobs (card, jitter or camera, variant: the task's settings), the preprocessing settings,
  the input shape and the seed.

Where: ``$CARDCAM_CACHE``, else ``$XDG_CACHE_HOME/cardcam``, else ``~/.cache/cardcam``.
`cardcam-train cache` shows it, `cardcam-train cache clear` empties it, ``--no-cache`` neither
reads nor writes it; past ``LIMIT`` (2 GiB) the entries used longest ago are removed. One ``.npz`` per answer (np.load with allow_pickle=False), written under a
temporary name and renamed, so a reader never sees half a file; a file that cannot be read is a
miss and is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from functools import cache as _once
from pathlib import Path

import numpy as np
import PIL

FORMAT = 1  # bump when what an entry holds changes
PROJECT = Path(__file__).resolve().parent.parent
# The data path: every project module that making an input runs (tests/test_cache.py checks that
# importing the data path loads no other project module), and the printable cards' glyphs.
CODE = ("device/__init__.py", "device/preprocess.py", "training/__init__.py", "training/augment.py",
        "training/data.py", "training/smileys.py", "training/cards.py", "training/trainer.py")

enabled = True  # False: --no-cache
LIMIT = 2 << 30  # bytes kept; past it the entries used longest ago go (digits' inputs are 45 MB)


def folder() -> Path:
    """Where the cache lives (not made until something is written)."""
    if os.environ.get("CARDCAM_CACHE"):
        return Path(os.environ["CARDCAM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cardcam"


@_once
def code_version() -> str:
    """SHA-256 of the data path's source files (hashed once per process)."""
    h = hashlib.sha256()
    for name in CODE:
        h.update(name.encode() + b"\0")
        try:
            h.update((PROJECT / name).read_bytes())
        except OSError:  # installed without it: still a distinct key
            h.update(b"missing")
    return h.hexdigest()


def inputs_key(cards: list, jobs: list, settings, input_shape, seed: int) -> str:
    """The key of make_inputs' answer for these arguments."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT, "code": code_version(), "numpy": np.__version__,
                         "pillow": PIL.__version__, "settings": repr(settings), "input_shape": list(input_shape),
                         "seed": seed, "jobs": [list(j) for j in jobs]}, sort_keys=True).encode())
    for i in sorted({job[0] for job in jobs}):
        card = np.ascontiguousarray(cards[i])
        h.update(f"{i}:{card.dtype}{card.shape}".encode())
        h.update(card.data)
    return h.hexdigest()


def _path(key: str) -> Path:
    return folder() / "inputs" / f"{key}.npz"


def load(key: str) -> dict | None:
    """The arrays stored under key, or None (cache off, not there, or unreadable: then removed)."""
    if not enabled:
        return None
    path = _path(key)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError, KeyError):  # cut short, or not ours
        path.unlink(missing_ok=True)
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # used now: the last to go when the cache is trimmed
    return arrays


def save(key: str, **arrays) -> None:
    """Store arrays under key, atomically; a cache that cannot be written is only a slower next run."""
    if not enabled:
        return
    path, tmp = _path(key), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".", suffix=".tmp", delete=False) as f:
            tmp = Path(f.name)
            np.savez(f, **arrays)
        os.replace(tmp, path)
        trim(keep=path)
    except OSError:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def trim(keep: Path | None = None, limit: int | None = None) -> None:
    """Remove the entries used longest ago until the cache holds at most ``limit`` bytes
    (default LIMIT); ``keep`` (the entry just written) stays whatever its size."""
    limit = LIMIT if limit is None else limit
    sized = []
    for path in entries():
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        sized.append((info.st_mtime, info.st_size, path))
    total = sum(size for _, size, _ in sized)
    for _, size, path in sorted(sized):
        if total <= limit:
            break
        if path != keep:
            path.unlink(missing_ok=True)
            total -= size


def entries() -> list[Path]:
    inputs = folder() / "inputs"
    return sorted(inputs.glob("*.npz")) if inputs.is_dir() else []


def clear() -> tuple[int, int]:
    """Remove every entry (and leftovers of interrupted writes); returns (files, bytes) removed."""
    inputs = folder() / "inputs"
    count = size = 0
    if inputs.is_dir():
        for path in list(inputs.glob("*.npz")) + list(inputs.glob(".*.tmp")):
            try:
                size += path.stat().st_size
                path.unlink()
                count += 1
            except FileNotFoundError:
                pass
    return count, size
