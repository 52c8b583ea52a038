"""The model bundle: a round trip keeps everything, saving is atomic, and every kind of bad
file is refused with a BundleError that names the file and the problem."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from device.bundle import BundleError, load_bundle, save_bundle, weights_sha256


def write_npz(path, meta, weights, **extra):
    """An .npz written by hand (np.savez), bypassing save_bundle's checks."""
    raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    arrays = {"meta": np.frombuffer(raw, np.uint8), **weights, **extra}
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


@pytest.fixture
def bundle(bundle_factory):
    return bundle_factory()


@pytest.fixture
def saved(bundle, tmp_path):
    return save_bundle(bundle, tmp_path / "model.npz")


def refused(path, problem):
    """pytest.raises for a BundleError whose one-line message starts with the file's name."""
    return pytest.raises(BundleError, match=r"^" + re.escape(str(path)) + r": .*" + problem)


def assert_one_line(excinfo):
    assert "\n" not in str(excinfo.value)


# --- round trip and atomic saving ------------------------------------------------------------

def test_round_trip_keeps_meta_and_weights(bundle, tmp_path):
    bundle.tflite = b"\x00TFL3 not really a model \xff"
    path = save_bundle(bundle, tmp_path / "sub" / "model.npz")
    loaded = load_bundle(path)
    assert loaded.meta == bundle.meta
    assert set(loaded.weights) == set(bundle.weights)
    for name, a in bundle.weights.items():
        assert loaded.weights[name].dtype == np.float32
        np.testing.assert_array_equal(loaded.weights[name], a)
    assert loaded.tflite == bundle.tflite
    assert loaded.path == path and bundle.path == path
    assert loaded.labels == ["a", "b"] and loaded.input_shape == (8, 8, 1) and loaded.name == "tiny"
    assert loaded.preprocess == bundle.preprocess
    assert loaded.meta["weights_sha256"] == weights_sha256(bundle.weights)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.npz"]  # no temporary file left


def test_saving_refreshes_the_hash(bundle, tmp_path):
    bundle.weights["L0.bias"] = bundle.weights["L0.bias"] + 1.0  # trained further after make_meta
    path = save_bundle(bundle, tmp_path / "model.npz")
    np.testing.assert_array_equal(load_bundle(path).weights["L0.bias"], bundle.weights["L0.bias"])


def test_saving_an_invalid_bundle_leaves_the_good_file_untouched(bundle, saved):
    good = saved.read_bytes()
    bundle.weights["L0.kernel"] = np.full_like(bundle.weights["L0.kernel"], np.nan)
    with refused(saved, "'L0.kernel' contains NaN"):
        save_bundle(bundle, saved)
    assert saved.read_bytes() == good
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.npz"]
    bundle.weights["L0.kernel"] = np.zeros_like(bundle.weights["L0.kernel"])
    bundle.meta["labels"] = ["a", "b", "c"]
    with refused(saved, "3 labels"):
        save_bundle(bundle, saved)
    assert saved.read_bytes() == good


def test_a_failed_write_is_one_line_and_leaves_no_temporary_file(bundle, tmp_path):
    target = tmp_path / "model.npz"
    target.mkdir()  # renaming a file onto a directory fails after the data is written
    (target / "keep").write_text("x")
    with refused(target, "cannot write the bundle: Is a directory$"):
        save_bundle(bundle, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]
    assert (target / "keep").read_text() == "x"
    (tmp_path / "a-file").write_text("x")
    target = tmp_path / "a-file" / "sub" / "model.npz"
    with refused(target, "cannot write the bundle: Not a directory$"):
        save_bundle(bundle, target)


# --- refusals --------------------------------------------------------------------------------

def test_corrupted_bytes(saved):
    data = bytearray(saved.read_bytes())
    start = len(data) // 3
    data[start:start + 16] = bytes(b ^ 0xFF for b in data[start:start + 16])
    saved.write_bytes(bytes(data))
    with refused(saved, "corrupt|damaged|altered|not a") as e:
        load_bundle(saved)
    assert_one_line(e)


def test_an_entry_offset_past_any_file_is_refused(saved):
    """A central-directory entry whose local-header offset gained its top bit (>= 2**31): 32-bit
    Python cannot even seek there (OverflowError, seen on armv7l), 64-bit finds nothing there."""
    data = bytearray(saved.read_bytes())
    entry = data.index(b"PK\x01\x02")  # the first central-directory entry
    data[entry + 45] |= 0x80  # high byte of its 4-byte "relative offset of local header"
    saved.write_bytes(bytes(data))
    with refused(saved, "corrupt|not a") as e:
        load_bundle(saved)
    assert_one_line(e)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_corrupted_byte_is_refused_or_harmless(saved, bundle, data):
    """Whatever byte is damaged: a BundleError, never another exception; if it loads, it is intact."""
    raw = bytearray(saved.read_bytes())
    i = data.draw(st.integers(0, len(raw) - 1), label="offset")
    raw[i] ^= data.draw(st.integers(1, 255), label="xor")
    damaged = saved.with_name("damaged.npz")
    damaged.write_bytes(bytes(raw))
    try:
        loaded = load_bundle(damaged)
    except BundleError as e:
        assert str(e).startswith(f"{damaged}: ") and "\n" not in str(e)
    else:
        for name, a in bundle.weights.items():
            np.testing.assert_array_equal(loaded.weights[name], a)


def test_truncated_file(saved):
    saved.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    with refused(saved, "truncated or corrupt"):
        load_bundle(saved)


def test_not_a_zip(tmp_path):
    path = tmp_path / "model.npz"
    path.write_text("this is a text file, not a model\n")
    with refused(path, "not a"):
        load_bundle(path)


def test_a_lone_npy_array(tmp_path):
    path = tmp_path / "model.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros(3, np.float32))
    with refused(path, "not a .npz file"):
        load_bundle(path)


def test_empty_file(tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(b"")
    with refused(path, "not a"):
        load_bundle(path)


def test_missing_meta(bundle, tmp_path):
    path = tmp_path / "model.npz"
    np.savez(path, **bundle.weights)
    with refused(path, "no 'meta' entry"):
        load_bundle(path)


@pytest.mark.parametrize("meta, message", [
    (b"{not json", "'meta' is not valid JSON"),
    (b"\xff\xfe{}", "'meta' is not valid JSON"),  # not UTF-8
    (b"[1, 2]", "'meta' must be a JSON object"),
])
def test_meta_that_is_not_a_json_object(bundle, tmp_path, meta, message):
    path = write_npz(tmp_path / "model.npz", meta, bundle.weights)
    with refused(path, message):
        load_bundle(path)


def test_wrong_format_version(bundle, tmp_path):
    meta = {**bundle.meta, "version": 2}
    path = write_npz(tmp_path / "model.npz", meta, bundle.weights)
    with refused(path, "format version 2 is not supported"):
        load_bundle(path)


def test_missing_meta_key(bundle, tmp_path):
    meta = {k: v for k, v in bundle.meta.items() if k != "labels"}
    path = write_npz(tmp_path / "model.npz", meta, bundle.weights)
    with refused(path, "missing 'labels'"):
        load_bundle(path)


def test_bad_preprocess_settings(bundle, tmp_path):
    meta = {**bundle.meta, "preprocess": {**bundle.meta["preprocess"], "fit": 7.0}}
    path = write_npz(tmp_path / "model.npz", meta, bundle.weights)
    with refused(path, "'preprocess': 'fit'"):
        load_bundle(path)


def test_unknown_layer_type(bundle, tmp_path):
    meta = {**bundle.meta, "architecture": [{"type": "lstm"}, *bundle.meta["architecture"]]}
    path = write_npz(tmp_path / "model.npz", meta, bundle.weights)
    with refused(path, "'architecture': layer 0: unknown layer type 'lstm'"):
        load_bundle(path)


def test_wrong_shape_weight(bundle, tmp_path):
    weights = {**bundle.weights, "L5.kernel": np.zeros((10, 2), np.float32)}
    meta = {**bundle.meta, "weights_sha256": weights_sha256(weights)}
    path = write_npz(tmp_path / "model.npz", meta, weights)
    with refused(path, r"weight 'L5.kernel' has shape \[10, 2\], expected \[32, 2\]"):
        load_bundle(path)


def test_wrong_dtype_weight(bundle, tmp_path):
    weights = {**bundle.weights, "L0.kernel": bundle.weights["L0.kernel"].astype(np.float64)}
    path = write_npz(tmp_path / "model.npz", bundle.meta, weights)
    with refused(path, "weight 'L0.kernel' has dtype float64, expected float32"):
        load_bundle(path)


def test_nan_weight(bundle, tmp_path):
    bias = bundle.weights["L5.bias"].copy()
    bias[1] = np.nan
    weights = {**bundle.weights, "L5.bias": bias}
    meta = {**bundle.meta, "weights_sha256": weights_sha256(weights)}
    path = write_npz(tmp_path / "model.npz", meta, weights)
    with refused(path, "weight 'L5.bias' contains NaN"):
        load_bundle(path)


def test_negative_variance(bundle, tmp_path):
    weights = {**bundle.weights, "L1.var": -bundle.weights["L1.var"]}
    meta = {**bundle.meta, "weights_sha256": weights_sha256(weights)}
    path = write_npz(tmp_path / "model.npz", meta, weights)
    with refused(path, "'L1.var' has negative variances"):
        load_bundle(path)


def test_missing_weight(bundle, tmp_path):
    weights = {k: v for k, v in bundle.weights.items() if k != "L1.gamma"}
    path = write_npz(tmp_path / "model.npz", bundle.meta, weights)
    with refused(path, "weight 'L1.gamma' is missing"):
        load_bundle(path)


def test_extra_unexpected_array(bundle, tmp_path):
    path = write_npz(tmp_path / "model.npz", bundle.meta, bundle.weights, **{"L2.kernel": np.ones(3, np.float32)})
    with refused(path, "unexpected array 'L2.kernel'"):
        load_bundle(path)


def test_label_count_does_not_match_outputs(bundle, tmp_path):
    meta = {**bundle.meta, "labels": ["a", "b", "c"]}
    path = write_npz(tmp_path / "model.npz", meta, bundle.weights)
    with refused(path, "the network gives 2 scores but meta has 3 labels"):
        load_bundle(path)


def test_duplicate_labels(bundle, tmp_path):
    meta = {**bundle.meta, "labels": ["a", "a"]}
    path = write_npz(tmp_path / "model.npz", meta, bundle.weights)
    with refused(path, "'labels' must be distinct"):
        load_bundle(path)


def test_hash_mismatch(bundle, tmp_path):
    weights = {**bundle.weights, "L5.bias": bundle.weights["L5.bias"] + np.float32(0.5)}
    path = write_npz(tmp_path / "model.npz", bundle.meta, weights)  # meta keeps the old hash
    with refused(path, "weights do not match their hash"):
        load_bundle(path)


def test_pickled_object_array(bundle, tmp_path):
    path = tmp_path / "model.npz"
    evil = np.empty(1, dtype=object)
    evil[0] = {"would": "run code on load"}
    raw = np.frombuffer(json.dumps(bundle.meta).encode(), np.uint8)
    np.savez(path, meta=raw, **{**bundle.weights, "L0.kernel": evil})  # object arrays are written pickled
    with refused(path, "pickled objects"):
        load_bundle(path)
    np.savez(path, meta=raw, evil=evil, **bundle.weights)  # an extra entry: refused by its name, never read
    with refused(path, "unexpected array 'evil'"):
        load_bundle(path)


def test_nonexistent_file(tmp_path):
    path = tmp_path / "nowhere.npz"
    with refused(path, "cannot read"):
        load_bundle(path)


def test_a_directory(tmp_path):
    with refused(tmp_path, "cannot read"):
        load_bundle(tmp_path)


def test_device_modules_do_not_import_training(repo):
    """The Pi has no trainer: every module of device/, each imported in turn in a fresh interpreter,
    leaves no training module behind (a name that one pulls in is blamed on it)."""
    modules = sorted("device" if p.stem == "__init__" else f"device.{p.stem}"
                     for p in (repo / "device").glob("*.py") if p.stem != "__main__")  # __main__ runs the CLI
    assert len(modules) >= 15 and "device.daemon" in modules and "device.webserver" in modules
    code = ("import importlib, sys\n"
            "for name in sys.argv[1:]:\n"
            "    importlib.import_module(name)\n"
            "    bad = sorted(m for m in sys.modules if m == 'training' or m.startswith('training.'))\n"
            "    if bad:\n"
            "        sys.exit(f'{name} imports {bad}')\n"
            "print(len(sys.argv) - 1, 'imported')\n")
    result = subprocess.run([sys.executable, "-c", code, *modules], cwd=repo, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [str(len(modules)), "imported"]
