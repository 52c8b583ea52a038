"""`cardcam run`: the appliance. One loop: frame → preprocess → network → decision → LEDs.

The loop is ``Daemon.run``; read it first. It enters its parts in an ``ExitStack`` (so every way
out turns the LEDs off and closes the camera) and then runs the frame path:

    for frame in self.frames():
        found = classify(frame, bundle, runtime)          # device/classify.py
        shown = decider.update(found.probabilities)       # device/decision.py
        outputs.show(shown.label)                         # device/outputs.py
        web.publish(frame, found, shown)                  # device/webserver.py
        reports.frame(found, shown)                       # READY, STATUS, the state file

``frames()`` does the housekeeping between two frames (watchdog, SIGHUP, the model file). The
parts, each owning one of the things that keep an appliance alive for months:

- ``RetryingSource`` (device/camera.py): camera faults logged and retried with a growing, capped
  pause; a camera whose reads can hang is read on a thread of its own (``ReaderThread``);
- ``ModelSlot`` (device/modelfile.py): the model file watched; a new file is taken only once it
  has stopped changing and passed every check, between two frames; a bad one is refused and the
  running model stays; a missing model is retried;
- ``Heartbeat`` (device/systemd.py): READY=1 once the first frame is classified, WATCHDOG=1 from
  the loop itself, STATUS= lines with the fps, over $NOTIFY_SOCKET;
- ``Reports`` (here): the status LED, the state record (``StateFile``, device/status.py, which
  monitoring and `cardcam-train deploy` read, and the web page's status), the log of each change;
- ``WebPage`` (here): optionally ([web]), a web page and JSON API on a thread of its own
  (device/webserver.py), handed references to the latest frame and result; the loop never waits on it;
- teach mode (device/teachmode.py), when [teach] is on: served between two frames, with the frame
  just classified.

Signals (``run``, the command, takes them on a thread of its own: ``signals_taken``): SIGTERM and
SIGINT set ``stop`` (a threading.Event) and the loop ends at the next frame or pause (LEDs off,
camera closed, exit 0); SIGHUP sets ``reload_requested``, and the loop reloads the config and the
model between two frames. Nothing is raised into the loop: every wait in it is short (pauses are
slices of 20 ms), and what can block for ever, a camera read hanging in its driver or a config
file that is a FIFO, runs on a thread of its own that the loop stops waiting for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time

from device.camera import RetryingSource, ReplayFinished, choose_source_kind, is_raspberry_pi, open_source
from device.classify import classify
from device.config import Config, ConfigError, load_config
from device.decision import Decider, Decision
from device.modelfile import ModelSlot
from device.outputs import OutputError, Outputs, TerminalRenderer, mock_pin_factory
from device.runtime import describe as describe_runtime
from device.status import StateFile, state_file
from device.systemd import Heartbeat, SystemdNotifier

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
NOTHING_SHOWN = Decision(None, 0.0, False)


class FrameErrors:
    """Frames the frame path failed on: counted, and logged at most once per ``interval`` seconds."""

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


class WebPage:
    """[web]: the page and JSON API on a thread of their own (device/webserver.py), fed through a
    LiveState. With [web] off, or a port that cannot be had (logged; the appliance runs on),
    the loop's calls do nothing."""

    def __init__(self, log):
        self.log = log
        self.live = None     # device.webserver.LiveState while [web] is enabled
        self.server = None   # device.webserver.WebServer while it listens

    def start(self, web, teaching, model) -> None:
        """Serve ``web`` ([web]) if enabled; ``model``: the ModelSlot, whose model the page shows."""
        if not web.enabled:
            return
        from device.webserver import LiveState, WebServer, is_loopback

        if self.live is None:
            self.live = LiveState()
            self.live.teaching = teaching
        if model.bundle is not None:
            self.set_model(model.bundle, model.runtime, model.config)
        try:
            self.server = WebServer(self.live, web.host, web.port, log=self.log).start()
        except OSError as e:
            self.log(f"web page off: cannot listen on {web.host}:{web.port}: {e.strerror or e}; "
                     "fix [web] and send SIGHUP")
            return
        self.log(f"web page at {self.server.url}")
        if not is_loopback(web.host):
            self.log(f"warning: the web page listens on {web.host}, reachable from the network without a "
                     "password (camera picture, model); use host = \"127.0.0.1\" and an ssh tunnel to keep it private")

    def restart(self, web, old, teaching, model) -> bool:
        """After SIGHUP: serve again if [web] changed or did not listen; True if it did."""
        if web == old and (not web.enabled or self.server is not None):
            return False
        self.close(off=not web.enabled)
        if not web.enabled and old.enabled:
            self.log("web page off")
        self.start(web, teaching, model)
        return True

    def publish(self, frame, found, shown) -> None:
        if self.live is not None:
            self.live.publish(frame, found, shown)

    def set_model(self, bundle, runtime, model_config) -> None:
        if self.live is not None:
            self.live.set_model(bundle, model_config.runtime, model_config.threads, runtime.description)

    def set_teaching(self, teaching) -> None:
        if self.live is not None:
            self.live.teaching = teaching

    def close(self, off: bool = False) -> None:
        """Stop serving; ``off``: [web] is off now, the page's state goes too."""
        server, self.server = self.server, None
        if server is not None:
            server.stop()
        if off:
            self.live = None


class Console:
    """Log lines, time-stamped unless journald (which stamps its own) takes them; in a simulation on
    a terminal, the LEDs drawn on one line below them (device.outputs.TerminalRenderer)."""

    def __init__(self, out, journal: bool, simulate: bool):
        self.out = out
        self.journal = journal
        self.renderer = TerminalRenderer(out) if simulate and out.isatty() and not journal else None

    def log(self, message: str) -> None:
        line = message if self.journal else f"{time.strftime('%H:%M:%S')} {message}"
        if self.renderer is not None:
            self.renderer.log(line)
        else:
            self.out.write(line + "\n")
            self.out.flush()

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()


def read_config(path, stop: threading.Event):
    """load_config(path) on a thread of its own; None if ``stop`` is set first. The config file could
    be a FIFO whose open() waits for a writer that never comes: the loop must still stop at once."""
    answer = []

    def read():
        try:
            answer.append((True, load_config(path)))
        except BaseException as e:  # handed to the caller's thread
            answer.append((False, e))

    reader = threading.Thread(target=read, name="cardcam-config", daemon=True)
    reader.start()
    while not answer:
        if stop.is_set():
            return None
        reader.join(0.02)
    ok, value = answer[0]
    if not ok:
        raise value
    return value


@contextlib.contextmanager
def signals_taken(signals, on_signal):
    """``on_signal(signum)`` for each of ``signals`` that arrives while the body runs.

    The signals are blocked in this thread, and so in every thread it starts from here on, and one
    thread of their own takes them with sigtimedwait: no handler interrupts whatever another thread
    was doing. A handler calling ``on_signal`` as well catches a signal that the kernel gives to a
    thread started before (NumPy's BLAS threads, a test runner's). Why not handlers alone: under
    qemu-user (tests/pi-cpu) about 1 in 50 SIGTERMs sent to a Python process with a few threads was
    never handled, cardcam or not; taken with sigtimedwait, none was lost."""
    signals = set(signals)
    previous = {s: signal.signal(s, lambda signum, frame: on_signal(signum)) for s in signals}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    done = threading.Event()

    def take():
        while not done.is_set():
            taken = signal.sigtimedwait(signals, 0.5)
            if taken is not None and not done.is_set():
                on_signal(taken.si_signo)

    taker = threading.Thread(target=take, name="cardcam-signals", daemon=True)
    taker.start()
    try:
        yield
    finally:
        done.set()
        if taker.is_alive():  # woken now rather than at the end of its half-second wait
            signal.pthread_kill(taker.ident, min(signals))
        taker.join()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # one still pending goes to the handler
        for s, h in previous.items():
            signal.signal(s, h)


class Reports:
    """What the appliance tells, and when: the status LED, the state record (the state file and
    the web page's status), STATUS= lines, a log line for each change of what is shown, and the
    terminal's line in a simulation. The daemon hands it ``outputs`` (the LEDs of the moment)."""

    def __init__(self, heartbeat, model, camera, web, console, state: StateFile, notifier):
        self.heartbeat, self.model, self.camera, self.web = heartbeat, model, camera, web
        self.console, self.state, self.notifier = console, state, notifier
        self.outputs = None
        self.shown = NOTHING_SHOWN   # what the LEDs show (the last Decision)
        self.frame_errors = FrameErrors()
        self.started = time.monotonic()

    def frame(self, found, shown) -> None:
        """After each frame: READY, a change of what is shown, the status line, the terminal's line."""
        self.shown = shown
        beat = self.heartbeat.frame(time.monotonic())
        if beat == "ready":
            self.set_status("running")
            self.heartbeat.say(self.status_line(), "READY=1")
            self.console.log(f"ready: first frame classified {time.monotonic() - self.started:.2f} s after start "
                             f"({self.camera.describe()})")
        if shown.changed:
            self.console.log(f"shows {_in_words(shown, found.reason)}")
            self.write_state("running")
        if beat == "status":
            self.heartbeat.say(self.status_line())
            self.write_state("running")
        if self.console.renderer is not None:
            self.console.renderer.render(self.outputs.snapshot(), shown.label, shown.confidence,
                                         self.heartbeat.fps or 0.0, self.model.bundle.name)

    def frame_failed(self, error: Exception) -> None:
        line = self.frame_errors.add(error, time.monotonic())
        if line:
            self.console.log(line)
            self.write_state(self.running)

    def camera_changed(self) -> None:
        """A camera fault began or goes on (the status LED flickers), or the camera is back."""
        if self.camera.error is not None:
            self.set_status("camera fault")
            self.write_state("camera fault")
            self.heartbeat.say(self.status_line())
        else:
            self.set_status(self.running)
            self.write_state("running")

    def model_changed(self) -> None:
        """A load decided: taken, or refused (with no model yet: a model fault, the LED blinks slowly)."""
        if self.model.bundle is None:
            self.set_status("model fault")
            self.write_state("model fault")
        else:
            self.write_state(self.running)

    @property
    def running(self) -> str:
        return "running" if self.heartbeat.ready else "starting"

    def status_line(self) -> str:
        return self.heartbeat.status_line(self.model, self.camera, self.shown)

    def write_state(self, state: str) -> None:
        """The state record, to the state file and the web page."""
        if self.outputs is not None and (self.state.path or self.web.live is not None):
            record = state_record(state, self.shown, self.heartbeat, self.model, self.camera, self.frame_errors,
                                  self.notifier, self.outputs)
            if self.web.live is not None:
                self.web.live.set_record(record)
            self.state.write(record)

    def set_status(self, status: str) -> None:
        if self.outputs is not None:
            self.outputs.set_status(status)


class TeachSwitch:
    """[teach] switched on, off or over (at start, on SIGHUP): teach mode's buttons
    (device/teachmode.py, imported only when it is on), in simulation the keyboard, and the web
    page told. ``mode`` is the TeachMode while [teach] is enabled."""

    def __init__(self, web, log, keyboard: bool):
        self.web, self.log, self.keyboard = web, log, keyboard
        self.mode = None
        self._keys = None

    def start(self, config, pin_factory) -> None:
        if not config.enabled:
            return
        from device.teachmode import KEYS, read_keys, start_teach

        self.mode = start_teach(config, self.log, pin_factory)
        self.web.set_teaching(self.mode)
        if self.mode and self.keyboard and self._keys is None:
            self._keys = read_keys(sys.stdin, lambda: self.mode)
            self.log(f"teach keys: {KEYS}")

    def stop(self) -> None:
        mode, self.mode = self.mode, None
        self.web.set_teaching(None)
        if mode is not None:
            mode.close()


def pause(seconds: float, stop: threading.Event, notifier) -> None:
    """A pause that a stop cuts short (within 20 ms), and that keeps the watchdog fed."""
    end = time.monotonic() + seconds
    while not stop.is_set():
        now = time.monotonic()
        if now >= end:
            return
        notifier.watchdog(now)
        time.sleep(min(0.02, end - now))


class Daemon:
    """The appliance: its parts and the loop (``run``). Two Events drive it from outside (`cardcam
    run` sets them on signals): ``stop`` ends the loop, ``reload_requested`` has it read the config
    again between two frames. The main thread only looks at them, it never waits on them: Event.set()
    from a handler that interrupted a wait on the same Event could deadlock."""

    def __init__(self, config: Config, config_path=None, simulate=False, out=None, environ=None, stop=None,
                 reload_requested=None):
        self.config = config
        self.config_path = config_path
        self.simulate = simulate
        self.environ = os.environ if environ is None else environ
        self.journal = bool(self.environ.get("JOURNAL_STREAM"))
        self.console = Console(out or sys.stdout, self.journal, simulate)
        self.log = self.console.log
        self.stop = stop or threading.Event()
        self.reload_requested = reload_requested or threading.Event()
        self.notifier = SystemdNotifier(self.environ)
        self.heartbeat = Heartbeat(self.notifier, config.daemon.status_interval, self.log)
        self.camera = RetryingSource(lambda: open_source(self.config, self.simulate, sleep=self.sleep, log=self.log),
                                     config.daemon.max_backoff, self.sleep, self.log,
                                     lambda: self.reports.camera_changed(), self.stop.is_set)
        self.model = ModelSlot(config, simulate, self.log, self._model_swapped, lambda: self.reports.model_changed())
        self.web = WebPage(self.log)
        self.reports = Reports(self.heartbeat, self.model, self.camera, self.web, self.console,
                               StateFile(state_file(config.daemon.state_file, self.environ), self.log), self.notifier)
        self.outputs = None
        self.decider = None
        self.teach = TeachSwitch(self.web, self.log, simulate and sys.stdin is not None and not self.journal)

    def run(self) -> int:
        self.pin_factory = mock_pin_factory() if self.simulate else None
        reports = self.reports
        with contextlib.ExitStack() as stack:
            try:
                self.outputs = reports.outputs = Outputs.from_config(self.config.outputs, self.pin_factory)
            except OutputError as e:
                self.log(f"error: {e}")
                return 2
            # Out in reverse order: the page, teach mode, STOPPING=1; LEDs off; the state file says
            # "stopped"; camera closed; the pins let go; the terminal and systemd let go, and the
            # last log line.
            stack.callback(self.log, "stopped: LEDs off, camera closed")
            stack.callback(self.notifier.close)
            stack.callback(self.console.close)
            stack.callback(lambda: self.outputs.close())  # [outputs] may have changed on SIGHUP
            stack.enter_context(self.camera)
            stack.callback(reports.write_state, "stopped")
            stack.callback(lambda: self.outputs.off())
            stack.callback(self.notifier.notify, "STOPPING=1", "STATUS=stopping")
            stack.callback(self.web.close)
            stack.callback(self.teach.stop)
            self.teach.start(self.config.teach, self.pin_factory)
            self.start_web()
            reports.set_status("starting")
            self.outputs.show(None)
            self.model.load("start")
            self.heartbeat.say(reports.status_line())

            for frame in self.frames():
                try:
                    found = classify(frame, self.model.bundle, self.model.runtime)
                    shown = self.decider.update(found.probabilities)
                except Exception as e:  # this frame only: skipped, counted, logged now and then
                    reports.frame_failed(e)
                    continue
                if shown.changed:
                    self.outputs.show(shown.label)
                self.web.publish(frame, found, shown)
                if self.teach.mode is not None:  # presses since the last frame, with this frame
                    self.teach.mode.serve(frame, found.prepared, self.model, self.outputs, self.heartbeat.say)
                reports.frame(found, shown)
        return 0

    def frames(self):
        """Camera frames until a stop (or a replay's end). Between two frames: the watchdog, a
        SIGHUP's reload, the model file. No frames while there is no model (it is retried), none
        during a camera fault (the camera retries)."""
        while not self.stop.is_set():
            now = time.monotonic()
            self.heartbeat.beat(now)
            if self.reload_requested.is_set():
                self.reload()
            if not self.model.poll(now):
                self.heartbeat.say(self.reports.status_line())
                self.sleep(min(self.config.model.poll_interval, 0.2))
                continue
            try:
                frame = self.camera.read()
            except ReplayFinished as e:
                self.log(f"replay finished: {e}")
                return
            if frame is not None and not self.stop.is_set():
                yield frame

    def sleep(self, seconds: float) -> None:
        pause(seconds, self.stop, self.notifier)

    def _model_swapped(self, bundle, runtime) -> None:
        d = self.config.decision
        self.decider = self.decider or Decider(bundle.labels, d.window, d.enter, d.exit)
        self.decider.relabel(bundle.labels)
        self.web.set_model(bundle, runtime, self.config.model)
        missing = [l for l in bundle.labels if l not in self.config.outputs.leds]
        if missing and not self.config.outputs.display:
            self.log(f"note: labels {' '.join(missing)} have no LED in [outputs] leds; they show only on screen")

    # -- the parts SIGHUP may switch on, off or over --

    def start_web(self) -> None:
        self.web.start(self.config.web, self.teach.mode, self.model)
        if self.config.web.enabled:
            self.reports.write_state(self.reports.running)  # the page's status from the start

    def reload(self) -> None:
        """The config read again; each part whose section changed is remade, the model loaded again."""
        self.reload_requested.clear()
        try:
            loaded = read_config(self.config_path, self.stop)  # the config path might be a FIFO
        except ConfigError as e:
            self.log(f"config reload refused: {e}; keeping the running config")
            return
        if loaded is None:  # stopped while waiting for it
            return
        (config, where), old = loaded, self.config
        self.log(f"reloading ({where})")
        if config.outputs != old.outputs:
            outputs = new_outputs(self.outputs, config.outputs, self.pin_factory, self.log)
            if outputs is None:
                config = dataclasses.replace(config, outputs=old.outputs)
            self.outputs = self.reports.outputs = outputs or self.outputs
        self.config = config
        if config.camera != old.camera:
            self.camera.close()  # opened again, as now configured, at the next read
        self.camera.max_backoff, self.heartbeat.status_interval = config.daemon.max_backoff, config.daemon.status_interval
        if state_file(config.daemon.state_file, self.environ) != self.reports.state.configured:
            self.reports.state = StateFile(state_file(config.daemon.state_file, self.environ), self.log)
        if self.web.restart(config.web, old.web, self.teach.mode, self.model) and config.web.enabled:
            self.reports.write_state(self.reports.running)
        if config.teach != old.teach:
            self.teach.stop()
            self.teach.start(config.teach, self.pin_factory)
        self.model.configure(config)
        if self.model.load("sighup") and config.decision != old.decision:
            d = config.decision
            self.decider = Decider(self.model.bundle.labels, d.window, d.enter, d.exit)


def new_outputs(outputs, config, pin_factory, log):
    """[outputs] changed on SIGHUP: the new LEDs, showing what the old ones showed (which are let
    go), or None if they cannot be had (logged; the old ones stay)."""
    try:
        new = Outputs.from_config(config, pin_factory)
    except OutputError as e:
        log(f"new [outputs] refused: {e}")
        return None
    status, label = outputs.status, outputs.label
    outputs.close()
    new.set_status(status)
    new.show(label)
    return new


def state_record(state, shown, heartbeat, model, camera, frame_errors, notifier, outputs) -> dict:
    """The state record (device/status.py): what runs, what it shows, what went wrong, the LEDs."""
    bundle = model.bundle
    return {
        "pid": os.getpid(), "state": state, "label": shown.label, "confidence": round(shown.confidence, 4),
        "fps": round(heartbeat.fps, 1) if heartbeat.fps is not None else None, "frames": heartbeat.frames,
        "model": bundle.name if bundle else None,
        "model_sha256": bundle.meta["weights_sha256"] if bundle else None,
        "model_path": str(bundle.path) if bundle else None,
        "task": bundle.meta.get("task") if bundle else None,
        "labels": list(bundle.labels) if bundle else None,
        "reloads": model.reloads, "refusals": model.refusals,
        "camera_error": camera.error, "model_error": model.error,
        "frame_errors": frame_errors.count, "frame_error": frame_errors.last,
        "notify_dropped": notifier.dropped,
    } | outputs.snapshot()


def _in_words(shown, reason: str) -> str:
    """What the LEDs show now, for the log: the label and its confidence, or no card and why."""
    if shown.label is not None:
        return f"{shown.label} ({shown.confidence:.0%})"
    reason = reason or "low confidence"
    return "no card" if reason == "no card" else f"no card ({reason})"


def run(args) -> int:
    """`cardcam run [--config PATH] [--simulate]`. Signals, from the start: SIGTERM and SIGINT stop,
    SIGHUP reloads (one during start-up is kept for the loop). Until the loop runs, a stop ends the
    start-up with nothing yet to turn off (the config file itself could be a FIFO that never opens)."""
    stop, reload_requested = threading.Event(), threading.Event()

    def on_signal(signum):
        (reload_requested if signum == signal.SIGHUP else stop).set()

    with signals_taken(STOP_SIGNALS + (signal.SIGHUP,), on_signal):
        loaded = read_config(args.config, stop)
        if loaded is None:
            return 0
        daemon = _make_daemon(args, *loaded, stop, reload_requested)
        return 0 if stop.is_set() else daemon.run()


def _make_daemon(args, config, where, stop, reload_requested) -> Daemon:
    simulate = args.simulate
    kind = choose_source_kind(config, True)
    frames = {"samples": "the bundled sample frames", "replay": f"replay of {config.camera.replay}"}.get(kind, kind)
    if not simulate and not is_raspberry_pi():
        simulate = True
        print(f"cardcam: not a Raspberry Pi (no camera, no GPIO), so this is a simulation: {frames}, "
              "mock GPIO pins", flush=True)
    daemon = Daemon(config, args.config, simulate, stop=stop, reload_requested=reload_requested)
    daemon.log(f"{where}; runtime {config.model.runtime}: {describe_runtime(config.model.runtime)}")
    if args.simulate:
        daemon.log(f"simulation: {frames}, GPIO on gpiozero's MockFactory")
    return daemon
