"""The model file: where it is, loading it fully checked, and the slot the running model sits in.

- ``model_path``: the configured file; in simulation the shipped digits01 model stands in.
- ``load_model``: a bundle and its runtime, checked end to end (format, task, labels, a forward
  pass that gives finite numbers, the whole frame path on the sample frames); ``ModelRefused``
  for a valid bundle this appliance will not run.
- ``ModelWatcher``: notices a changed file once it has stopped changing.
- ``ModelSlot``: the running model. It watches the file, reloads it, and refuses bad files: a
  bad model never replaces a running one; with no model yet it retries.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from device.bundle import BundleError, load_bundle
from device.camera import SAMPLES_DIR
from device.config import DEFAULT_MODEL
from device.preprocess import ImageError, load_frame, preprocess
from device.runtime import make_runtime


def _shipped_model(name: str = "digits01.npz") -> Path:
    """A shipped model: the checkout's models/, or, in an installed package, device/models (the
    wheel carries models/ there)."""
    here = Path(__file__).resolve().parent
    installed = here / "models" / name
    return installed if installed.exists() else here.parent / "models" / name


CHECKOUT_MODEL = _shipped_model()


def model_path(config, simulate: bool) -> Path:
    """The configured model; in simulation, the shipped models/digits01.npz (a checkout's, or an
    installed package's) stands in for a default path that does not exist (a laptop has no
    /var/lib/cardcam)."""
    path = Path(config.model.path)
    if simulate and config.model.path == DEFAULT_MODEL and not path.exists() and CHECKOUT_MODEL.exists():
        return CHECKOUT_MODEL
    return path


class ModelRefused(ValueError):
    """A valid bundle that this appliance will not run (wrong task, bad outputs)."""


def load_model(path, runtime_kind="auto", task="", like=None, threads=1):
    """A bundle and its runtime, fully checked; raises BundleError, ModelRefused or RuntimeUnavailable.

    ``task``: the config's required task, if any. ``like``: the running bundle, whose task and
    labels a hot-reloaded file must keep (switching task is a config change and SIGHUP).
    """
    bundle = load_bundle(path)
    meta_task = bundle.meta.get("task")
    if task and meta_task != task:
        raise ModelRefused(f"{path}: model task is {meta_task!r}, the config asks for {task!r}")
    if like is not None and (meta_task != like.meta.get("task") or list(bundle.labels) != list(like.labels)):
        raise ModelRefused(f"{path}: wrong task: the file is {meta_task!r} with labels {' '.join(bundle.labels)}, "
                           f"the running model is {like.meta.get('task')!r} with labels {' '.join(like.labels)}; "
                           "to switch task, point [model] path at it and send SIGHUP")
    runtime = make_runtime(bundle, runtime_kind, threads)
    # One forward pass on a blank and a busy input: weights that overflow to NaN show here. The
    # busy one is a fixed pseudo-random pattern: np.random would pull in OpenSSL (~4 MB resident).
    probe = np.zeros((2,) + tuple(bundle.input_shape), np.float32)
    probe[1] = (np.arange(probe[1].size, dtype=np.float32) * np.float32(0.618034) % 1.0).reshape(bundle.input_shape)
    with np.errstate(all="ignore"):  # overflow is the finding here, not a warning
        out = runtime.predict(probe)
    if out.shape != (2, len(bundle.labels)) or not np.isfinite(out).all():
        raise ModelRefused(f"{path}: the network gives non-finite or misshaped outputs on a test input")
    check_on_samples(bundle, runtime, path)
    return bundle, runtime


def check_on_samples(bundle, runtime, path) -> None:
    """The whole frame path (the bundle's preprocessing settings, then the network) on the shipped
    sample frames, with and without a card: settings that crash on a frame are found here, before
    the model replaces one that works, not at the first frame without a card."""
    for sample in sorted(SAMPLES_DIR.glob("*.png")):
        try:
            frame = load_frame(sample)
        except ImageError:  # a damaged installation is not the model's fault
            continue
        try:
            prepared = preprocess(frame, bundle.preprocess, bundle.input_shape)
            if prepared.found:
                with np.errstate(all="ignore"):
                    runtime.predict(prepared.input[None])
        except Exception as e:
            raise ModelRefused(f"{path}: the model fails on the sample frame {sample.name} "
                               f"({type(e).__name__}: {e})") from None


def file_signature(path) -> tuple | None:
    """What changes when a file is replaced or written to: inode, size, modification time."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ModelWatcher:
    """Polls a model file; says when a changed file has stayed unchanged for ``stable_time``.

    A plain copy over the file (``scp model.npz pi:...``) shows up as a growing size and moving
    mtime: it is not looked at until it stops. ``known`` is the file last tried (taken or
    refused), so a refused file is not tried again until it changes.
    """

    def __init__(self, path, stable_time: float):
        self.path = Path(path)
        self.stable_time = stable_time
        self.known = None
        self.missing = False
        self._pending = None
        self._since = 0.0

    def poll(self, now: float) -> bool:
        sig = file_signature(self.path)
        self.missing = sig is None
        if sig is None or sig == self.known:
            self._pending = None
            return False
        if sig != self._pending:
            self._pending, self._since = sig, now
        return now - self._since >= self.stable_time


class ModelSlot:
    """The running model (``bundle``, ``runtime``; None until one loads) and its file.

    ``poll(now)``, between two frames, takes a changed file once it has stopped changing (when
    ``[model] watch``), and with no model yet retries every ``retry_interval``. ``load(reason)``
    loads the configured file and swaps it in only if every check passes: a bad model never
    replaces a running one (``refusals`` counts those), and a file still being written is no
    verdict yet. ``on_swap(bundle, runtime)`` hears of each model taken, ``on_verdict()`` of every
    load decided either way.
    """

    def __init__(self, config, simulate: bool, log, on_swap=lambda bundle, runtime: None, on_verdict=lambda: None):
        self.simulate = simulate
        self.log = log
        self.on_swap = on_swap
        self.on_verdict = on_verdict
        self.bundle = self.runtime = None
        self.error = None      # why no model runs (while none does)
        self.reloads = 0       # models swapped in after the first
        self.refusals = 0      # files refused while a model ran
        self.configure(config)

    def configure(self, config) -> None:
        """The [model] section (at start and on SIGHUP): which file, how it is watched."""
        self.config = config.model
        self.path = model_path(config, self.simulate)
        self.watcher = ModelWatcher(self.path, self.config.stable_time)
        self._next_poll = self._next_retry = time.monotonic()

    def poll(self, now: float) -> bool:
        """Between frames: True when a model runs."""
        if self.bundle is None:
            # No model yet: try again when the file changes, or every retry_interval.
            if self.watcher.poll(now) or now >= self._next_retry:
                self._next_retry = now + self.config.retry_interval
                self.load("retry")
            return self.bundle is not None
        if self.config.watch and now >= self._next_poll:
            self._next_poll = now + self.config.poll_interval
            was_missing = self.watcher.missing
            if self.watcher.poll(now):
                self.load("changed")
            if self.watcher.missing and not was_missing:
                self.log(f"model file {self.watcher.path} is gone; still running {self.bundle.name}")
        return True

    def load(self, reason: str) -> bool:
        """Load the configured model; swap it in if good, otherwise keep whatever runs."""
        path, running, m = self.path, self.bundle, self.config
        before = file_signature(path)
        try:
            bundle, runtime = load_model(path, m.runtime, m.task, like=running if reason == "changed" else None,
                                         threads=m.threads)
        except Exception as e:  # whatever a file does to the loader, it is a refusal, never a crash
            if file_signature(path) != before:  # still being written: not a verdict yet
                return False
            self.watcher.known = before
            self._refused(e, path, running)
            return False
        self.watcher.known = before
        self.bundle, self.runtime, self.error = bundle, runtime, None
        self.reloads += running is not None
        verb = "model loaded" if running is None else "model reloaded"
        self.log(f"{verb}: {bundle.name} ({bundle.meta.get('task')}, labels {' '.join(bundle.labels)}, "
                 f"runtime {runtime.description}) from {path}")
        self.on_swap(bundle, runtime)
        self.on_verdict()
        return True

    def _refused(self, e: Exception, path, running) -> None:
        self.refusals += running is not None
        message = str(e) if isinstance(e, (BundleError, ModelRefused)) else \
            f"{path}: cannot load ({type(e).__name__}: {e})"
        message = " ".join(message.split())  # one log line, whatever the exception said
        if running is not None:
            self.log(f"model refused: {message}; still running {running.name}")
        else:
            if message != self.error:
                self.log(f"model fault: {message}; retrying every {self.config.retry_interval:g} s")
            self.error = message
        self.on_verdict()
