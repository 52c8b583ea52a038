"""The optional extras (pyproject.toml) cardcam-train's commands need, checked before any work.

A missing one is one line naming the pip command that installs it, never a traceback, and never
after minutes of data preparation. Standard library only: this module runs before anything that
needs an extra is imported.
"""

from __future__ import annotations

import importlib.util
import re

# extra -> the modules it provides (import names). Every cardcam-train command needs "train".
EXTRAS = {
    "train": ("tqdm", "matplotlib", "threadpoolctl"),
    "keras": ("tensorflow", "keras"),
    "sheets": ("cv2",),
}
DISTRIBUTION = {"cv2": "opencv-python-headless"}  # what pip calls a module, where the names differ
PILLOW_FOR_TRAINING = (10, 1)  # ImageFont.load_default(size=): font digits, printed cards, sheets


class ExtraMissing(RuntimeError):
    """An optional extra that a command needs is not installed; the message says how to install it."""


def missing(extra: str) -> list[str]:
    """The packages of ``extra`` that are not installed (pip's names), or [] when all are."""
    gone = [DISTRIBUTION.get(m, m) for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if extra == "train":
        from PIL import __version__ as pillow

        if tuple(int(n) for n in re.findall(r"\d+", pillow)[:2]) < PILLOW_FOR_TRAINING:
            gone.append(f"pillow>={'.'.join(map(str, PILLOW_FOR_TRAINING))} (this is {pillow})")
    return gone


def require(extra: str, who: str = "cardcam-train") -> None:
    """ExtraMissing('<who> needs tqdm, threadpoolctl (not installed): pip install 'cardcam[train]'')."""
    gone = missing(extra)
    if gone:
        raise ExtraMissing(f"{who} needs {', '.join(gone)} (not installed): pip install 'cardcam[{extra}]' "
                           f"(in a clone: pip install -e '.[{extra}]')")
