"""Frame sources: where grey camera frames come from, behind one small interface.

Every source is a context manager with ``open()``, ``read() -> H x W uint8`` and ``close()``;
``make_source`` picks one by name, the way gpiozero picks a pin factory. ``read`` raises
``CameraError`` for anything the daemon should ride out (no camera, device busy, timeouts) and
``ReplayFinished`` when a non-looping replay has shown its last frame.

- ``Picamera2Source``: the Pi camera. A small lores YUV420 stream whose Y plane *is* the grey
  picture (no colour conversion), two buffers (a Pi 3 runs short of CMA memory with more).
- ``OpenCVSource``: a laptop webcam (``pip install cardcam[webcam]``).
- ``ReplaySource``: a folder of pictures or a video, looping, at a given rate or flat out. A
  picture that cannot be read (damaged, a FIFO, a device) is skipped and logged once; a folder
  with no readable picture is a camera fault.
- ``samples_source``: the card frames shipped in ``device/samples`` (0, 1, no card), each held
  for a moment as a person would hold a card, so simulation works on a fresh machine.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np

from device.config import SOURCES  # the names [camera] source accepts (re-exported)
from device.files import check_regular
from device.preprocess import LOAD_SIDE, ImageError, load_frame

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
PICTURE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".h264", ".mjpeg", ".webm"}
MAX_PICTURE_BYTES = 64 << 20  # a replayed picture file (a 4000x4000 PNG of noise is ~48 MB)
# The frame size the daemon asks for: the size preprocessing works at (4:3 at the shipped models'
# work_size, 160), so the Pi camera's ISP does the scaling for free.
FRAME_SIZE = (160, 120)
# The Pi camera's main stream: it must exist and be at least as large as the lores stream we read.
MAIN_SIZE = (640, 480)


class CameraError(RuntimeError):
    """The camera cannot give a frame right now (absent, busy, timed out): retry later."""


class ReplayFinished(Exception):
    """A replay that does not loop has shown its last frame."""


class FrameSource:
    """open / read / close, usable as ``with source: frame = source.read()``."""

    name = "source"
    may_hang = False  # True: a read can hang in a driver (the daemon then reads it on a thread, ReaderThread)

    def open(self) -> None:
        pass

    def read(self) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.name

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()


def _sleep_until(deadline: float, sleep) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        sleep(delay)


class Picamera2Source(FrameSource):
    """The Raspberry Pi camera through picamera2, imported only when this source opens."""

    name = "picamera2"
    may_hang = True

    def __init__(self, size=FRAME_SIZE, buffer_count=2, timeout=2.0, camera_num=0):
        self.size = (int(size[0]), int(size[1]))
        self.buffer_count = int(buffer_count)
        self.timeout = float(timeout)
        self.camera_num = int(camera_num)
        self._camera = None
        self._shape = None

    def open(self) -> None:
        # libcamera reads this once, when it starts: only warnings and errors, not every frame's INFO.
        os.environ.setdefault("LIBCAMERA_LOG_LEVELS", "*:WARN")
        try:
            from picamera2 import Picamera2
        except ImportError as e:
            raise CameraError(f"picamera2 is not installed ({e}); on Raspberry Pi OS: sudo apt install "
                              "python3-picamera2, and make the venv with --system-site-packages") from None
        logging.getLogger("picamera2").setLevel(logging.WARNING)
        try:
            camera = Picamera2(self.camera_num)
        except Exception as e:  # no camera: IndexError; busy: RuntimeError("Failed to acquire camera ...")
            raise CameraError(f"cannot open camera {self.camera_num}: {_explain(e)}") from None
        try:
            # The main stream must exist and hold the lores one; the lores Y plane, scaled by the
            # ISP to the size preprocessing works at, is all we read.
            main = (max(self.size[0], MAIN_SIZE[0]), max(self.size[1], MAIN_SIZE[1]))
            config = camera.create_preview_configuration(
                main={"size": main, "format": "XBGR8888"},
                lores={"size": self.size, "format": "YUV420"},
                buffer_count=self.buffer_count)
            camera.configure(config)
            lores = camera.camera_config["lores"]["size"]
            self._shape = (int(lores[1]), int(lores[0]))
            camera.start()
        except Exception as e:
            _close_quietly(camera)
            raise CameraError(f"cannot start camera {self.camera_num}: {_explain(e)}") from None
        self._camera = camera

    def read(self) -> np.ndarray:
        if self._camera is None:
            self.open()
        try:
            yuv = self._camera.capture_array("lores", wait=self.timeout)
        except Exception as e:  # TimeoutError, or libcamera errors after the cable was pulled
            raise CameraError(f"no frame from camera {self.camera_num}: {_explain(e)}") from None
        h, w = self._shape
        # YUV420 arrives as (h * 3 / 2, stride): the first h rows are Y, padded on the right.
        return yuv[:h, :w]

    def close(self) -> None:
        camera, self._camera = self._camera, None
        if camera is not None:
            _close_quietly(camera)

    def describe(self) -> str:
        return f"picamera2 camera {self.camera_num}, {self.size[0]}x{self.size[1]} lores Y plane"


def _explain(e: Exception) -> str:
    text = str(e) or type(e).__name__
    if "busy" in text.lower():
        text += " (another program holds the camera: stop it, or `sudo systemctl stop cardcam`)"
    return text


def _close_quietly(camera) -> None:
    for step in ("stop", "close"):
        try:
            getattr(camera, step)()
        except Exception:
            pass


class OpenCVSource(FrameSource):
    """A webcam through OpenCV (headless build), converted to grey."""

    name = "opencv"
    may_hang = True

    def __init__(self, device=0, size=FRAME_SIZE):
        self.device = device
        self.size = size
        self._cap = None
        self._cv2 = None

    def open(self) -> None:
        try:
            import cv2
        except ImportError:
            raise CameraError("OpenCV is not installed: pip install 'cardcam[webcam]'") from None
        cap = cv2.VideoCapture(self.device)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"cannot open webcam {self.device!r}")
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        self._cap, self._cv2 = cap, cv2

    def read(self) -> np.ndarray:
        if self._cap is None:
            self.open()
        ok, frame = self._cap.read()
        if not ok or frame is None:
            raise CameraError(f"no frame from webcam {self.device!r}")
        return frame if frame.ndim == 2 else self._cv2.cvtColor(frame, self._cv2.COLOR_BGR2GRAY)

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    def describe(self) -> str:
        return f"webcam {self.device!r} via OpenCV"


class ReplaySource(FrameSource):
    """Frames from a folder of pictures (sorted by name) or a video file.

    ``fps`` paces the frames like a camera (0: as fast as the reader takes them); ``hold`` shows
    each picture that many times in a row; ``loop`` starts again at the end, otherwise ``read``
    raises ReplayFinished. ``sleep`` is how it waits (the daemon passes one that wakes on a signal);
    ``log`` takes the line saying which pictures were skipped (default: stderr).
    """

    name = "replay"

    def __init__(self, path, fps=30.0, loop=True, hold=1, sleep=time.sleep, size=None, log=None):
        self.path = Path(path)
        # Pictures are reduced once, on load, to fit the frame size preprocessing works at (what
        # the Pi camera's ISP delivers), instead of at every frame.
        self.longest = max(size) if size else LOAD_SIDE
        self.fps = float(fps)
        self.loop = bool(loop)
        self.hold = max(1, int(hold))
        self.sleep = sleep
        self.log = log or _to_stderr
        self._frames = None
        self._video = None
        self._index = 0
        self._next = 0.0

    def open(self) -> None:
        if self._frames is not None or self._video is not None:
            return
        if self.path.is_dir():
            files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in PICTURE_SUFFIXES)
            if not files:
                raise CameraError(f"{self.path}: no pictures (.png, .jpg, ...) to replay")
            frames, skipped = [], []
            for f in files:
                try:
                    check_regular(f, MAX_PICTURE_BYTES)  # a FIFO would block the open, a device never ends
                    frames.append(load_frame(f, self.longest))
                except ImageError as e:
                    skipped.append(str(e))
                except (OSError, ValueError) as e:
                    skipped.append(f"{f}: {getattr(e, 'strerror', None) or e}")
            if not frames:
                raise CameraError(f"{self.path}: none of its {len(files)} pictures can be read ({skipped[0]}"
                                  f"{', ...' if len(skipped) > 1 else ''})")
            if skipped:
                more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
                self.log(f"replay of {self.path}: skipped {len(skipped)} of {len(files)} pictures: {skipped[0]}{more}")
            self._frames = frames
        elif self.path.suffix.lower() in VIDEO_SUFFIXES:
            self._open_video()
        elif self.path.exists():
            try:
                check_regular(self.path, MAX_PICTURE_BYTES)
                self._frames = [load_frame(self.path, self.longest)]
            except ImageError as e:
                raise CameraError(str(e)) from None
            except (OSError, ValueError) as e:
                raise CameraError(f"{self.path}: {getattr(e, 'strerror', None) or e}") from None
        else:
            raise CameraError(f"{self.path}: no such folder or file to replay")
        self._index = 0
        self._next = time.monotonic()

    def _open_video(self) -> None:
        try:
            import cv2
        except ImportError:
            raise CameraError(f"{self.path}: replaying a video needs OpenCV: pip install 'cardcam[webcam]'") from None
        if not self.path.is_file():
            raise CameraError(f"{self.path}: no such video file")
        video = cv2.VideoCapture(str(self.path))
        if not video.isOpened():
            raise CameraError(f"{self.path}: OpenCV cannot read this video")
        self._video = (cv2, video)

    def __len__(self) -> int:
        return len(self._frames) * self.hold if self._frames is not None else 0

    def read(self) -> np.ndarray:
        if self._frames is None and self._video is None:
            self.open()
        if self.fps > 0:
            _sleep_until(self._next, self.sleep)
            # Behind by more than a frame (the reader was slow): do not burst to catch up.
            self._next = max(self._next + 1.0 / self.fps, time.monotonic())
        if self._video is not None:
            return self._read_video()
        if self._index >= len(self):
            if not self.loop:
                raise ReplayFinished(str(self.path))
            self._index = 0
        frame = self._frames[self._index // self.hold]
        self._index += 1
        return frame

    def _read_video(self) -> np.ndarray:
        cv2, video = self._video
        ok, frame = video.read()
        if not ok:
            if not self.loop:
                raise ReplayFinished(str(self.path))
            video.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = video.read()
            if not ok:
                raise CameraError(f"{self.path}: cannot read frames from this video")
        return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)

    def close(self) -> None:
        if self._video is not None:
            self._video[1].release()
        self._frames = self._video = None

    def describe(self) -> str:
        rate = f"{self.fps:g} fps" if self.fps > 0 else "as fast as possible"
        return f"replay of {self.path} ({rate}{', looping' if self.loop else ''})"


def _to_stderr(line: str) -> None:
    print(f"cardcam: {line}", file=sys.stderr, flush=True)


def samples_source(fps=30.0, loop=True, sleep=time.sleep, size=None, log=None) -> ReplaySource:
    """The shipped sample frames, each held for about 1.5 s at the given rate."""
    hold = max(1, round(1.5 * fps)) if fps > 0 else 45
    source = ReplaySource(SAMPLES_DIR, fps=fps, loop=loop, hold=hold, sleep=sleep, size=size, log=log)
    source.name = "samples"
    return source


def make_source(kind: str, *, size=FRAME_SIZE, fps=30.0, replay="", loop=True, hold=1, buffer_count=2,
                timeout=2.0, camera_num=0, device=0, sleep=time.sleep, log=None) -> FrameSource:
    """A frame source by name (one of SOURCES other than "auto", which the caller resolves).
    ``log``: where a replay says which pictures it skipped (default: stderr)."""
    if kind == "picamera2":
        return Picamera2Source(size, buffer_count, timeout, camera_num)
    if kind == "opencv":
        return OpenCVSource(device, size)
    if kind == "replay":
        return ReplaySource(replay, fps=fps, loop=loop, hold=hold, sleep=sleep, size=size, log=log)
    if kind == "samples":
        return samples_source(fps=fps, loop=loop, sleep=sleep, size=size, log=log)
    raise ValueError(f"unknown frame source {kind!r} (choose from {', '.join(SOURCES[1:])})")


# --- which source ------------------------------------------------------------------------

def is_raspberry_pi() -> bool:
    """Whether this machine is a Raspberry Pi (the device tree says so); off a Pi, `cardcam run` simulates."""
    try:
        return "raspberry pi" in Path("/proc/device-tree/model").read_text(errors="replace").lower()
    except OSError:
        return False


def choose_source_kind(config, simulate: bool) -> str:
    """"auto" means the Pi camera for real, and in simulation the replay folder or the samples."""
    kind = config.camera.source
    if kind != "auto":
        return kind
    if not simulate:
        return "picamera2"
    return "replay" if config.camera.replay else "samples"


def open_source(config, simulate: bool, sleep=time.sleep, log=None):
    c = config.camera
    return make_source(choose_source_kind(config, simulate), size=(c.width, c.height), fps=c.fps, replay=c.replay,
                       loop=c.loop, hold=c.hold, buffer_count=c.buffer_count, timeout=c.timeout,
                       camera_num=c.camera_num, device=c.device, sleep=sleep, log=log)


class RetryingSource:
    """The frame source the daemon reads: camera faults are ridden out here.

    ``read()`` gives the next frame, or None after a fault (``CameraError``): the source is closed,
    the fault logged (once, and again when its message changes), and the loop paused, each pause
    twice the last up to ``max_backoff`` seconds, so a camera that comes back is seen within about
    a second; the next read opens the source again. ``on_change()`` is called when a fault begins
    or repeats and when frames come back (the daemon sets its status LED and state from
    ``error``). ``open_source()`` makes a new, unopened source (the config of the moment).
    ``ReplayFinished`` passes through. A source whose reads can hang (``may_hang``) is read on a
    thread of its own (ReaderThread); ``stopped()`` says when the loop no longer waits for it.
    """

    def __init__(self, open_source, max_backoff: float, sleep=time.sleep, log=_to_stderr, on_change=lambda: None,
                 stopped=lambda: False):
        self.open_source = open_source
        self.max_backoff = max_backoff
        self.sleep = sleep
        self.log = log
        self.on_change = on_change
        self.stopped = stopped   # the loop is stopping: a read that hangs is given up (ReaderThread)
        self.source = None
        self.error = None        # the fault going on (its message); None while frames come
        self._since = 0.0
        self._backoff = 0.0

    def read(self) -> np.ndarray | None:
        try:
            if self.source is None:
                source = self.open_source()
                self.source = ReaderThread(source, self.stopped) if source.may_hang else source
                self.source.open()
            frame = self.source.read()
        except CameraError as e:
            self._fault(str(e))
            return None
        if frame is None:  # stopping while a read hung
            return None
        if self.error is not None:
            self.log(f"camera back after {time.monotonic() - self._since:.1f} s")
            self.error = None
            self.on_change()
        return frame

    def _fault(self, message: str) -> None:
        self.close()
        if self.error is None:
            self._since, self._backoff = time.monotonic(), 0.05
            self.log(f"camera fault: {message}; retrying")
        elif message != self.error:
            self.log(f"camera fault: {message}")
        self.error = message
        self.on_change()
        self.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, self.max_backoff)

    def describe(self) -> str:
        return self.source.describe() if self.source is not None else "no source open"

    def close(self) -> None:
        source, self.source = self.source, None
        if source is not None:
            source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ReaderThread(FrameSource):
    """A source used from a thread of its own: its open, read and close run there, and the caller
    waits for each in slices of 20 ms, giving up once ``stopped()``. A camera read can hang in a
    driver (a loose cable, a driver fault), and the loop must still stop at once (a hang while not
    stopping still stops the loop, and its watchdog pings: systemd restarts it). Only for the
    cameras (``may_hang``): at their frame rate the handoff costs nothing; replays are read in
    the loop itself."""

    def __init__(self, source: FrameSource, stopped):
        self.source = source
        self.stopped = stopped
        self.name = source.name
        self._jobs = queue.SimpleQueue()
        self._answers = queue.SimpleQueue()
        self._waiting = 0  # jobs asked and not yet answered (more than one after giving up on a read)
        threading.Thread(target=self._serve, name=f"cardcam-{source.name}", daemon=True).start()

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                answer = (job(), None)
            except BaseException as e:  # handed to the caller's thread
                answer = (None, e)
            self._answers.put(answer)
            if job == self.source.close:
                return

    def _ask(self, job, patience: float | None = None):
        """``job()``'s result (or its exception), or None once stopped (or after ``patience`` s)."""
        self._jobs.put(job)
        self._waiting += 1
        end = None if patience is None else time.monotonic() + patience
        while True:
            try:
                value, error = self._answers.get(timeout=0.02)
            except queue.Empty:
                if self.stopped() or (end is not None and time.monotonic() > end):
                    return None
                continue
            self._waiting -= 1
            if self._waiting == 0:  # this job's answer, not that of a read given up on
                break
        if error is not None:
            raise error
        return value

    def open(self) -> None:
        self._ask(self.source.open)

    def read(self):
        return self._ask(self.source.read)

    def close(self) -> None:
        self._ask(self.source.close, patience=1.0)  # a camera still hanging is let go with the process

    def describe(self) -> str:
        return self.source.describe()
