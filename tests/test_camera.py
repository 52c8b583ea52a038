"""Frame sources: replay and samples for real, the Pi camera against the picamera2 stand-in."""

import importlib.util
import os
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from daemon_fixtures import STAND_IN_DIR
from device.camera import (SAMPLES_DIR, CameraError, FrameSource, Picamera2Source, ReaderThread, ReplayFinished,
                           ReplaySource, RetryingSource, make_source, samples_source)
from device.preprocess import load_image


def write(folder, values):
    folder.mkdir(exist_ok=True)
    for i, v in enumerate(values):
        Image.fromarray(np.full((48, 64), v, np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def test_replay_reads_a_folder_in_name_order_and_loops(tmp_path):
    folder = write(tmp_path / "f", [10, 20, 30])
    with ReplaySource(folder, fps=0) as src:
        got = [int(src.read()[0, 0]) for _ in range(7)]
    assert got == [10, 20, 30, 10, 20, 30, 10]


def test_replay_holds_each_picture_and_can_stop_at_the_end(tmp_path):
    folder = write(tmp_path / "f", [10, 20])
    with ReplaySource(folder, fps=0, loop=False, hold=3) as src:
        got = [int(src.read()[0, 0]) for _ in range(6)]
        with pytest.raises(ReplayFinished):
            src.read()
    assert got == [10, 10, 10, 20, 20, 20]


def test_replay_frames_are_grey_uint8(tmp_path):
    folder = tmp_path / "colour"
    folder.mkdir()
    Image.new("RGB", (64, 48), (255, 0, 0)).save(folder / "red.png")
    with ReplaySource(folder, fps=0) as src:
        frame = src.read()
    assert frame.dtype == np.uint8 and frame.shape == (48, 64)


def test_replay_frames_are_the_grey_levels_rounded_to_8_bits(tmp_path):
    """Whatever the file's mode: 8-bit grey as is, colour, 16-bit and alpha as load_image reads them."""
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    folder = tmp_path / "modes"
    folder.mkdir()
    Image.fromarray(levels).save(folder / "a-grey.png")
    Image.fromarray(np.stack([levels, levels.T, levels[::-1]], -1)).save(folder / "b-rgb.png")
    Image.fromarray(levels.astype(np.uint16) * 257 + 100).save(folder / "c-16bit.png")
    Image.fromarray(np.stack([levels.T, levels, levels, levels[::-1]], -1)).save(folder / "d-rgba.png")
    with ReplaySource(folder, fps=0) as src:
        frames = [src.read() for _ in range(4)]
    np.testing.assert_array_equal(frames[0], levels)
    for frame, name in zip(frames, sorted(p.name for p in folder.iterdir())):
        assert frame.dtype == np.uint8
        np.testing.assert_array_equal(frame, np.round(load_image(folder / name) * 255).astype(np.uint8), err_msg=name)


def test_replay_paces_frames_at_its_rate(tmp_path):
    folder = write(tmp_path / "f", [1])
    waits = []

    def sleep(seconds):  # take the pause, and note it
        waits.append(seconds)
        time.sleep(seconds)
    src = ReplaySource(folder, fps=50, sleep=sleep)
    t0 = time.monotonic()
    with src:
        for _ in range(6):
            src.read()
    assert len(waits) >= 4 and all(0 < w <= 0.02 + 1e-6 for w in waits)
    assert time.monotonic() - t0 >= 5 * 0.02 - 1e-3  # five intervals between six frames


def test_replay_of_nothing_is_a_camera_error(tmp_path):
    with pytest.raises(CameraError, match="no such folder"):
        ReplaySource(tmp_path / "missing").open()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CameraError, match="no pictures"):
        ReplaySource(tmp_path / "empty").open()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    with pytest.raises(CameraError, match="x.png"):
        ReplaySource(tmp_path / "bad").open()


def test_unreadable_pictures_in_a_replay_folder_are_skipped_and_logged_once(tmp_path):
    """One damaged picture stalled the daemon for ever (a camera fault at every retry, no frames);
    a FIFO among the pictures blocked the open itself, and SIGTERM with it."""
    folder = write(tmp_path / "f", [10, 20, 30])
    (folder / "001a.png").write_bytes(b"not a png")
    os.mkfifo(folder / "001b.png")
    (folder / "001c.png").symlink_to("/dev/zero")
    logged = []
    with ReplaySource(folder, fps=0, log=logged.append) as src:
        got = [int(src.read()[0, 0]) for _ in range(6)]
    assert got == [10, 20, 30, 10, 20, 30]
    assert len(logged) == 1 and "skipped 3 of 6 pictures" in logged[0] and "001a.png" in logged[0], logged


def test_a_replay_folder_with_no_readable_picture_is_a_camera_error_that_says_so(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")
    os.mkfifo(folder / "b.png")
    with pytest.raises(CameraError, match=r"none of its 2 pictures can be read \(.*a.png.*, \.\.\.\)"):
        ReplaySource(folder).open()
    os.mkfifo(tmp_path / "one.png")
    with pytest.raises(CameraError, match="is a FIFO"):
        ReplaySource(tmp_path / "one.png").open()


@pytest.mark.skipif(importlib.util.find_spec("cv2") is not None, reason="OpenCV is installed here")
def test_video_replay_without_opencv_says_what_to_install(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"")
    with pytest.raises(CameraError, match=r"cardcam\[webcam\]"):
        ReplaySource(tmp_path / "clip.mp4").open()


def test_the_shipped_samples_are_640x480_cards_and_blanks():
    names = sorted(p.name for p in SAMPLES_DIR.glob("*.png"))
    assert any("-0-" in n for n in names) and any("-1-" in n for n in names) and any("none" in n for n in names)
    src = samples_source(fps=0)
    with src:
        frame = src.read()
        assert frame.shape == (480, 640) and frame.dtype == np.uint8
        assert len(src) == len(names) * src.hold


def test_unknown_source_name():
    with pytest.raises(ValueError, match="unknown frame source"):
        make_source("kinect")


# --- the Pi camera, against the stand-in module at the import boundary ---

@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    camera_dir = tmp_path / "camera"
    (camera_dir / "frames").mkdir(parents=True)
    picture = np.tile(np.arange(640, dtype=np.uint32) % 251, (480, 1)).astype(np.uint8)
    Image.fromarray(picture).save(camera_dir / "frames" / "a.png")
    monkeypatch.setenv("STAND_IN_CAMERA_DIR", str(camera_dir))
    spec = importlib.util.spec_from_file_location("picamera2", STAND_IN_DIR / "picamera2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "picamera2", module)
    return camera_dir, picture


def test_picamera2_gives_the_y_plane_of_a_small_lores_stream(stand_in):
    camera_dir, picture = stand_in
    with Picamera2Source(size=(640, 480), buffer_count=2) as src:
        frame = src.read()
    assert frame.shape == (480, 640) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, picture)  # Y plane only: no padding, no chroma rows
    calls = (camera_dir / "calls.log").read_text().splitlines()
    assert calls[0] == "open 0"
    assert "'format': 'YUV420'" in calls[1] and "'size': (640, 480)" in calls[1] and "buffer_count=2" in calls[1]
    assert calls[-2:] == ["stop", "close"]


def test_picamera2_faults_are_camera_errors_that_explain(stand_in):
    camera_dir, _ = stand_in
    (camera_dir / "absent").touch()
    with pytest.raises(CameraError, match="cannot open camera 0"):
        Picamera2Source().open()
    (camera_dir / "absent").unlink()
    (camera_dir / "busy").touch()
    with pytest.raises(CameraError, match="another program holds the camera"):
        Picamera2Source().open()
    (camera_dir / "busy").unlink()
    src = Picamera2Source(timeout=0.05)
    with src:
        src.read()
        (camera_dir / "unplugged").touch()
        with pytest.raises(CameraError, match="timed out"):
            src.read()


def test_picamera2_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import picamera2 -> ImportError
    with pytest.raises(CameraError, match="python3-picamera2"):
        Picamera2Source().open()


class FlakyCamera(FrameSource):
    """A camera that fails to open ``failures`` times, then gives frames; ``hang`` makes reads hang."""

    may_hang = True

    def __init__(self, failures=0, hang=None):
        self.failures, self.hang, self.calls = failures, hang, []

    def open(self):
        self.calls.append("open")
        if self.failures:
            self.failures -= 1
            raise CameraError("busy")

    def read(self):
        if self.hang is not None:
            self.hang.wait()
        return np.zeros((4, 4), np.uint8)

    def close(self):
        self.calls.append("close")


def test_retrying_source_pauses_longer_after_each_fault_and_says_when_the_camera_is_back():
    camera, pauses, lines, changes = FlakyCamera(failures=4), [], [], []
    source = RetryingSource(lambda: camera, max_backoff=0.15, sleep=pauses.append, log=lines.append,
                            on_change=lambda: changes.append(source.error))
    got = [source.read() for _ in range(5)]
    assert [g is None for g in got] == [True] * 4 + [False]
    assert pauses == [0.05, 0.1, 0.15, 0.15]  # doubling, capped
    assert lines[0] == "camera fault: busy; retrying" and lines[1].startswith("camera back after") and len(lines) == 2
    assert changes == ["busy"] * 4 + [None] and source.error is None
    assert camera.calls == ["open", "close"] * 4 + ["open"]


def test_reader_thread_gives_up_a_hung_read_once_stopped():
    hang, stop = threading.Event(), threading.Event()
    source = ReaderThread(FlakyCamera(hang=hang), stop.is_set)
    source.open()
    threading.Timer(0.1, stop.set).start()
    t0 = time.monotonic()
    assert source.read() is None and time.monotonic() - t0 < 0.5  # stopped while the read hung
    hang.set()
    source.close()

