"""`cardcam run` for real: a subprocess on replayed frames, a real notify socket, real files.

Each test reads what the daemon shows through what it publishes: its log lines, the datagrams it
sends to $NOTIFY_SOCKET, and its state file, whose LED values are read back from the gpiozero
devices (on MockFactory pins).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from daemon_fixtures import (CODE_ROOT, REPO, STAND_IN_DIR, Daemon, NotifySocket, tiny_model,  # noqa: F401
                             readable_frames, write_config, write_frames)
from device.bundle import load_bundle, save_bundle


@pytest.fixture
def notify(tmp_path):
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    path = tmp_path / "models" / "current.npz"
    path.parent.mkdir()
    shutil.copyfile(tiny_model, path)
    return path


def config_for(tmp_path, model, frames, /, **overrides):
    sections = {
        "camera": {"source": "replay", "replay": str(frames), "fps": 60, "loop": True},
        "model": {"path": str(model), "poll_interval": 0.05, "stable_time": 0.2, "retry_interval": 0.3},
        "decision": {"window": 3, "enter": 0.7, "exit": 0.5},
        "daemon": {"state_file": str(tmp_path / "state.json"), "status_interval": 0.1},
    }
    for section, keys in overrides.items():
        sections.setdefault(section, {}).update(keys)
    return write_config(tmp_path / "config.toml", **sections)


def start(tmp_path, config, notify=None, env=None):
    return Daemon(config, tmp_path / "state.json", notify, env=env)


def test_reaches_ready_and_shows_each_card_in_turn(tmp_path, model_copy, notify):
    frames = write_frames(tmp_path / "frames", model_copy, [(0, 4), (None, 4), (1, 4), (None, 4)])
    config = config_for(tmp_path, model_copy, frames, camera={"fps": 0, "loop": False, "hold": 2})
    daemon = start(tmp_path, config, notify)
    try:
        assert daemon.wait(timeout=30) == 0, daemon.output
    finally:
        daemon.stop()
    assert daemon.shown() == ["0", "no card", "1", "no card"], daemon.output
    assert "replay finished" in daemon.output
    # systemd heard: ready once the first frame was classified, a status line, then stopping.
    messages = notify.messages
    assert "READY=1" in messages and "STOPPING=1" in messages
    assert messages.index("READY=1") < messages.index("STOPPING=1")
    assert any(m.startswith("STATUS=") and "model tiny" in m for m in messages), messages
    final = daemon.state()
    assert final["state"] == "stopped" and final["frames"] == 32
    assert final["leds"] == {"0": 0, "1": 0} and final["status_led"] == 0


def test_sigterm_turns_everything_off_and_exits_zero(tmp_path, model_copy, notify):
    frames = write_frames(tmp_path / "frames", model_copy, [(1, 3)])
    daemon = start(tmp_path, config_for(tmp_path, model_copy, frames), notify)
    try:
        daemon.wait_state(label="1", what="the 1 card shown")
        lit = daemon.state()
        assert lit["leds"] == {"0": 0, "1": 1} and lit["status_led"] == 1 and lit["status"] == "running"
        t0 = time.monotonic()
        daemon.signal(signal.SIGTERM)
        rc = daemon.wait(timeout=5)
        print(f"exit {time.monotonic() - t0:.3f} s after SIGTERM")
    finally:
        daemon.stop()
    assert rc == 0, daemon.output
    final = daemon.state()
    assert final["state"] == "stopped"
    assert final["leds"] == {"0": 0, "1": 0} and final["status_led"] == 0
    assert "stopped: LEDs off, camera closed" in daemon.output
    assert notify.wait("STOPPING=1")


def test_sigint_also_stops_cleanly(tmp_path, model_copy):
    frames = write_frames(tmp_path / "frames", model_copy, [(0, 2)])
    daemon = start(tmp_path, config_for(tmp_path, model_copy, frames))
    try:
        daemon.wait_state(label="0", what="the 0 card shown")
        daemon.signal(signal.SIGINT)
        assert daemon.wait(timeout=5) == 0, daemon.output
    finally:
        daemon.stop()
    assert daemon.state()["leds"] == {"0": 0, "1": 0}


def _write_plain(path, data: bytes):
    """What a plain `scp` or `cp` over the file does: truncate in place, then write."""
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.truncate(0)
        f.write(data)


def test_hot_reload_takes_a_good_model_and_refuses_bad_ones(tmp_path, model_copy, tiny_model, notify):
    frames = write_frames(tmp_path / "frames", model_copy, [(1, 3)])
    config = config_for(tmp_path, model_copy, frames, camera={"fps": 40})
    bundle = load_bundle(tiny_model)
    daemon = start(tmp_path, config, notify)
    try:
        daemon.wait_state(label="1", model="tiny", what="first model running")
        # A good new model, copied the safe way: to a temporary name, then renamed over the old.
        bundle.meta["name"] = "second"
        save_bundle(bundle, tmp_path / "second.npz")
        shutil.copyfile(tmp_path / "second.npz", model_copy.with_name(".incoming.npz"))
        model_copy.with_name(".incoming.npz").replace(model_copy)
        daemon.wait_state(model="second", reloads=1, what="the second model swapped in")
        good_sha = daemon.state()["model_sha256"]

        # Refused, one after the other; the running model stays and keeps classifying.
        data = (tmp_path / "second.npz").read_bytes()
        bad_files = {"truncated": data[: len(data) // 2], "garbage": b"not a model at all" * 100}
        # NaN weights, packed by hand (save_bundle would refuse them).
        nan = {k: v.copy() for k, v in bundle.weights.items()}
        first = sorted(nan)[0]
        nan[first][...] = np.nan
        nan_path = tmp_path / "nan.npz"
        np.savez(nan_path, meta=np.frombuffer(json.dumps(bundle.meta).encode(), np.uint8), **nan)
        bad_files["nan"] = nan_path.read_bytes()
        # A valid bundle for another task.
        other = load_bundle(tiny_model)
        other.meta["task"] = "folder:elsewhere"
        other.meta["name"] = "other-task"
        save_bundle(other, tmp_path / "other.npz")
        bad_files["wrong task"] = (tmp_path / "other.npz").read_bytes()

        for n, (kind, payload) in enumerate(bad_files.items(), start=1):
            _write_plain(model_copy, payload)
            daemon.wait_state(refusals=n, what=f"the {kind} model refused")
            frames_before = daemon.state()["frames"]
            daemon.wait_for(lambda: daemon.state().get("frames", 0) > frames_before + 5, what="frames after refusal")
            state = daemon.state()
            assert state["model"] == "second" and state["model_sha256"] == good_sha, kind
            assert state["label"] == "1" and state["leds"] == {"0": 0, "1": 1}, kind
        refusals = [line for line in daemon.lines if "model refused" in line]
        assert len(refusals) == 4, daemon.output
        assert "still running second" in refusals[0]
        assert any("NaN" in line for line in refusals) and any("wrong task" in line for line in refusals)

        # The file removed: nothing to load, the model in memory goes on.
        model_copy.unlink()
        daemon.wait_for(lambda: "is gone; still running second" in daemon.output, what="note of the missing file")
        frames_before = daemon.state()["frames"]
        daemon.wait_for(lambda: daemon.state().get("frames", 0) > frames_before + 5, what="frames without the file")
        # A plain copy of a good model over the file (no temp name) is taken once it is complete.
        bundle.meta["name"] = "third"
        save_bundle(bundle, tmp_path / "third.npz")
        _write_plain(model_copy, (tmp_path / "third.npz").read_bytes())
        daemon.wait_state(model="third", reloads=2, what="the third model swapped in")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        daemon.stop()


def test_sighup_reloads_config_and_model(tmp_path, model_copy, tiny_model):
    frames = write_frames(tmp_path / "frames", model_copy, [(0, 2)])
    config = config_for(tmp_path, model_copy, frames, model={"watch": False})
    daemon = start(tmp_path, config)
    try:
        daemon.wait_state(label="0", what="the 0 card shown")
        # Move the model elsewhere and point the config at it, with the LEDs on other pins names.
        bundle = load_bundle(tiny_model)
        bundle.meta["name"] = "moved"
        save_bundle(bundle, tmp_path / "moved.npz")
        config_for(tmp_path, tmp_path / "moved.npz", frames,
                   model={"watch": False}, outputs={"leds": {"0": 5, "1": 6}, "status_led": 13})
        daemon.signal(signal.SIGHUP)
        daemon.wait_state(model="moved", what="model from the reloaded config")
        daemon.wait_state(label="0", what="still showing 0")
        # A broken config on reload is refused with its reason; the daemon keeps going.
        (tmp_path / "config.toml").write_text("[decision]\nwindw = 3\n")
        daemon.signal(signal.SIGHUP)
        daemon.wait_for(lambda: "config reload refused" in daemon.output, what="refusal of the bad config")
        assert "unknown key 'windw' (did you mean 'window'?)" in daemon.output
        frames_before = daemon.state()["frames"]
        daemon.wait_for(lambda: daemon.state().get("frames", 0) > frames_before + 3, what="frames after refusal")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        daemon.stop()


def test_no_model_at_start_is_a_model_fault_until_one_arrives(tmp_path, tiny_model, notify):
    model = tmp_path / "models" / "later.npz"
    frames = write_frames(tmp_path / "frames", tiny_model, [(1, 2)])
    daemon = start(tmp_path, config_for(tmp_path, model, frames), notify)
    try:
        daemon.wait_state(status="model fault", what="model fault on the status LED")
        # The state file can be ahead of the log and notify readers: wait for those, don't sample them.
        daemon.wait_for(lambda: "model fault:" in daemon.output and "later.npz" in daemon.output,
                        what="the model fault logged with the file's name")
        daemon.wait_for(lambda: any(m.startswith("STATUS=waiting for a model") for m in notify.messages),
                        what="STATUS=waiting for a model")
        assert not notify.has("READY=1")
        model.parent.mkdir()
        shutil.copyfile(tiny_model, model)
        daemon.wait_state(label="1", status="running", what="running once the model arrived")
        daemon.wait_for(lambda: notify.has("READY=1"), what="READY=1")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        daemon.stop()


def test_camera_faults_are_ridden_out(tmp_path, tiny_model, notify):
    """The Pi camera source against the picamera2 stand-in: busy at start, then unplugged."""
    camera_dir = tmp_path / "camera"
    write_frames(camera_dir / "frames", tiny_model, [(0, 2)])
    (camera_dir / "busy").touch()
    config = config_for(tmp_path, tiny_model, camera_dir, camera={"source": "picamera2"})
    env = {"PYTHONPATH": f"{STAND_IN_DIR}:{CODE_ROOT}", "STAND_IN_CAMERA_DIR": str(camera_dir)}
    daemon = start(tmp_path, config, notify, env=env)
    try:
        daemon.wait_state(state="camera fault", status="camera fault", what="busy camera reported")
        daemon.wait_for(lambda: "Device or resource busy" in daemon.output
                        and "another program holds the camera" in daemon.output, what="the busy camera logged")
        (camera_dir / "busy").unlink()
        daemon.wait_state(label="0", state="running", what="frames once the camera is free")
        assert notify.wait("READY=1")

        (camera_dir / "unplugged").touch()
        daemon.wait_state(state="camera fault", what="timeouts reported")
        daemon.wait_for(lambda: "timed out" in daemon.output, what="the timeout logged")
        daemon.wait_for(lambda: (camera_dir / "calls.log").read_text().count("open") >= 4, what="retries")
        t0 = time.monotonic()
        (camera_dir / "unplugged").unlink()
        daemon.wait_state(state="running", status="running", what="recovery")
        print(f"recovered {time.monotonic() - t0:.2f} s after the camera came back")
        frames_before = daemon.state()["frames"]
        daemon.wait_for(lambda: daemon.state().get("frames", 0) > frames_before + 5, what="frames after recovery")
        assert "camera back after" in daemon.output
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        daemon.stop()
    calls = (camera_dir / "calls.log").read_text().splitlines()
    assert calls[-2:] == ["stop", "close"]  # the camera is released on exit
    assert any("'format': 'YUV420'" in c and "buffer_count=2" in c for c in calls if c.startswith("configure"))


@pytest.mark.parametrize("text, message", [
    ("[camera]\nfsp = 30\n", "[camera] unknown key 'fsp' (did you mean 'fps'?)"),
    ("[decison]\nwindow = 3\n", "unknown section [decison] (did you mean 'decision'?)"),
    ("[decision]\nenter = 1.5\n", "[decision] enter must be a number from 0.0 to 1.0, got 1.5"),
    ("[outputs]\nleds = { \"0\" = 17, \"1\" = 17 }\n", "uses pin 17, already used by leds.\"0\""),
    ("[camera\n", "not valid TOML"),
])
def test_config_errors_are_one_clear_line(tmp_path, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "device", "run", "--simulate", "--config", str(config)],
                          capture_output=True, text=True, timeout=30, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and str(config) in proc.stderr and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_missing_config_file_asked_for_is_an_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "device", "run", "--config", str(tmp_path / "nope.toml")],
                          capture_output=True, text=True, timeout=30, cwd=REPO)
    assert proc.returncode == 2 and "nope.toml: no such config file" in proc.stderr


def test_corrupt_zip_member_is_refused_at_start_too(tmp_path, tiny_model):
    model = tmp_path / "broken.npz"
    with zipfile.ZipFile(tiny_model) as src, zipfile.ZipFile(model, "w") as dst:
        for item in src.infolist():
            if item.filename != "meta.npy":
                dst.writestr(item, src.read(item))
    frames = write_frames(tmp_path / "frames", tiny_model, [(0, 1)])
    daemon = start(tmp_path, config_for(tmp_path, model, frames))
    try:
        daemon.wait_state(status="model fault", what="model fault")
        daemon.wait_for(lambda: "no 'meta' entry" in daemon.output, what="the missing meta logged")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        daemon.stop()


def _ping_gaps(notify, seconds: float) -> list[float]:
    """The gaps between WATCHDOG=1 datagrams over ``seconds`` (seen by polling every 5 ms), the
    time before the first and after the last included."""
    seen, times, t0 = notify.messages.count("WATCHDOG=1"), [], time.monotonic()
    while time.monotonic() - t0 < seconds:
        count = notify.messages.count("WATCHDOG=1")
        if count != seen:
            seen = count
            times.append(time.monotonic())
        time.sleep(0.005)
    edges = [t0, *times, time.monotonic()]
    return [b - a for a, b in zip(edges, edges[1:])]


def test_watchdog_pings_come_from_the_running_loop_and_journald_gets_no_timestamps(tmp_path, tiny_model, notify):
    """WATCHDOG=1 (every 50 ms here) comes from the loop's progress, not from a timer: frames
    running, the pings come; a camera read that hangs stops them (systemd then restarts the
    service); during a camera fault's long retry pauses (up to 1.5 s) the pauses keep them coming."""
    camera_dir = tmp_path / "camera"
    write_frames(camera_dir / "frames", tiny_model, [(1, 1)])
    config = config_for(tmp_path, tiny_model, camera_dir, camera={"source": "picamera2", "timeout": 0.1},
                        daemon={"max_backoff": 1.5})
    env = {"PYTHONPATH": f"{STAND_IN_DIR}:{CODE_ROOT}", "STAND_IN_CAMERA_DIR": str(camera_dir),
           "WATCHDOG_USEC": "100000", "JOURNAL_STREAM": "8:12345"}
    daemon = start(tmp_path, config, notify, env=env)
    try:
        daemon.wait_state(label="1", what="running on the camera")
        frames = daemon.state()["frames"]
        running = _ping_gaps(notify, 1.0)
        assert len(running) >= 10 and max(running) < 0.5, running  # the frame loop pings
        assert daemon.state()["frames"] > frames

        (camera_dir / "stalled").touch()  # the next capture hangs: the loop is stuck
        time.sleep(0.3)
        stuck = _ping_gaps(notify, 1.0)
        assert len(stuck) == 1, stuck  # not one ping in that second

        (camera_dir / "unplugged").touch()  # reads time out: retries, pausing 0.05 s doubling to 1.5 s
        (camera_dir / "stalled").unlink()
        daemon.wait_state(state="camera fault", what="fault")
        time.sleep(1.5)  # the pauses have grown to their longest
        faulty = _ping_gaps(notify, 3.0)
        assert len(faulty) >= 10 and max(faulty) < 0.5, faulty  # the pauses ping (a capture waits 0.1-0.2 s)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=5) == 0, daemon.output
    finally:
        (camera_dir / "stalled").unlink(missing_ok=True)
        daemon.stop()
    shows = [line for line in daemon.lines if "shows" in line]
    assert shows and all(line.startswith("shows ") for line in shows), daemon.output  # journald stamps lines itself


def test_sigterm_during_a_camera_fault_still_exits_cleanly(tmp_path, tiny_model, notify):
    camera_dir = tmp_path / "camera"
    write_frames(camera_dir / "frames", tiny_model, [(1, 1)])
    config = config_for(tmp_path, tiny_model, camera_dir, camera={"source": "picamera2", "timeout": 5.0})
    env = {"PYTHONPATH": f"{STAND_IN_DIR}:{CODE_ROOT}", "STAND_IN_CAMERA_DIR": str(camera_dir)}
    daemon = start(tmp_path, config, notify, env=env)
    try:
        daemon.wait_state(label="1", what="running on the camera")
        (camera_dir / "unplugged").touch()  # reads now block, then time out
        daemon.wait_state(state="camera fault", what="fault")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=5) == 0, daemon.output
    finally:
        daemon.stop()
    assert daemon.state()["state"] == "stopped" and daemon.state()["leds"] == {"0": 0, "1": 0}
