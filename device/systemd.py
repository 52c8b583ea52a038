"""What systemd and a person hear from the loop, and the fps they are told.

- ``SystemdNotifier``: sd_notify(3) by hand, one datagram per message to $NOTIFY_SOCKET, no extra
  dependency; nothing when systemd did not start us.
- ``Heartbeat``: the cadence. READY=1 once the first frame is classified, WATCHDOG=1 from the loop
  itself (a stuck loop stops sending and gets restarted), a STATUS= line every
  ``[daemon] status_interval`` with the frames per second measured since the last one.
"""

from __future__ import annotations

import os
import socket


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


class Heartbeat:
    """Counts the loop's frames; says when the first one came (READY) and when a status line is due.
    fps is measured from the first frame on: the time to load and start is not frame time."""

    def __init__(self, notifier: SystemdNotifier, status_interval: float, log):
        self.notifier = notifier
        self.status_interval = status_interval
        self.log = log
        self.ready = False
        self.frames = 0       # frames classified since start
        self.fps = None       # once measured
        self._frames_at = 0
        self._since = 0.0
        self._next_status = 0.0

    def beat(self, now: float) -> None:
        """Once per pass of the loop: the watchdog, and a notify problem logged (each once)."""
        self.notifier.watchdog(now)
        if self.notifier.error:
            self.log(self.notifier.error)
            self.notifier.error = None

    def frame(self, now: float) -> str:
        """Count one classified frame: "ready" for the first, "status" when a status line is due, else ""."""
        self.frames += 1
        if not self.ready:
            self.ready = True
            self._frames_at, self._since, self._next_status = self.frames, now, now + self.status_interval
            return "ready"
        if now < self._next_status:
            return ""
        elapsed = now - self._since
        self.fps = (self.frames - self._frames_at) / elapsed if elapsed > 0 else 0.0
        self._frames_at, self._since, self._next_status = self.frames, now, now + self.status_interval
        return "status"

    def say(self, status: str, *more: str) -> None:
        """A STATUS= line for `systemctl status` (after ``more`` messages, e.g. READY=1)."""
        self.notifier.notify(*more, f"STATUS={status}")

    def status_line(self, model, camera, shown) -> str:
        """What the appliance is doing, in one line: ``model`` the ModelSlot, ``camera`` the
        RetryingSource, ``shown`` the last Decision."""
        name = model.bundle.name if model.bundle else "none"
        if model.error and not model.bundle:
            return f"waiting for a model: {model.error}"
        if camera.error is not None:
            return f"camera fault: {camera.error}; model {name}"
        if not self.ready:
            return f"starting: model {name}, waiting for the first frame"
        label = f"{shown.label} ({shown.confidence:.0%})" if shown.label is not None else "no card"
        fps = f", {self.fps:.1f} fps" if self.fps is not None else ""
        return f"{label}{fps}, model {name}"
