"""Threads for the NumPy trainer's convolutions (the bulk of a training step), BatchNorm and
max-pool.

NumPy's copies, arithmetic and OpenBLAS's products release the GIL, so a layer whose work is
cut into pieces (groups of pictures, blocks of the inner axis, ranges of rows) can hand the
pieces to threads and run on several cores at once. The pieces depend on the arrays' shapes
only, never on the number of threads, and each piece does the same arithmetic wherever it runs:
a run gives the same numbers, bit for bit, on one thread or eight (a model stays reproducible
on any number of cores).

How many threads: ``CARDCAM_TRAIN_THREADS`` if set, else one per core this process may run on,
at most ``MAX_THREADS``; ``set_threads(1)`` runs everything on the calling thread. The ablation
lab starts one worker process per core with ``CARDCAM_TRAIN_THREADS=1``.

Not fewer when the machine is busy: the threads wait without spinning, and a piece goes to
whichever thread is free, so a helper the scheduler runs late costs little. On this project's
2-core machine, two threads still made digitnet's training step faster than one with one or two
other processes spinning (README, Benchmarks: the measurements behind the code). A rule from the 1-minute load average (tried first) counts the trainer's own work of the
last minute too, such as its data preparation on every core just before training, and then
gives one thread.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

ENV = "CARDCAM_TRAIN_THREADS"
MAX_THREADS = 8

_threads: int | None = None  # None: not decided yet (read on first use)
_pool: ThreadPoolExecutor | None = None


def threads() -> int:
    """The number of threads pieces are shared among (1: all on the calling thread)."""
    global _threads
    if _threads is None:
        value = os.environ.get(ENV, "").strip()
        try:
            n = int(value) if value else len(os.sched_getaffinity(0))
        except AttributeError:  # no sched_getaffinity (macOS, Windows)
            n = os.cpu_count() or 1
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"{ENV}: must be a whole number >= 1, got {value!r}")
        _threads = min(n, MAX_THREADS)
    return _threads


def set_threads(n: int | None) -> None:
    """Use n threads from now on (1: everything on the calling thread); None: as many as
    ``CARDCAM_TRAIN_THREADS`` or the cores say, read again on next use."""
    global _threads, _pool
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"trainer threads must be a whole number >= 1, got {n!r}")
    if _pool is not None:
        _pool.shutdown()
        _pool = None
    _threads = None if n is None else min(n, MAX_THREADS)


def _forget_pool():  # a forked child (the data preparation's workers) has none of the threads
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_pool)


class _Job:
    """fn over a list of pieces, each taken by whichever thread asks next: when a helper thread
    starts late (the machine is busy), the calling thread has done more of the pieces itself
    instead of waiting for it."""

    def __init__(self, fn, pieces):
        self.fn, self.pieces = fn, pieces
        self.results = [None] * len(pieces)
        self.error: BaseException | None = None
        self._next = itertools.count()  # next() on it is atomic under the GIL
        self._left = len(pieces)
        self._lock = threading.Lock()
        self.done = threading.Event()

    def work(self):
        while (i := next(self._next)) < len(self.pieces):
            try:
                self.results[i] = self.fn(self.pieces[i])
            except BaseException as e:  # noqa: BLE001  (raised again on the calling thread)
                self.error = e
            with self._lock:
                self._left -= 1
                if self._left == 0:
                    self.done.set()


def each(fn, pieces: list) -> list:
    """fn(piece) for every piece, shared among the threads; returns when all are done, with
    fn's results in the order of the pieces (an exception in any is raised here). Pieces must
    not overlap in what they write."""
    global _pool
    helpers = min(threads(), len(pieces)) - 1
    if helpers < 1:
        return [fn(piece) for piece in pieces]
    if _pool is None:
        _pool = ThreadPoolExecutor(threads() - 1, "cardcam-train")
    job = _Job(fn, pieces)
    for _ in range(helpers):
        _pool.submit(job.work)
    job.work()
    job.done.wait()
    if job.error is not None:
        raise job.error
    return job.results
