"""Checking a command's options before it does any work: argparse types for numbers, and the
places it will write."""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path


def count(low: int, high: int | None = None):
    """An argparse type: a whole number >= low (and <= high), checked before any work, not at
    the first epoch."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low or (high is not None and value > high):
            within = f">= {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be a whole number {within}, got {text!r}")
        return value
    return parse


def number(low: float, inclusive: bool, what: str = "a number"):
    """An argparse type: a finite number > low (>= low if ``inclusive``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (low <= value if inclusive else low < value) or value == math.inf:  # nan fails both
            raise argparse.ArgumentTypeError(f"must be {what} {'>=' if inclusive else '>'} {low:g}, got {text!r}")
        return value
    return parse


positive = number(0, inclusive=False)
seconds = number(0, inclusive=True, what="a number of seconds")


def writable_folder(out, flag: str = "--out", folder: bool = False) -> None:
    """Make the folder an output file goes in (``folder=True``: the output folder itself) and
    check it takes a file, before any work: a model trained for minutes must not fail to save, and
    an error must name what the user typed, not a temporary file. ValueError('<flag> <out>: ...')."""
    where = Path(out) if folder else Path(out).parent
    if not folder and Path(out).is_dir():
        raise ValueError(f"{flag} {out}: is a folder; name the file to write in it")
    if where.exists() and not where.is_dir():
        raise ValueError(f"{flag} {out}: {where} is a file, not a folder")
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as e:
        raise ValueError(f"{flag} {out}: cannot write to {where}: {e.strerror or e}") from None


KINDS = {".npz": "a model bundle", ".tflite": "a TFLite model", ".pdf": "a PDF", ".html": "an HTML page"}


def output_file(out, suffix: str, flag: str = "--out", force: bool | None = None) -> None:
    """Check an output file before any work: its name ends in ``suffix`` (a model is never
    written over a picture, a PDF never named .png), its folder takes a file (writable_folder),
    and with ``force`` False an existing file is refused. ValueError('<flag> <out>: ...')."""
    if Path(out).suffix.lower() != suffix and not Path(out).is_dir():  # a folder: writable_folder says so
        raise ValueError(f"{flag} {out}: {KINDS.get(suffix, 'the file')} is written here, so the name must end "
                         f"in {suffix}")
    writable_folder(out, flag)
    if force is False and Path(out).exists():
        raise ValueError(f"{flag} {out}: exists; choose another name, or add --force to replace it "
                         f"(and the .tflite and report made from it)")
