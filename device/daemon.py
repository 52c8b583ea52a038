"""`cardcam run`: the appliance. One loop: frame → preprocess → network → decision → LEDs.

Around that loop, the things that keep an appliance alive for months:

- systemd: READY=1 once the first frame is classified, WATCHDOG=1 from the loop itself (a stuck
  loop stops sending and gets restarted), STATUS= for `systemctl status`, STOPPING=1, all over
  the $NOTIFY_SOCKET datagram socket, no extra dependency;
- signals: SIGTERM/SIGINT end the loop (LEDs off, camera closed, exit 0); SIGHUP reloads the
  config and the model;
- the model file is watched: a new file is taken only once it has stopped changing and passed
  every check, between two frames; a bad one is refused and the running model stays;
- camera faults are logged and retried with a growing (capped) pause; a missing model is retried;
  the status LED says which fault it is;
- optionally ([web]), a web page and JSON API on a thread of its own (device/webserver.py), fed
  references to the latest frame and result; the loop never waits on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.bundle import BundleError
from device.camera import CameraError, ReplayFinished, choose_source_kind, is_raspberry_pi, open_source
from device.config import Config, ConfigError, load_config
from device.classify import classify
from device.decision import Decider
from device.modelfile import ModelRefused, ModelWatcher, file_signature, load_model, model_path
from device.outputs import OutputError, Outputs, TerminalRenderer, mock_pin_factory
from device.preprocess import ImageError, load_frame, preprocess
from device.runtime import make_runtime
from device.runtime import describe as describe_runtime
from device.status import state_file

# --- systemd ---------------------------------------------------------------------------------

class SystemdNotifier:
    """sd_notify(3) by hand: one datagram per message to $NOTIFY_SOCKET, nothing if it is unset."""

    def __init__(self, environ=os.environ):
        self.address = None
        self.socket = None
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            self.address = "\0" + address[1:]
        elif address.startswith("/"):
            self.address = address
        if self.address:
            # Non-blocking: a notify socket that nobody reads fills up, and a blocked send would
            # stop the loop and SIGTERM with it. A message that does not fit is dropped and counted.
            self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self.watchdog_interval = None
        usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
        if self.socket and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2  # twice per period, as sd_watchdog_enabled advises
        self._last_watchdog = 0.0
        self.dropped = 0     # messages dropped because the socket was full
        self.error = None    # a problem not yet reported (the daemon logs it, then clears it)
        self._problem = None  # the problem last reported: not reported again while it lasts

    def notify(self, *lines: str) -> bool:
        if self.socket is None:
            return False
        try:
            self.socket.sendto("\n".join(lines).encode(), self.address)
        except BlockingIOError:
            self.dropped += 1
            self._report(f"systemd's notify socket {self.address!r} is full; dropping messages until it is read")
            return False
        except OSError as e:  # systemd gone or socket removed: keep running, say it once
            self._report(f"cannot notify systemd at {self.address!r}: {e.strerror or e}")
            return False
        self._problem = None
        return True

    def _report(self, problem: str) -> None:
        if problem != self._problem:
            self._problem = self.error = problem

    def watchdog(self, now: float) -> None:
        if self.watchdog_interval is not None and now - self._last_watchdog >= self.watchdog_interval:
            self._last_watchdog = now
            self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None


# --- the model and its file ------------------------------------------------------------------

# --- one frame -------------------------------------------------------------------------------

STAGES = ("grab", "preprocess", "forward", "decide", "output")


@dataclass
class Result:
    label: str | None
    confidence: float
    changed: bool
    reason: str  # why there was no card in this frame ("" when there was)


class Pipeline:
    """preprocess → forward → decide for one frame, timing each stage (seconds, summed)."""

    def __init__(self, bundle, runtime, decision):
        self.decider = Decider(bundle.labels, decision.window, decision.enter, decision.exit)
        self.set_model(bundle, runtime)
        self.times = dict.fromkeys(STAGES, 0.0)
        self.frames = 0
        self.found = None  # the last frame's Classification

    def set_model(self, bundle, runtime) -> None:
        self.bundle, self.runtime = bundle, runtime
        self.settings, self.input_shape = bundle.preprocess, bundle.input_shape
        self.decider.relabel(bundle.labels)

    def step(self, frame: np.ndarray) -> Result:
        found = classify(frame, self.bundle, self.runtime)
        self.found = found  # for the web page
        t2 = time.perf_counter()
        decision = self.decider.update(found.probabilities)
        t3 = time.perf_counter()
        self.times["preprocess"] += found.seconds[0]
        self.times["forward"] += found.seconds[1]
        self.times["decide"] += t3 - t2
        prepared = found.prepared
        self.frames += 1
        return Result(decision.label, decision.confidence, decision.changed, prepared.reason)


class FrameErrors:
    """Frames the pipeline failed on: counted, and logged at most once per ``interval`` seconds."""

    def __init__(self, interval: float = 10.0):
        self.interval = interval
        self.count = 0           # since start
        self.last = None         # the last error's message
        self._unlogged = 0
        self._next_log = 0.0

    def add(self, error: Exception, now: float) -> str | None:
        """Count one; the line to log, if one is due."""
        self.count += 1
        self._unlogged += 1
        self.last = f"{type(error).__name__}: {error}"
        if now < self._next_log:
            return None
        line = f"frame skipped: {self.last}" if self._unlogged == 1 else \
            f"{self._unlogged} frames skipped in {self.interval:g} s, the last: {self.last}"
        self._unlogged, self._next_log = 0, now + self.interval
        return line


# --- the daemon ------------------------------------------------------------------------------

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Stop(BaseException):
    """Raised by the signal handler to leave a blocking call (camera read, file read) at once."""


class Daemon:
    def __init__(self, config: Config, config_path=None, simulate=False, out=None, environ=None):
        self.config = config
        self.config_path = config_path
        self.simulate = simulate
        self.out = out or sys.stdout
        self.environ = os.environ if environ is None else environ
        self.journal = bool(self.environ.get("JOURNAL_STREAM"))
        self.renderer = TerminalRenderer(self.out) if simulate and self.out.isatty() and not self.journal else None
        self.notifier = SystemdNotifier(self.environ)
        self.stopping = False
        self.reload_requested = False
        self._interruptible = False  # a stop signal raises _Stop instead of waiting for the loop
        self.outputs = None
        self.source = None
        self.pipeline = None
        self.model_error = None
        self.camera_error = None
        self.fault_since = None
        self.backoff = 0.0
        self.ready = False
        self.started = time.monotonic()
        self.fps = None  # frames per second, once measured
        self.frame_errors = FrameErrors()
        self.result = Result(None, 0.0, False, "starting")
        self.live = None  # device.webserver.LiveState while [web] is enabled
        self.teaching = None  # device.teachmode.TeachMode while [teach] is enabled
        self._keys = None
        self.web = None
        self.reloads = 0
        self.refusals = 0
        self._state_broken = None  # a state file that could not be written: not tried again
        self._watcher = None

    # -- small helpers --

    def log(self, message: str) -> None:
        line = message if self.journal else f"{time.strftime('%H:%M:%S')} {message}"
        if self.renderer is not None:
            self.renderer.log(line)
        else:
            self.out.write(line + "\n")
            self.out.flush()

    def sleep(self, seconds: float) -> None:
        """A pause that a stop request cuts short, and that keeps the watchdog fed."""
        end = time.monotonic() + seconds
        while not self.stopping:
            now = time.monotonic()
            if now >= end:
                return
            self.notifier.watchdog(now)
            time.sleep(min(0.02, end - now))

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested = True
            return
        self.stopping = True
        if self._interruptible:  # a camera or file read may block for long: leave it now
            raise _Stop()

    @contextlib.contextmanager
    def interruptible(self):
        """A stop signal during the body leaves it at once (with _Stop). Only for work that changes
        nothing the shutdown needs: reading a frame, a model file or the config."""
        if self.stopping:
            raise _Stop()
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def status_line(self) -> str:
        model = self.pipeline.bundle.name if self.pipeline else "none"
        if self.model_error and not self.pipeline:
            return f"waiting for a model: {self.model_error}"
        if self.fault_since is not None:
            return f"camera fault: {self.camera_error}; model {model}"
        if not self.ready:
            return f"starting: model {model}, waiting for the first frame"
        shown = f"{self.result.label} ({self.result.confidence:.0%})" if self.result.label is not None else "no card"
        fps = f", {self.fps:.1f} fps" if self.fps is not None else ""
        return f"{shown}{fps}, model {model}"

    def write_state(self, state: str) -> None:
        path = state_file(self.config.daemon.state_file, self.environ)
        if path == self._state_broken:
            path = None
        if (not path and self.live is None) or self.outputs is None:
            return
        record = {
            "pid": os.getpid(), "state": state, "label": self.result.label,
            "confidence": round(self.result.confidence, 4), "fps": round(self.fps, 1) if self.fps is not None else None,
            "frames": self.pipeline.frames if self.pipeline else 0,
            "model": self.pipeline.bundle.name if self.pipeline else None,
            "model_sha256": self.pipeline.bundle.meta["weights_sha256"] if self.pipeline else None,
            "model_path": str(self.pipeline.bundle.path) if self.pipeline else None,
            "task": self.pipeline.bundle.meta.get("task") if self.pipeline else None,
            "labels": list(self.pipeline.bundle.labels) if self.pipeline else None,
            "reloads": self.reloads, "refusals": self.refusals,
            "camera_error": self.camera_error if self.fault_since is not None else None,
            "model_error": self.model_error,
            "frame_errors": self.frame_errors.count, "frame_error": self.frame_errors.last,
            "notify_dropped": self.notifier.dropped,
        } | self.outputs.snapshot()
        if self.live is not None:
            self.live.set_record(record)
        if not path:
            return
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(record, f)
            os.replace(tmp, path)
        except OSError as e:
            self.log(f"cannot write state file {path}: {e.strerror or e}")
            self._state_broken = path

    def set_status(self, status: str) -> None:
        if self.outputs is not None:
            self.outputs.set_status(status)

    # -- model --

    def try_load_model(self, reason: str) -> bool:
        """Load the configured model; swap it in if good, otherwise keep whatever runs."""
        path = model_path(self.config, self.simulate)
        watcher = self._watcher
        before = file_signature(path)
        running = self.pipeline.bundle if self.pipeline else None
        try:
            with self.interruptible():
                bundle, runtime = load_model(path, self.config.model.runtime, self.config.model.task,
                                             like=running if reason == "changed" else None,
                                             threads=self.config.model.threads)
        except Exception as e:  # whatever a file does to the loader, it is a refusal, never a crash
            if file_signature(path) != before:  # still being written: not a verdict yet
                return False
            if watcher is not None:
                watcher.known = before
            self.refusals += running is not None
            message = str(e) if isinstance(e, (BundleError, ModelRefused)) else \
                f"{path}: cannot load ({type(e).__name__}: {e})"
            message = " ".join(message.split())  # one log line, whatever the exception said
            if running is not None:
                self.log(f"model refused: {message}; still running {running.name}")
            elif message != self.model_error:
                self.log(f"model fault: {message}; retrying every {self.config.model.retry_interval:g} s")
                self.set_status("model fault")
            if running is None:
                self.model_error = message
            self.write_state("running" if running else "model fault")
            return False
        if watcher is not None:
            watcher.known = before
        if self.pipeline is None:
            self.pipeline = Pipeline(bundle, runtime, self.config.decision)
        else:
            self.pipeline.set_model(bundle, runtime)
            self.reloads += 1
        self.model_error = None
        self._show_model()
        verb = "model loaded" if running is None else "model reloaded"
        self.log(f"{verb}: {bundle.name} ({bundle.meta.get('task')}, labels {' '.join(bundle.labels)}, "
                 f"runtime {runtime.description}) from {path}")
        self._check_outputs(bundle)
        self.write_state("running" if self.ready else "starting")
        return True

    def _show_model(self) -> None:
        """Tell the web page (if it is on) which model runs."""
        if self.live is not None and self.pipeline is not None:
            self.live.set_model(self.pipeline.bundle, self.config.model.runtime, self.config.model.threads,
                                self.pipeline.runtime.description)

    def _check_outputs(self, bundle) -> None:
        missing = [l for l in bundle.labels if l not in self.config.outputs.leds]
        if missing and not self.config.outputs.display:
            self.log(f"note: labels {' '.join(missing)} have no LED in [outputs] leds; they show only on screen")

    # -- camera --

    def grab(self):
        """The next frame, or None after a camera fault (logged, paused with backoff)."""
        t0 = time.perf_counter()
        try:
            with self.interruptible():
                if self.source is None:
                    self.source = open_source(self.config, self.simulate, sleep=self.sleep, log=self.log)
                    self.source.open()
                frame = self.source.read()
        except CameraError as e:
            self._camera_fault(str(e))
            return None
        if self.fault_since is not None:
            self.log(f"camera back after {time.monotonic() - self.fault_since:.1f} s")
            self.fault_since, self.camera_error = None, None
            self.set_status("running" if self.ready else "starting")
            self.write_state("running")
        if self.pipeline is not None:
            self.pipeline.times["grab"] += time.perf_counter() - t0
        return frame

    def _camera_fault(self, message: str) -> None:
        self._close_source()
        now = time.monotonic()
        if self.fault_since is None:
            self.fault_since, self.backoff = now, 0.05
            self.log(f"camera fault: {message}; retrying")
            self.set_status("camera fault")
        elif message != self.camera_error:
            self.log(f"camera fault: {message}")
        self.camera_error = message
        self.write_state("camera fault")
        self.notifier.notify(f"STATUS={self.status_line()}")
        self.sleep(self.backoff)
        # Double the pause each time, capped, so a camera that comes back is seen within a second.
        self.backoff = min(self.backoff * 2, self.config.daemon.max_backoff)

    def _close_source(self) -> None:
        source, self.source = self.source, None
        if source is not None:
            source.close()

    # -- the web page --

    def start_web(self) -> None:
        """Serve [web] if enabled; a port that cannot be had is logged, and the appliance runs on."""
        web = self.config.web
        if not web.enabled:
            return
        from device.webserver import LiveState, WebServer, is_loopback

        if self.live is None:
            self.live = LiveState()
            self.live.teaching = self.teaching
        self.write_state("running" if self.ready else "starting")  # the page's status from the start
        self._show_model()
        try:
            self.web = WebServer(self.live, web.host, web.port, log=self.log).start()
        except OSError as e:
            self.log(f"web page off: cannot listen on {web.host}:{web.port}: {e.strerror or e}; "
                     "fix [web] and send SIGHUP")
            return
        self.log(f"web page at {self.web.url}")
        if not is_loopback(web.host):
            self.log(f"warning: the web page listens on {web.host}, reachable from the network without a "
                     "password (camera picture, model); use host = \"127.0.0.1\" and an ssh tunnel to keep it private")

    def stop_web(self) -> None:
        web, self.web = self.web, None
        if web is not None:
            web.stop()

    # -- teach mode --

    def start_teach(self) -> None:
        """[teach]: its buttons, and in simulation the keyboard (device/teachmode.py). Buttons that
        cannot be had are logged, and the appliance runs on without teach mode."""
        if not self.config.teach.enabled:
            return
        from device.teachmode import KEYS, TeachMode, read_keys

        try:
            self.teaching = TeachMode(self.config.teach, self.log, self.pin_factory)
        except OutputError as e:
            self.log(f"teach mode off: {e}; fix [teach] and send SIGHUP")
            return
        if self.live is not None:
            self.live.teaching = self.teaching
        self.log(f"teach mode: labels {' '.join(self.teaching.labels)}, examples in {self.teaching.examples}")
        if self.simulate and self._keys is None and sys.stdin is not None and not self.journal:
            self._keys = read_keys(sys.stdin, lambda: self.teaching)
            self.log(f"teach keys: {KEYS}")

    def stop_teach(self) -> None:
        teaching, self.teaching = self.teaching, None
        if self.live is not None:
            self.live.teaching = None
        if teaching is not None:
            teaching.close()

    # -- reload on SIGHUP --

    def reload(self) -> None:
        self.reload_requested = False
        try:
            with self.interruptible():  # the config path might be a FIFO
                config, where = load_config(self.config_path)
        except ConfigError as e:
            self.log(f"config reload refused: {e}; keeping the running config")
            return
        old, self.config = self.config, config
        self.log(f"reloading ({where})")
        if config.camera != old.camera:
            self._close_source()
        if config.outputs != old.outputs:
            try:
                outputs = Outputs.from_config(config.outputs, self.pin_factory)
            except OutputError as e:
                self.log(f"new [outputs] refused: {e}")
                config.outputs = old.outputs
            else:
                status = self.outputs.status
                self.outputs.close()
                self.outputs = outputs
                self.outputs.set_status(status)
                self.outputs.show(self.result.label)
        if config.web != old.web or (config.web.enabled and self.web is None):
            self.stop_web()
            if not config.web.enabled:
                self.live = None
                if old.web.enabled:
                    self.log("web page off")
            self.start_web()
        if config.teach != old.teach:
            self.stop_teach()
            self.start_teach()
        self._watcher = ModelWatcher(model_path(config, self.simulate), config.model.stable_time)
        if self.try_load_model("sighup") and config.decision != old.decision:
            self.pipeline.decider = Decider(self.pipeline.bundle.labels, config.decision.window,
                                            config.decision.enter, config.decision.exit)

    # -- the loop --

    def run(self) -> int:
        handlers = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS + (signal.SIGHUP,)}
        try:
            return self._run()
        except _Stop:
            return 0
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)

    def _run(self) -> int:
        self.pin_factory = mock_pin_factory() if self.simulate else None
        try:
            self.outputs = Outputs.from_config(self.config.outputs, self.pin_factory)
        except OutputError as e:
            self.log(f"error: {e}")
            return 2
        with contextlib.ExitStack() as stack:
            stack.callback(self._shutdown)
            stack.callback(self.stop_web)  # first out: the page stops before the LEDs go off
            stack.callback(self.stop_teach)
            self.start_teach()
            self.start_web()
            self.set_status("starting")
            self.outputs.show(None)
            self._watcher = ModelWatcher(model_path(self.config, self.simulate), self.config.model.stable_time)
            self.try_load_model("start")
            self.notifier.notify(f"STATUS={self.status_line()}")
            next_status = next_poll = next_retry = time.monotonic()
            frames_at, fps_since = 0, time.monotonic()
            while not self.stopping:
                now = time.monotonic()
                self.notifier.watchdog(now)
                if self.notifier.error:  # each problem once, not at every message
                    self.log(self.notifier.error)
                    self.notifier.error = None
                if self.reload_requested:
                    self.reload()
                if self.pipeline is None:
                    # No model yet: try again when the file changes, or every retry_interval.
                    if self._watcher.poll(now) or now >= next_retry:
                        next_retry = now + self.config.model.retry_interval
                        self.try_load_model("retry")
                    if self.pipeline is None:
                        self.notifier.notify(f"STATUS={self.status_line()}")
                        self.sleep(min(self.config.model.poll_interval, 0.2))
                        continue
                elif self.config.model.watch and now >= next_poll:
                    next_poll = now + self.config.model.poll_interval
                    was_missing = self._watcher.missing
                    if self._watcher.poll(now):
                        self.try_load_model("changed")
                    if self._watcher.missing and not was_missing:
                        self.log(f"model file {self._watcher.path} is gone; still running {self.pipeline.bundle.name}")
                try:
                    frame = self.grab()
                except ReplayFinished as e:
                    self.log(f"replay finished: {e}")
                    break
                if frame is None or self.stopping:
                    continue
                try:
                    result = self.pipeline.step(frame)
                except Exception as e:  # this frame only: skipped, counted, logged now and then
                    line = self.frame_errors.add(e, time.monotonic())
                    if line:
                        self.log(line)
                        self.write_state("running" if self.ready else "starting")
                    continue
                self.result = result
                if self.live is not None:
                    self.live.publish(frame, self.pipeline.found, result)
                if self.teaching is not None:  # presses since the last frame, with this frame
                    self.teaching.serve(self, frame, self.pipeline.found.prepared)
                t0 = time.perf_counter()
                if not self.ready:
                    self.ready = True
                    self.set_status("running")
                    self.notifier.notify("READY=1", f"STATUS={self.status_line()}")
                    self.log(f"ready: first frame classified {time.monotonic() - self.started:.2f} s after start "
                             f"({self.source.describe()})")
                    # fps counts from here: the time to load and start is not frame time.
                    frames_at, fps_since = self.pipeline.frames, time.monotonic()
                    next_status = fps_since + self.config.daemon.status_interval
                if result.changed:
                    self.outputs.show(result.label)
                    reason = result.reason or "low confidence"
                    shown = f"{result.label} ({result.confidence:.0%})" if result.label is not None \
                        else "no card" if reason == "no card" else f"no card ({reason})"
                    self.log(f"shows {shown}")
                    self.write_state("running")
                self.pipeline.times["output"] += time.perf_counter() - t0
                now = time.monotonic()
                if now >= next_status:
                    elapsed = now - fps_since
                    self.fps = (self.pipeline.frames - frames_at) / elapsed if elapsed > 0 else 0.0
                    frames_at, fps_since = self.pipeline.frames, now
                    next_status = now + self.config.daemon.status_interval
                    self.notifier.notify(f"STATUS={self.status_line()}")
                    self.write_state("running")
                if self.renderer is not None:
                    self.renderer.render(self.outputs.snapshot(), result.label, result.confidence, self.fps or 0.0,
                                         self.pipeline.bundle.name)
        return 0

    def _shutdown(self) -> None:
        """On any exit: tell systemd, everything off, camera closed."""
        self.notifier.notify("STOPPING=1", "STATUS=stopping")
        if self.renderer is not None:
            self.renderer.close()
        try:
            self.outputs.off()
            self.write_state("stopped")
        finally:
            self._close_source()
            self.outputs.close()
            self.notifier.close()
            self.log("stopped: LEDs off, camera closed")


def _stop_at_once(signum, frame):
    raise _Stop()


def run(args) -> int:
    """`cardcam run [--config PATH] [--simulate]`."""
    # Until the loop takes signals over, a stop signal ends the start-up at once, with nothing
    # yet to turn off (the config file itself could be a FIFO that never opens).
    handlers = {s: signal.signal(s, _stop_at_once) for s in STOP_SIGNALS}
    try:
        return _make_daemon(args).run()
    except _Stop:
        return 0
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


def _make_daemon(args) -> "Daemon":
    config, where = load_config(args.config)
    simulate = args.simulate
    kind = choose_source_kind(config, True)
    frames = {"samples": "the bundled sample frames", "replay": f"replay of {config.camera.replay}"}.get(kind, kind)
    if not simulate and not is_raspberry_pi():
        simulate = True
        print(f"cardcam: not a Raspberry Pi (no camera, no GPIO), so this is a simulation: {frames}, "
              "mock GPIO pins", flush=True)
    daemon = Daemon(config, args.config, simulate)
    daemon.log(f"{where}; runtime {config.model.runtime}: {describe_runtime(config.model.runtime)}")
    if args.simulate:
        daemon.log(f"simulation: {frames}, GPIO on gpiozero's MockFactory")
    return daemon
