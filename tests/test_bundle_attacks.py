"""Hostile model files (issue 20): each one is refused in one line, or loads and then runs on every
shipped sample frame, the no-card ones included. None crashes the loader, blocks it, or makes it
allocate much more than the model it claims to be.

Each case is written by hand (np.savez, zipfile), bypassing save_bundle's checks, and goes through
what the daemon runs: device.modelfile.load_model, then its frame path on the sample frames, and
`cardcam predict`'s classify on the sample pictures.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import threading
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import make_bundle
from device.bundle import MAX_FILE_BYTES, BundleError, load_bundle
from device.camera import SAMPLES_DIR
from device.classify import classify
from device.config import defaults
from device.decision import Decider
from device.modelfile import ModelRefused, load_model
from device.preprocess import PreprocessSettings, load_frame, load_image

BASE = make_bundle(input_shape=(16, 16, 1))
SAMPLES = sorted(SAMPLES_DIR.glob("*.png"))
SAMPLE_FRAMES = [load_frame(p) for p in SAMPLES]
SAMPLE_PICTURES = [load_image(p) for p in SAMPLES]
# Hypothesis runs examples in one function call: function-scoped tmp_path is shared, which is fine here.
FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def write_npz(path, meta, weights=None, **extra):
    """An .npz written by hand; ``meta`` as a dict or as its raw JSON bytes."""
    raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    arrays = {"meta": np.frombuffer(raw, np.uint8), **(BASE.weights if weights is None else weights), **extra}
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def refused_or_runs(path) -> str:
    """'refused' (BundleError or ModelRefused, one line naming the file) or 'runs' (loaded, and every
    sample frame and picture classified without an exception). Anything else fails the test."""
    try:
        bundle, runtime = load_model(path, "numpy")
    except (BundleError, ModelRefused) as e:
        message = str(e)
        assert message.startswith(f"{path}: ") and "\n" not in message, message
        return "refused"
    runs_on_samples(bundle, runtime)
    return "runs"


def runs_on_samples(bundle, runtime) -> None:
    decision = defaults().decision
    decider = Decider(bundle.labels, decision.window, decision.enter, decision.exit)
    for frame in SAMPLE_FRAMES:  # the daemon's frame path
        decider.update(classify(frame, bundle, runtime).probabilities)
    for picture in SAMPLE_PICTURES:
        classify(picture, bundle, runtime)


# --- type confusion and nesting in meta ------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10)


def places(value, at=()):
    """The path of every value inside a JSON value (not the value itself)."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        yield at + (key,)
        yield from places(inner, at + (key,))


def change(meta, place, value=None, delete=False):
    *parents, last = place
    target = meta
    for key in parents:
        target = target[key]
    if delete:
        del target[last]
    else:
        target[last] = value


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_any_field_of_any_type_is_refused_or_runs(tmp_path, data):
    """Type confusion anywhere: a list for a layer's type, a bool in the input shape, a dict for a
    label, a huge integer for a kernel, a field deleted... 1 to 3 changes per file."""
    meta = copy.deepcopy(BASE.meta)
    for _ in range(data.draw(st.integers(1, 3), label="changes")):
        place = data.draw(st.sampled_from(list(places(meta))), label="place")
        if data.draw(st.booleans(), label="delete"):
            change(meta, place, delete=True)
        else:
            change(meta, place, data.draw(json_values, label="value"))
    refused_or_runs(write_npz(tmp_path / "model.npz", meta))


@pytest.mark.parametrize("place, value", [
    (("architecture", 2, "type"), []),                   # TypeError: unhashable type: 'list'
    (("input_shape",), [16, 16, True]),                  # TypeError: an integer is required
    (("input_shape",), [16, 16, 3]),                     # three channels: the weights no longer fit
    (("architecture", 0, "filters"), 10**30),
    (("architecture", 0, "kernel"), 2.5),
    (("labels", 0), {"a": 1}),
    (("labels",), ["a", "b\nREADY=1"]),                  # would write a line of its own into STATUS=
    (("name",), "x" * 100000),
    (("preprocess",), []),
    (("tflite",), {"input": [], "output": {}, "sha256": 5}),
])
def test_type_confusions_seen_in_the_attack_are_refused(tmp_path, place, value):
    meta = copy.deepcopy(BASE.meta)
    change(meta, place, value)
    path = write_npz(tmp_path / "model.npz", meta)
    with pytest.raises(BundleError) as e:
        load_bundle(path)
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value) and len(str(e.value)) < 400


def deep(depth: int, kind: str) -> str:
    return "[" * depth + "]" * depth if kind == "list" else '{"a": ' * depth + "1" + "}" * depth


@FUZZ
@given(depth=st.integers(1, 200_000) | st.sampled_from([15, 16, 17, 1000, 100_000]),
       kind=st.sampled_from(["list", "object"]),
       place=st.sampled_from([("provenance", "note"), ("architecture", 0), ("labels",), ("preprocess",), ("extra",)]))
def test_any_nesting_depth_is_refused_or_runs(tmp_path, depth, kind, place):
    meta = copy.deepcopy(BASE.meta)
    change(meta, place, "@DEEP@")
    raw = json.dumps(meta).replace('"@DEEP@"', deep(depth, kind)).encode()
    outcome = refused_or_runs(write_npz(tmp_path / "model.npz", raw))
    assert outcome == "refused" or depth <= 16


def test_the_recursion_bomb_from_the_attack(tmp_path):
    path = write_npz(tmp_path / "model.npz", ("[" * 100000 + "]" * 100000).encode())
    with pytest.raises(BundleError, match="nested too deeply"):
        load_bundle(path)


# --- declared sizes: refused before anything is decompressed ---------------------------------

def npy_header(shape, descr="<f4") -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    return out.getvalue()


def write_zip(path, entries: dict):
    """A zip of raw .npy entries: name -> bytes, or name -> (header, body length of zeros, honest size?)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                if isinstance(data, bytes):
                    f.write(data)
                    continue
                header, zeros = data
                f.write(header)
                chunk = bytes(1 << 20)
                while zeros > 0:
                    f.write(chunk[:zeros])
                    zeros -= len(chunk)
    return path


def good_entries() -> dict:
    entries = {"meta": npy_header((len(raw := json.dumps(BASE.meta).encode()),), "|u1") + raw}
    for name, a in BASE.weights.items():
        entries[name] = npy_header(a.shape) + a.astype("<f4").tobytes()
    return entries


def peak_while(fn) -> tuple[int, object]:
    """Peak bytes NumPy and Python allocate while fn runs (NumPy reports its buffers to tracemalloc)."""
    tracemalloc.start()
    try:
        try:
            result = fn()
        except BundleError as e:
            result = e
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


@FUZZ
@given(entry=st.sampled_from(["meta", "tflite", "L0.kernel", "L5.bias", "junk"]),
       count=st.integers(0, 10**12) | st.sampled_from([10**10, 2**31, 2**62]),
       descr=st.sampled_from(["<f4", "|u1", "<f8", "|O"]),
       honest=st.booleans())
def test_huge_declared_shapes_are_refused_without_allocating_them(tmp_path, entry, count, descr, honest):
    """An .npy header that declares up to 10^12 numbers, with a few bytes behind it; the zip entry's
    own size declared honestly (as the header says) or as the bytes really there."""
    entries = good_entries()
    header = npy_header((count,), descr)
    entries[entry] = header + bytes(64)
    path = write_zip(tmp_path / "model.npz", entries)
    size = len(header) + count * np.dtype(descr).itemsize
    if honest and size < 2**32:  # the zip's declared size as the header implies
        path.write_bytes(_declare_size(path.read_bytes(), f"{entry}.npy", size))
    peak, result = peak_while(lambda: load_bundle(path))
    assert isinstance(result, BundleError) or entry == "tflite" and count * np.dtype(descr).itemsize == 64, result
    assert peak < 2 << 20, f"{peak / 2**20:.1f} MB to refuse {entry} declaring {count} x {descr}"


def _declare_size(data: bytes, name: str, size: int) -> bytes:
    """The zip's central-directory record for ``name`` rewritten to declare ``size`` uncompressed bytes."""
    data = bytearray(data)
    at = data.index(b"PK\x01\x02")  # the first central-directory record
    while True:
        name_len, extra_len, comment_len = (int.from_bytes(data[at + i:at + i + 2], "little") for i in (28, 30, 32))
        if data[at + 46:at + 46 + name_len].decode() == name:
            data[at + 24:at + 28] = size.to_bytes(4, "little")
            return bytes(data)
        at += 46 + name_len + extra_len + comment_len


@pytest.mark.parametrize("entry", ["junk", "meta", "tflite", "L0.kernel"])
def test_a_small_file_that_unpacks_to_300_mb_costs_no_memory(tmp_path, entry):
    """From the attack: 600 KB on disk, 300 MB once decompressed (took the daemon from 53 to 353 MB)."""
    entries = good_entries()
    entries[entry] = (npy_header((75_000_000,)), 300_000_000)
    path = write_zip(tmp_path / "model.npz", entries)
    assert path.stat().st_size < 1 << 20
    peak, result = peak_while(lambda: load_bundle(path))
    assert isinstance(result, BundleError), result
    assert peak < 2 << 20, f"{peak / 2**20:.1f} MB to refuse it"


def test_extra_entries_are_refused_by_name_before_they_are_read(tmp_path):
    entries = good_entries()
    entries["junk"] = npy_header((4,)) + bytes(16)
    with pytest.raises(BundleError, match="unexpected array 'junk'"):
        load_bundle(write_zip(tmp_path / "model.npz", entries))
    with zipfile.ZipFile(tmp_path / "other.npz", "w") as z:  # not even an .npy
        for name, data in good_entries().items():
            z.writestr(f"{name}.npy", data)
        z.writestr("notes.txt", b"hello")
    with pytest.raises(BundleError, match="unexpected array 'notes.txt'"):
        load_bundle(tmp_path / "other.npz")


# --- what the path is: never a FIFO, a device or a huge file ---------------------------------

def load_in_thread(path):
    """load_bundle on a thread: (finished within 5 s, its outcome)."""
    outcome = []

    def run():
        try:
            outcome.append(load_bundle(path))
        except BaseException as e:  # reported to the test
            outcome.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(5)
    return not t.is_alive(), outcome[0] if outcome else None


@pytest.mark.parametrize("target, what", [("/dev/zero", "is a device"), ("/dev/urandom", "is a device"),
                                          ("/dev/null", "is a device")])
def test_a_symlink_to_a_device_is_refused_unread(tmp_path, target, what):
    path = tmp_path / "model.npz"
    path.symlink_to(target)
    done, outcome = load_in_thread(path)
    assert done and isinstance(outcome, BundleError) and what in str(outcome), outcome


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    path = tmp_path / "model.npz"
    os.mkfifo(path)
    done, outcome = load_in_thread(path)
    assert done, "load_bundle is stuck opening a FIFO"
    assert isinstance(outcome, BundleError) and "is a FIFO" in str(outcome), outcome


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path):
    path = tmp_path / "model.npz"
    with open(path, "wb") as f:
        f.write(b"PK")
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used
    peak, result = peak_while(lambda: load_bundle(path))
    assert isinstance(result, BundleError) and "the largest accepted is" in str(result)
    assert peak < 1 << 20


# --- every preprocessing setting over its whole range ----------------------------------------

ENDS = [(name, end) for name, (lo, hi) in PreprocessSettings._RANGES.items() for end in (lo, hi)]


def with_settings(tmp_path, **changes):
    meta = copy.deepcopy(BASE.meta)
    meta["preprocess"].update(changes)
    return write_npz(tmp_path / "model.npz", meta)


@pytest.mark.parametrize("name, value", ENDS, ids=[f"{n}={v}" for n, v in ENDS])
def test_every_setting_at_either_end_of_its_range_loads_and_runs(tmp_path, name, value):
    """In range means safe: min_card = 0.0 passed every check, then raised IndexError at the first
    frame with no card (and `cardcam predict` on device/samples/b-none-1.png)."""
    path = with_settings(tmp_path, **{name: value})
    bundle, runtime = load_model(path, "numpy")  # in range: never refused
    runs_on_samples(bundle, runtime)


def setting_values():
    def one(lo, hi):
        if isinstance(lo, int) and isinstance(hi, int):
            return st.sampled_from([lo, hi]) | st.integers(lo, hi)
        return st.sampled_from([lo, hi]) | st.floats(lo, hi)
    return st.fixed_dictionaries({name: one(lo, hi) for name, (lo, hi) in PreprocessSettings._RANGES.items()})


@FUZZ
@given(values=setting_values())
def test_any_settings_in_range_load_and_run_or_are_refused_together(tmp_path, values):
    """All settings at once, anywhere in their ranges (ends favoured): a combination may be refused
    as a whole (say, max below min), but never crash on a frame."""
    refused_or_runs(with_settings(tmp_path, **values))


def test_settings_out_of_range_are_refused(tmp_path):
    for name, (lo, hi) in PreprocessSettings._RANGES.items():
        for value in (lo - 1, hi + 1, math.nan, True, [lo], str(lo)):
            path = with_settings(tmp_path, **{name: value})
            with pytest.raises(BundleError, match=f"'preprocess'.*{name}"):
                load_bundle(path)


def test_a_model_that_preprocessing_cannot_feed_is_a_valid_bundle_the_daemon_refuses(tmp_path):
    """Two input channels: the runtimes take it, but preprocessing gives one grey channel; the
    daemon's run on the sample frames refuses it before it replaces a working model."""
    from device.bundle import save_bundle

    path = save_bundle(make_bundle(input_shape=(16, 16, 2)), tmp_path / "two.npz")
    assert load_bundle(path).input_shape == (16, 16, 2)
    with pytest.raises(ModelRefused, match=r"fails on the sample frame a-0-1.png \(ValueError: input shape"):
        load_model(path, "numpy")
