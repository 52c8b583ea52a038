"""The tasks cardcam-train knows, in one table that ``train``, ``evaluate``, ``ablate``,
``report`` and ``export`` all read.

A task is named ``NAME`` or ``NAME:ARG`` (``smiley:4000``: 4,000 cards per class;
``folder:DIR``: your pictures). Each entry says where its cards come from, the network
``train`` builds for it, and the preprocessing settings it trains with. Those settings travel
in the bundle, so the Pi sees exactly what training saw; the defaults here are the ones the
shipped models were trained with (models/README.md gives the commands).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable

from training import smileys
from training.data import MNIST_CREDIT, CardSet, DataError, concat, load_folder, load_mnist, render_font_digits


@dataclass(frozen=True)
class Task:
    name: str
    usage: str                 # how it is written: "smiley[:N]"
    description: str
    load: Callable[[str, str | None], tuple[CardSet, str]]  # (task, ARG or None) -> cards, where they came from
    arch: str = "lenet5"       # the network `train` builds when --arch is not given
    preprocess: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))  # PreprocessSettings fields


def _unknown(task: str) -> DataError:
    return DataError(f"unknown task {task!r} ({choices()})")


def _no_arg(load):
    def loader(task, arg):
        if arg is not None:
            raise _unknown(task)
        return load()
    return loader


def _digits01():
    return concat(load_mnist(digits=(0, 1)), render_font_digits((0, 1))), \
        f"{MNIST_CREDIT}, digits 0 and 1, inverted to dark-on-light cards; digits 0 and 1 rendered with Pillow's built-in font"


def _digits():
    return concat(load_mnist(), render_font_digits()), \
        f"{MNIST_CREDIT}, inverted to dark-on-light cards; digits rendered with Pillow's built-in font"


def _smileys(task, arg):
    count = str(smileys.DEFAULT_PER_CLASS) if arg is None else arg
    if not count.isdigit() or not 1 <= int(count) <= 100_000:
        raise DataError(f"task {task!r}: smiley:N needs N, the cards per class, in 1..100000")
    return smileys.make_smileys(int(count)), smileys.describe(int(count), 0)


def _folder(task, arg):
    if arg is None:
        raise _unknown(task)
    if not arg:
        raise DataError(f"task {task!r}: name the folder, folder:DIR (DIR/<label>/*.png)")
    return load_folder(arg), f"user images from {arg}"


# A face is several separate marks (eyes, mouth, tears): a wider paper window keeps them
# together (models/README.md, "Why 48x48 and paper_window=0.35").
_SMILEY_PREPROCESS = MappingProxyType({"paper_window": 0.35})

TASKS = {t.name: t for t in (
    Task("digits01", "digits01", "MNIST 0s and 1s plus font-rendered ones", _no_arg(_digits01)),
    Task("digits", "digits", "all MNIST digits plus font-rendered ones", _no_arg(_digits), arch="digitnet"),
    Task("smiley", "smiley[:N]", f"procedural happy and sad faces, N per class (default {smileys.DEFAULT_PER_CLASS})",
         _smileys, arch="smileynet", preprocess=_SMILEY_PREPROCESS),
    Task("folder", "folder:DIR", "your pictures, DIR/<label>/*.png|jpg", _folder),
)}


def choices() -> str:
    usages = [t.usage for t in TASKS.values()]
    return f"choose {', '.join(usages[:-1])} or {usages[-1]}"


def find(task: str) -> Task:
    """The table entry of a task name (``smiley:300`` -> smiley); DataError if there is none."""
    name = task.split(":", 1)[0]
    if name not in TASKS:
        raise _unknown(task)
    return TASKS[name]


def load_task(task: str) -> tuple[CardSet, str]:
    """Cards for a task name, and a sentence saying where they came from (for provenance)."""
    _, sep, arg = task.partition(":")
    return find(task).load(task, arg if sep else None)


def default_arch(task: str) -> str:
    """The network `train` builds for a task when none is named."""
    return find(task).arch


def task_preprocess(task: str, given: dict | None = None) -> dict:
    """The preprocessing settings (PreprocessSettings fields) a task trains with: its own, with
    ``given`` (--preprocess) over them. train and ablate both ask here, so they agree."""
    return dict(find(task).preprocess) | dict(given or {})
