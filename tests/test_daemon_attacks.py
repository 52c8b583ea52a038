"""`cardcam run` under attack (issue 20), as a real subprocess: model files that crashed it or ate its
memory, frames that failed, FIFOs where files belong, a notify socket nobody reads. Each test
reproduces an attack that once crashed the daemon, started a crash loop, or made SIGTERM a no-op.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from daemon_fixtures import CODE_ROOT, STAND_IN_DIR, tiny_model, write_frames  # noqa: F401
from device.bundle import load_bundle
from test_daemon import config_for, model_copy, notify, start  # noqa: F401

STOP_DEADLINE = 0.5  # seconds from SIGTERM to exit, as systemd's unit and the docs promise


def put(path: Path, make) -> None:
    """Replace ``path`` at once (rename), with what ``make(temporary path)`` creates there."""
    tmp = path.with_name(f".incoming-{time.monotonic_ns()}")
    make(tmp)
    os.replace(tmp, path)


def npz(meta, weights, **extra):
    """Make an .npz by hand (np.savez), bypassing save_bundle's checks."""
    def make(tmp):
        raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.frombuffer(raw, np.uint8), **weights, **extra)
    return make


def npy_header(shape, descr="<f4") -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    return out.getvalue()


def with_entry(good: Path, name: str, header: bytes, zeros: int):
    """The good bundle plus an entry ``name`` of that header and that many zero bytes (compressed)."""
    def make(tmp):
        with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            for item in src.infolist():
                dst.writestr(item, src.read(item))
            with dst.open(f"{name}.npy", "w", force_zip64=True) as f:
                f.write(header)
                chunk, left = bytes(1 << 20), zeros
                while left > 0:
                    f.write(chunk[:left])
                    left -= len(chunk)
    return make


def symlink_to(target):
    return lambda tmp: os.symlink(target, tmp)


def crash_kinds(good: Path) -> dict:
    """The model files of the attack, each of which crashed the daemon (or took 300 MB)."""
    bundle = load_bundle(good)

    def changed(place, value):
        meta = json.loads(json.dumps(bundle.meta))
        *parents, last = place
        target = meta
        for key in parents:
            target = target[key]
        target[last] = value
        return npz(meta, bundle.weights)
    return {
        "a list as a layer type": changed(("architecture", 2, "type"), []),           # TypeError
        "a bool in the input shape": changed(("input_shape",), [32, 32, True]),      # TypeError
        "meta nested 100000 deep": npz(b"[" * 100000 + b"]" * 100000, bundle.weights),  # RecursionError
        "an entry declaring 10^10 floats": with_entry(good, "extra", npy_header((10**10,)), 64),  # MemoryError
        "600 KB that unpacks to 300 MB": with_entry(good, "extra", npy_header((75_000_000,)), 300_000_000),
        "a symlink to /dev/zero": symlink_to("/dev/zero"),                            # MemoryError, read whole
        "a symlink to /dev/urandom": symlink_to("/dev/urandom"),
        "a FIFO": os.mkfifo,                                                          # blocked for ever
    }


def vm_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def stop_within_deadline(daemon) -> float:
    """SIGTERM; the seconds until the process exited with 0 (the test fails on any other end)."""
    t0 = time.monotonic()
    daemon.signal(signal.SIGTERM)
    try:
        rc = daemon.proc.wait(5)
    except Exception:
        pytest.fail(f"no exit 5 s after SIGTERM:\n{daemon.output}")
    took = time.monotonic() - t0
    daemon.wait()
    assert rc == 0, daemon.output
    assert "Traceback" not in daemon.output, daemon.output
    print(f"exit 0 {took * 1000:.0f} ms after SIGTERM")
    assert took < STOP_DEADLINE, f"exit {took:.2f} s after SIGTERM"
    return took


def test_crash_kind_models_swapped_in_are_refused_and_the_old_one_keeps_classifying(tmp_path, model_copy):
    frames = write_frames(tmp_path / "frames", model_copy, [(1, 3)])
    daemon = start(tmp_path, config_for(tmp_path, model_copy, frames, camera={"fps": 40}))
    try:
        daemon.wait_state(label="1", model="tiny", what="the first model running")
        good_sha = daemon.state()["model_sha256"]
        peak_before = vm_kb(daemon.proc.pid, "VmHWM")
        good = tmp_path / "good.npz"  # the attacks build on it; the model path itself is replaced
        good.write_bytes(model_copy.read_bytes())
        for n, (kind, make) in enumerate(crash_kinds(good).items(), 1):
            put(model_copy, make)
            daemon.wait_state(refusals=n, what=f"{kind} refused")
            frames_before = daemon.state()["frames"]
            daemon.wait_for(lambda: daemon.state().get("frames", 0) > frames_before + 5, what=f"frames after {kind}")
            state = daemon.state()
            assert state["model_sha256"] == good_sha and state["label"] == "1" and state["leds"] == {"0": 0, "1": 1}, kind
        peak_after = vm_kb(daemon.proc.pid, "VmHWM")
        print(f"daemon peak RSS {peak_before / 1024:.1f} MB before the attacks, {peak_after / 1024:.1f} MB after")
        assert peak_after - peak_before < 16 * 1024, "refusing the files took more than 16 MB"
        refusals = [line for line in daemon.lines if "model refused" in line]
        assert len(refusals) == n, daemon.output
        assert all("still running tiny" in line for line in refusals)
        assert any("is a FIFO" in line for line in refusals) and any("is a device" in line for line in refusals)
        stop_within_deadline(daemon)  # with a FIFO at the model path
    finally:
        daemon.stop()


@pytest.mark.parametrize("kind", ["a list as a layer type", "meta nested 100000 deep", "a symlink to /dev/zero",
                                  "a FIFO"])
def test_a_restart_with_a_bad_model_stays_up_in_model_fault_until_a_good_one_arrives(tmp_path, tiny_model, kind):
    """Under Restart=on-failure, a loader crash at start-up was a crash loop."""
    model = tmp_path / "models" / "current.npz"
    model.parent.mkdir()
    frames = write_frames(tmp_path / "frames", tiny_model, [(1, 2)])
    put(model, crash_kinds(tiny_model)[kind])
    daemon = start(tmp_path, config_for(tmp_path, model, frames))
    try:
        daemon.wait_state(status="model fault", what="model fault")
        time.sleep(1.0)  # a few retries (every 0.3 s): still up, said once
        assert daemon.proc.poll() is None, daemon.output
        assert daemon.state()["state"] == "model fault"
        assert sum("model fault:" in line for line in daemon.lines) == 1, daemon.output
        put(model, lambda tmp: tmp.write_bytes(tiny_model.read_bytes()))
        daemon.wait_state(label="1", status="running", model="tiny", what="running once a good model arrived")
        stop_within_deadline(daemon)
    finally:
        daemon.stop()


def test_sigterm_with_a_fifo_at_the_model_path_from_the_start(tmp_path, tiny_model):
    model = tmp_path / "model.npz"
    os.mkfifo(model)
    frames = write_frames(tmp_path / "frames", tiny_model, [(1, 2)])
    daemon = start(tmp_path, config_for(tmp_path, model, frames))
    try:
        daemon.wait_state(status="model fault", what="model fault")
        assert "is a FIFO" in daemon.state()["model_error"]
        stop_within_deadline(daemon)
    finally:
        daemon.stop()


def test_a_fifo_in_the_replay_folder_is_skipped_and_sigterm_stops_at_once(tmp_path, model_copy):
    frames = write_frames(tmp_path / "frames", model_copy, [(1, 3)])
    os.mkfifo(frames / "0000a.png")  # between two readable frames
    (frames / "0001a.png").write_bytes(b"not a picture")
    daemon = start(tmp_path, config_for(tmp_path, model_copy, frames))
    try:
        daemon.wait_state(label="1", what="frames from the readable pictures")
        skipped = [line for line in daemon.lines if "skipped" in line]
        assert len(skipped) == 1 and "skipped 2 of 5 pictures" in skipped[0] and "0000a.png" in skipped[0], skipped
        frames_before = daemon.state()["frames"]
        daemon.wait_for(lambda: daemon.state().get("frames", 0) > frames_before + 20, what="frames going on")
        assert sum("skipped" in line for line in daemon.lines) == 1  # logged once, not at every loop
        stop_within_deadline(daemon)
    finally:
        daemon.stop()


def test_a_replay_folder_with_no_readable_picture_is_a_camera_fault(tmp_path, model_copy):
    frames = tmp_path / "frames"
    frames.mkdir()
    os.mkfifo(frames / "a.png")
    (frames / "b.png").write_bytes(b"not a picture")
    daemon = start(tmp_path, config_for(tmp_path, model_copy, frames))
    try:
        daemon.wait_state(state="camera fault", status="camera fault", what="a camera fault")
        assert "none of its 2 pictures can be read" in daemon.state()["camera_error"]
        stop_within_deadline(daemon)
    finally:
        daemon.stop()


def test_a_notify_socket_nobody_reads_neither_blocks_the_loop_nor_sigterm(tmp_path, model_copy):
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deaf.bind(str(tmp_path / "deaf.sock"))  # bound, never read: its queue fills after a few messages
    frames = write_frames(tmp_path / "frames", model_copy, [(1, 2)])
    config = config_for(tmp_path, model_copy, frames, daemon={"status_interval": 0.1})
    daemon = start(tmp_path, config, env={"NOTIFY_SOCKET": str(tmp_path / "deaf.sock"), "WATCHDOG_USEC": "100000"})
    try:
        daemon.wait_state(label="1", what="running")
        daemon.wait_for(lambda: daemon.state().get("notify_dropped", 0) > 20, what="messages dropped")
        frames_before = daemon.state()["frames"]
        daemon.wait_for(lambda: daemon.state().get("frames", 0) > frames_before + 10, what="frames going on")
        assert sum("notify socket" in line and "is full" in line for line in daemon.lines) == 1, daemon.output
        stop_within_deadline(daemon)
    finally:
        daemon.stop()
        deaf.close()


def test_a_missing_notify_socket_is_logged_once(tmp_path, model_copy):
    frames = write_frames(tmp_path / "frames", model_copy, [(1, 2)])
    config = config_for(tmp_path, model_copy, frames, daemon={"status_interval": 0.1})
    daemon = start(tmp_path, config, env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    try:
        daemon.wait_state(label="1", what="running")
        frames_before = daemon.state()["frames"]
        daemon.wait_for(lambda: daemon.state().get("frames", 0) > frames_before + 40, what="a second of frames")
        assert sum("cannot notify systemd" in line for line in daemon.lines) == 1, daemon.output
        stop_within_deadline(daemon)
    finally:
        daemon.stop()


def start_on_camera(tmp_path, model):
    """The daemon on the Pi camera source (the picamera2 stand-in, driven by files in the camera
    folder it returns), showing a "1" card; once it runs."""
    camera_dir = tmp_path / "camera"
    write_frames(camera_dir / "frames", model, [(1, 2)])
    config = config_for(tmp_path, model, camera_dir, camera={"source": "picamera2"})
    env = {"PYTHONPATH": f"{STAND_IN_DIR}:{CODE_ROOT}", "STAND_IN_CAMERA_DIR": str(camera_dir)}
    daemon = start(tmp_path, config, env=env)
    try:
        daemon.wait_state(label="1", what="running on the camera")
    except BaseException:
        daemon.stop()
        raise
    return daemon, camera_dir


def test_a_frame_the_pipeline_fails_on_is_skipped_counted_and_logged_now_and_then(tmp_path, tiny_model):
    """The Pi camera (picamera2 stand-in) delivers short buffers: 4-row frames, which preprocessing
    refuses (ImageError). The loop did not catch it: one bad frame ended the daemon."""
    daemon, camera_dir = start_on_camera(tmp_path, tiny_model)
    try:
        (camera_dir / "short").touch()
        daemon.wait_for(lambda: daemon.state().get("frame_errors", 0) > 30, what="failed frames counted")
        state = daemon.state()
        assert "ImageError" in state["frame_error"] and "smallest accepted" in state["frame_error"]
        assert daemon.proc.poll() is None
        assert sum("frame skipped" in line for line in daemon.lines) == 1, daemon.output  # at most every 10 s
        (camera_dir / "short").unlink()
        frames_before = daemon.state()["frames"]
        daemon.wait_for(lambda: daemon.state().get("frames", 0) > frames_before + 10, what="frames classified again")
        assert daemon.state()["label"] == "1"
        stop_within_deadline(daemon)
    finally:
        daemon.stop()


def test_sighup_with_a_fifo_for_the_config_and_then_sigterm(tmp_path, model_copy):
    frames = write_frames(tmp_path / "frames", model_copy, [(1, 2)])
    config = config_for(tmp_path, model_copy, frames)
    daemon = start(tmp_path, config)
    try:
        daemon.wait_state(label="1", what="running")
        put(config, os.mkfifo)
        daemon.signal(signal.SIGHUP)  # reading the config now waits for a writer that never comes
        time.sleep(0.3)
        stop_within_deadline(daemon)
    finally:
        daemon.stop()


def _waits_in(pid: int) -> set:
    """The kernel functions the process's threads sleep in (empty where /proc does not say): the
    daemon reads its config on a thread of its own, so that a stop signal need not wait for it."""
    waits = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            waits.add(Path(task, "wchan").read_text().strip())
        except OSError:
            pass
    return waits


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_during_start_up_is_a_clean_exit(tmp_path, model_copy, signum):
    """The config file is a FIFO: start-up waits in our own code, where the signal must act."""
    config = tmp_path / "config.toml"
    os.mkfifo(config)
    daemon = start(tmp_path, config)
    try:
        _waits_on_the_fifo(daemon)
        daemon.signal(signum)
        assert daemon.wait(timeout=5) == 0, daemon.output
        assert "Traceback" not in daemon.output, daemon.output
    finally:
        daemon.stop()


def _waits_on_the_fifo(daemon) -> None:
    """Until the daemon, past its imports, waits in open() for the FIFO that is its config to get a
    writer (the kernel says where the process waits; a fixed sleep was too short under a Pi CPU's
    emulation)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and daemon.proc.poll() is None and not _waits_in(daemon.proc.pid) & {
            "wait_for_partner", "fifo_open"}:
        time.sleep(0.05)
    assert daemon.proc.poll() is None, daemon.output


def _write_to_the_waiting_fifo(daemon, fifo: Path, text: str) -> None:
    """Be the writer the daemon waits for (without blocking: a daemon that died has no reader)."""
    _waits_on_the_fifo(daemon)
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def test_a_sighup_during_start_up_is_kept_for_the_loop(tmp_path, model_copy):
    """`systemctl reload` while the daemon starts: SIGHUP's default action ended the process before
    the loop had taken the signals over. Now the signals are taken from the start, and the loop reads
    the config again once it runs (here the FIFO again, which gets its writer a second time)."""
    frames = write_frames(tmp_path / "frames", model_copy, [(1, 2)])
    config = config_for(tmp_path, model_copy, frames)
    text = config.read_text()
    config.unlink()
    os.mkfifo(config)
    daemon = start(tmp_path, config)
    try:
        _waits_on_the_fifo(daemon)
        daemon.signal(signal.SIGHUP)
        _write_to_the_waiting_fifo(daemon, config, text)  # the start-up reads the config
        daemon.wait_for(lambda: "model loaded" in daemon.output, what="the start")
        _write_to_the_waiting_fifo(daemon, config, text)  # again, for the reload the SIGHUP asked for
        daemon.wait_for(lambda: "reloading" in daemon.output, what="the reload asked for during start-up")
        daemon.wait_state(label="1", what="running after the reload")
        stop_within_deadline(daemon)
    finally:
        daemon.stop()


def test_the_first_status_line_has_no_fps_until_one_is_measured(tmp_path, model_copy, notify):
    frames = write_frames(tmp_path / "frames", model_copy, [(1, 2)])
    daemon = start(tmp_path, config_for(tmp_path, model_copy, frames), notify)
    try:
        daemon.wait_state(label="1", what="running")
        assert notify.wait("READY=1")
        daemon.wait_for(lambda: any(" fps" in m for m in notify.messages), what="a STATUS with fps")
        statuses = [m for m in notify.messages if m.startswith("STATUS=1") or m.startswith("STATUS=no card")]
        assert statuses and " fps" not in statuses[0], statuses  # the READY one: nothing measured yet
        assert not any(" 0.0 fps" in m for m in notify.messages), notify.messages
        stop_within_deadline(daemon)
    finally:
        daemon.stop()


def test_sigterm_while_a_camera_capture_hangs_stops_at_once(tmp_path, tiny_model):
    """A capture that never returns (a hung driver; the stand-in's 'stalled'): the camera is read on
    a thread of its own, so SIGTERM still turns everything off and exits 0 within the deadline."""
    daemon, camera_dir = start_on_camera(tmp_path, tiny_model)
    try:
        (camera_dir / "stalled").touch()
        frames = daemon.state()["frames"]
        time.sleep(0.3)
        assert daemon.state()["frames"] <= frames + 1  # the loop waits for the hung capture
        stop_within_deadline(daemon)
    finally:
        (camera_dir / "stalled").unlink(missing_ok=True)
        daemon.stop()
    assert daemon.state()["state"] == "stopped" and daemon.state()["leds"] == {"0": 0, "1": 0}
