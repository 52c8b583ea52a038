"""The daemon's parts on their own: sd_notify over a real socket, the model file watcher, model checks."""

import os
import signal
import socket
import threading
import time

import numpy as np
import pytest

from daemon_fixtures import tiny_model  # noqa: F401
from device.bundle import BundleError, load_bundle, save_bundle
from device.daemon import signals_taken
from device.modelfile import ModelRefused, ModelWatcher, load_model
from device.systemd import SystemdNotifier

SIGNALS = {signal.SIGHUP, signal.SIGUSR1}  # SIGUSR1 for SIGTERM: one that escaped would end pytest


def test_signals_are_taken_on_a_thread_of_their_own_and_everything_is_put_back():
    """While taken, the signals are blocked in this thread and in the threads it starts (so no
    handler interrupts the loop) and each one sent reaches ``on_signal``; after, the mask and the
    handlers are what they were."""
    handlers_before = {s: signal.getsignal(s) for s in SIGNALS}
    mask_before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    got = []
    with signals_taken(SIGNALS, got.append):
        started_mask = []
        thread = threading.Thread(target=lambda: started_mask.append(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
        thread.start()
        thread.join()
        assert SIGNALS <= signal.pthread_sigmask(signal.SIG_BLOCK, []) and SIGNALS <= started_mask[0]
        for signum in sorted(SIGNALS):
            os.kill(os.getpid(), signum)
            deadline = time.monotonic() + 10
            while signum not in got and time.monotonic() < deadline:
                time.sleep(0.01)
    assert sorted(got) == sorted(SIGNALS)
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask_before
    assert {s: signal.getsignal(s) for s in SIGNALS} == handlers_before


def test_notify_sends_datagrams_to_a_path_socket(tmp_path):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "n.sock"))
    server.settimeout(2)
    n = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "n.sock")})
    assert n.notify("READY=1", "STATUS=hello")
    assert server.recv(100) == b"READY=1\nSTATUS=hello"
    n.close()
    server.close()


def test_notify_reaches_an_abstract_socket():
    name = f"cardcam-test-{os.getpid()}-{time.monotonic_ns()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(2)
    n = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
    assert n.notify("STOPPING=1")
    assert server.recv(100) == b"STOPPING=1"
    server.close()


def test_notify_without_systemd_does_nothing_and_a_gone_socket_is_not_fatal(tmp_path):
    assert not SystemdNotifier({}).notify("READY=1")
    n = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert not n.notify("READY=1")
    assert "cannot notify systemd" in n.error


def test_watchdog_pings_at_half_the_period(tmp_path):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "n.sock"))
    server.setblocking(False)
    n = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "n.sock"), "WATCHDOG_USEC": "2000000",
                         "WATCHDOG_PID": str(os.getpid())})
    assert n.watchdog_interval == 1.0
    for now in (100.0, 100.5, 101.0, 101.2, 102.1):
        n.watchdog(now)
    got = []
    while True:
        try:
            got.append(server.recv(100))
        except BlockingIOError:
            break
    assert got == [b"WATCHDOG=1"] * 3  # at 100.0, 101.0, 102.1
    other = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "n.sock"), "WATCHDOG_USEC": "2000000",
                             "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None  # the watchdog is meant for another process


def test_watcher_waits_for_the_file_to_stop_changing(tmp_path):
    path = tmp_path / "m.npz"
    w = ModelWatcher(path, stable_time=0.5)
    assert not w.poll(0.0)  # no file
    path.write_bytes(b"a")
    assert not w.poll(1.0)  # new: start the clock
    assert not w.poll(1.3)
    with open(path, "ab") as f:  # still being written
        f.write(b"more")
    assert not w.poll(1.6)
    assert not w.poll(2.0)
    assert w.poll(2.2)  # unchanged for 0.6 s
    w.known = (path.stat().st_dev, path.stat().st_ino, path.stat().st_size, path.stat().st_mtime_ns)
    assert not w.poll(5.0)  # tried already (taken or refused): not again until it changes


def test_watcher_sees_a_rename_over_the_file(tmp_path):
    path = tmp_path / "m.npz"
    path.write_bytes(b"same size")
    w = ModelWatcher(path, stable_time=0.0)
    assert w.poll(0.0)
    st = path.stat()
    w.known = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    tmp = tmp_path / ".m.npz.tmp"
    tmp.write_bytes(b"same size")
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only the inode differs
    tmp.replace(path)
    assert w.poll(1.0)


def test_load_model_checks_task_labels_and_outputs(tiny_model, tmp_path):
    bundle, runtime = load_model(tiny_model)
    assert bundle.labels == ["0", "1"] and runtime.name == "numpy"
    with pytest.raises(ModelRefused, match="config asks for 'digits'"):
        load_model(tiny_model, task="digits")
    other = load_bundle(tiny_model)
    other.meta["task"] = "folder:x"
    save_bundle(other, tmp_path / "other.npz")
    with pytest.raises(ModelRefused, match="wrong task"):
        load_model(tmp_path / "other.npz", like=bundle)
    # Weights so large that the forward pass overflows: valid file, useless model.
    huge = load_bundle(tiny_model)
    for name in huge.weights:
        if name.endswith("kernel"):
            huge.weights[name] = huge.weights[name] * np.float32(1e30)
    save_bundle(huge, tmp_path / "huge.npz")
    with pytest.raises(ModelRefused, match="non-finite"):
        load_model(tmp_path / "huge.npz")
    with pytest.raises(BundleError, match="cannot read"):
        load_model(tmp_path / "absent.npz")
