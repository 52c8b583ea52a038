"""The TFLite runtime on the device side: chosen by 'auto', int8 quantisation from the tensor's own
parameters, the same answers as the float NumPy forward pass, and clear refusals. Device code only
(no Keras), so this file also runs in the numpy<2 + tflite-runtime venv of .ci/run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from device.bundle import Bundle, BundleError, load_bundle, save_bundle
from device.runtime import (DELEGATE_NOTICE, NumpyRuntime, RuntimeUnavailable, TfliteRuntime, make_runtime,
                            stderr_without, stderr_without_delegate_notice, tflite_interpreter)

from conftest import skip_or_fail  # noqa: E402


@pytest.fixture(autouse=True)
def _needs_a_tflite_runtime():
    if tflite_interpreter() is None:
        skip_or_fail("no TFLite runtime installed here")


REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def copy_of(bundle: Bundle, **changes) -> Bundle:
    return dataclasses.replace(bundle, meta=json.loads(json.dumps(bundle.meta)), **changes)


def test_auto_runs_the_tflite_entry_and_numpy_without_one(int8_model, bundle_factory):
    runtime = make_runtime(int8_model.bundle, "auto")
    assert isinstance(runtime, TfliteRuntime) and runtime.name == "tflite"
    assert runtime.labels == ["0", "1"] and "int8 input" in runtime.description
    assert tflite_interpreter()[0] in runtime.description
    assert isinstance(make_runtime(int8_model.bundle, "numpy"), NumpyRuntime)
    assert isinstance(make_runtime(bundle_factory(), "auto"), NumpyRuntime)  # no TFLite entry


def test_int8_agrees_with_float_on_real_inputs(int8_model, mnist01_inputs):
    x, y = mnist01_inputs
    assert len(x) >= 250
    q = make_runtime(int8_model.bundle, "tflite").predict(x)
    f = NumpyRuntime(int8_model.bundle).predict(x)
    assert q.shape == f.shape == (len(x), 2) and q.dtype == np.float32
    agree = float((q.argmax(1) == f.argmax(1)).mean())
    drop = float((f.argmax(1) == y).mean() - (q.argmax(1) == y).mean())
    assert agree >= 0.99 and drop <= 0.005, (agree, drop)
    # Dequantised with the output tensor's scale and zero point: probabilities, close to the float ones.
    assert np.all(q >= 0) and np.allclose(q.sum(1), 1.0, atol=0.02)
    assert np.abs(q - f).max() <= 0.1
    assert np.ptp(f[:, 0]) > 0.5  # the inputs really differ


def test_tensors_are_allocated_once_and_batches_equal_single_inputs(int8_model, mnist01_inputs):
    x, _ = mnist01_inputs
    runtime = make_runtime(int8_model.bundle, "tflite")
    interpreter = runtime._interpreter
    batch = runtime.predict(x[:6])
    singles = np.concatenate([runtime.predict(x[i]) for i in range(6)])  # (H, W, C) inputs too
    np.testing.assert_array_equal(batch, singles)
    np.testing.assert_array_equal(runtime.predict(x[:6]), batch)
    assert runtime._interpreter is interpreter
    with pytest.raises(ValueError, match="does not match"):
        runtime.predict(np.zeros((1, 28, 28, 1), np.float32))


def test_thread_count_is_configurable(int8_model, mnist01_inputs):
    x, _ = mnist01_inputs
    one = make_runtime(int8_model.bundle, "tflite", 1)
    two = make_runtime(int8_model.bundle, "tflite", 2)
    assert "1 thread)" in one.description and "2 threads" in two.description
    np.testing.assert_array_equal(one.predict(x[:20]), two.predict(x[:20]))
    for bad in (0, -1, 1.5):
        with pytest.raises(RuntimeUnavailable, match="threads"):
            make_runtime(int8_model.bundle, "tflite", bad)


def test_tflite_refusals_are_one_line_and_name_the_file(int8_model, bundle_factory, tmp_path):
    plain = bundle_factory()
    plain.path = tmp_path / "plain.npz"
    with pytest.raises(RuntimeUnavailable, match="plain.npz: the bundle has no TFLite model") as e:
        make_runtime(plain, "tflite")
    assert "\n" not in str(e.value) and "cardcam-train export" in str(e.value)
    # A damaged flatbuffer (no meta record to catch it first): auto does not quietly fall back.
    broken = copy_of(int8_model.bundle, tflite=b"TFL3" + bytes(200), path=tmp_path / "broken.npz")
    broken.meta.pop("tflite", None)
    for kind in ("auto", "tflite"):
        with pytest.raises(RuntimeUnavailable, match="broken.npz: the TFLite model cannot be loaded") as e:
            make_runtime(broken, kind)
        assert "\n" not in str(e.value)
    # A TFLite model for another input size than the bundle's.
    other = copy_of(int8_model.bundle, path=tmp_path / "other.npz")
    other.meta["input_shape"] = [28, 28, 1]
    with pytest.raises(RuntimeUnavailable, match=r"other.npz: the TFLite model takes \[\[1, 32, 32, 1\]\]"):
        make_runtime(other, "tflite")


def test_meta_records_the_tflite_entry_and_its_hash(int8_model, tmp_path):
    record = int8_model.bundle.meta["tflite"]
    assert record["input"] == record["output"] == "int8"
    assert record["sha256"] == hashlib.sha256(int8_model.bundle.tflite).hexdigest()
    # Altered bytes, a record without an entry, an unknown type: refused on load and on save.
    altered = copy_of(int8_model.bundle, tflite=int8_model.bundle.tflite[:-1] + b"\x00")
    with pytest.raises(BundleError, match="'tflite' entry does not match its hash"):
        save_bundle(altered, tmp_path / "a.npz")
    missing = copy_of(int8_model.bundle, tflite=None)
    with pytest.raises(BundleError, match="meta describes a TFLite model but there is no 'tflite' entry"):
        save_bundle(missing, tmp_path / "b.npz")
    odd = copy_of(int8_model.bundle)
    odd.meta["tflite"]["input"] = "int4"
    with pytest.raises(BundleError, match="meta 'tflite' 'input' must be one of int8, uint8, float32, got 'int4'"):
        save_bundle(odd, tmp_path / "c.npz")
    assert not list(tmp_path.iterdir())  # nothing half-written
    # The same checks on load: write a good file, then swap in different TFLite bytes.
    good = save_bundle(copy_of(int8_model.bundle), tmp_path / "good.npz")
    import zipfile

    with zipfile.ZipFile(good) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["tflite.npy"] = members["tflite.npy"][:-1] + bytes([members["tflite.npy"][-1] ^ 1])
    with zipfile.ZipFile(tmp_path / "tampered.npz", "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    with pytest.raises(BundleError, match="tampered.npz: the 'tflite' entry does not match its hash"):
        load_bundle(tmp_path / "tampered.npz")


def test_predict_cli_reads_the_samples_the_same_with_either_runtime(int8_model):
    samples = sorted(str(p) for p in (REPO / "device" / "samples").glob("*.png"))
    answers = {}
    for kind in ("numpy", "tflite"):
        proc = subprocess.run([sys.executable, "-m", "device", "predict", "--model", str(int8_model.path), "--json",
                               "--runtime", kind, *samples], capture_output=True, text=True, timeout=120, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        answers[kind] = [json.loads(line)["label"] for line in proc.stdout.splitlines()]
    assert answers["numpy"] == answers["tflite"]
    assert {"0", "1", None} <= set(answers["tflite"])


def test_fallback_order_litert_then_tflite_runtime_then_tensorflow():
    """With the preferred module made unimportable, the next one in line is used."""
    code = ("import sys; sys.modules[{blocked!r}] = None; "
            "from device.runtime import tflite_interpreter; print(tflite_interpreter()[0])")
    available = [label for module, label in (("ai_edge_litert", "ai_edge_litert"), ("tflite_runtime", "tflite_runtime"),
                                             ("tensorflow", "tensorflow.lite"))
                 if __import__("importlib.util").util.find_spec(module) is not None]
    first = subprocess.run([sys.executable, "-c", code.format(blocked="nothing")], capture_output=True, text=True,
                           cwd=REPO, timeout=120)
    assert first.stdout.strip() == available[0]
    if len(available) > 1:
        blocked = {"ai_edge_litert": "ai_edge_litert", "tflite_runtime": "tflite_runtime",
                   "tensorflow.lite": "tensorflow"}[available[0]]
        second = subprocess.run([sys.executable, "-c", code.format(blocked=blocked)], capture_output=True,
                                text=True, cwd=REPO, timeout=120)
        assert second.stdout.strip() == available[1], second.stderr[-500:]


def test_daemon_first_line_and_doctor_name_the_runtime(int8_model, tmp_path):
    from daemon_fixtures import write_config, write_frames

    label = tflite_interpreter()[0]
    frames = write_frames(tmp_path / "frames", int8_model.path, [(1, 3)])
    config = write_config(tmp_path / "c.toml", camera={"source": "replay", "replay": str(frames), "fps": 0,
                                                       "loop": False},
                          model={"path": str(int8_model.path), "threads": 2})
    proc = subprocess.run([sys.executable, "-m", "device", "run", "--simulate", "--config", str(config)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert f"runtime auto: tflite via {label}" in lines[0], lines[0]
    loaded = next(line for line in lines if "model loaded" in line)
    assert f"runtime tflite ({label}" in loaded and "2 threads" in loaded
    assert any("shows 1" in line for line in lines), proc.stdout

    proc = subprocess.run([sys.executable, "-m", "device", "doctor", "--config", str(config)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    checks = {line.split()[1]: line for line in proc.stdout.splitlines()[:-1]}
    assert checks["runtimes"].startswith("ok") and f"tflite ({label}" in checks["runtimes"]
    assert f"runtime tflite ({label}" in checks["model"]


def test_loading_a_model_writes_nothing_to_stderr_but_what_is_not_the_delegate_notice(int8_model, capfd):
    """TFLite's C++ logger prints DELEGATE_NOTICE to fd 2 for every interpreter; `cardcam
    predict`, `doctor` and the journal show it no more. Anything else written there still shows."""
    runtime = TfliteRuntime(int8_model.bundle)
    runtime.predict(np.zeros((1, *runtime.input_shape), np.float32))
    assert capfd.readouterr().err == ""
    with stderr_without_delegate_notice():
        os.write(2, f"{DELEGATE_NOTICE}\nsomething else\n".encode())
        sys.stderr.write("and from Python\n")
    # (pytest's own sys.stderr is not fd 2, so the two lines may come in either order)
    assert sorted(capfd.readouterr().err.splitlines()) == ["and from Python", "something else"]


def test_runtimes_made_at_once_in_threads_leave_fd_2_where_it_was(int8_model, capfd):
    """The web page may make a TFLite runtime while the loop reloads a model: two redirects of fd 2
    at once must neither leave fd 2 on a temporary file nor let an unwanted line through, nested
    ones included (the delegate notice of the inner runtime, the outer one's own line)."""
    import threading

    before = os.fstat(2)
    start = threading.Barrier(4)
    failures = []

    def load(n):
        try:
            start.wait()
            for _ in range(n):
                TfliteRuntime(int8_model.bundle)
                with stderr_without(lambda line: line == "unwanted"):  # a redirect inside another
                    TfliteRuntime(int8_model.bundle)
                    os.write(2, b"unwanted\n")
        except Exception as e:  # noqa: BLE001 -- reported below, in the main thread
            failures.append(e)

    threads = [threading.Thread(target=load, args=(15,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = os.fstat(2)
    assert not failures
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
    with stderr_without_delegate_notice():
        os.write(2, b"still shown\n")
    assert capfd.readouterr().err == "still shown\n"
