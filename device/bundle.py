"""The model bundle: one ``.npz`` file, the only model format on both sides.

Inside: ``meta`` (UTF-8 JSON as a uint8 array) and one float32 array per weight, named
``L<layer>.<name>`` (see device.nn). Optionally ``tflite``: the bytes of an int8 TFLite model.
Loading never unpickles and checks everything before anyone runs the model; saving is atomic,
so a reader (the daemon) never sees half a file.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from device import nn
from device.preprocess import PreprocessSettings

try:  # CPython's built-in SHA-256: hashlib's loads OpenSSL's libcrypto, ~4 MB resident on the Pi
    from _sha256 import sha256  # Python <= 3.11
except ImportError:
    try:
        from _sha2 import sha256  # Python >= 3.12
    except ImportError:
        from hashlib import sha256

FORMAT = "cardcam-bundle"
FORMAT_VERSION = 1
TFLITE_ENTRY = "tflite"
TFLITE_IO_TYPES = ("int8", "uint8", "float32")  # meta["tflite"]["input"/"output"]: what the TFLite model takes/gives
_REQUIRED_META = {
    "format": str,
    "version": int,
    "name": str,
    "task": str,
    "labels": list,
    "input_shape": list,
    "preprocess": dict,
    "architecture": list,
    "provenance": dict,
    "weights_sha256": str,
}


class BundleError(ValueError):
    """A model file that cannot be used; the message names the file and the first problem."""


@dataclass
class Bundle:
    meta: dict
    weights: dict  # name -> float32 array
    tflite: bytes | None = None
    path: Path | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def labels(self) -> list[str]:
        return self.meta["labels"]

    @property
    def input_shape(self) -> tuple:
        return tuple(self.meta["input_shape"])

    @property
    def architecture(self) -> list:
        return self.meta["architecture"]

    @property
    def preprocess(self) -> PreprocessSettings:
        return PreprocessSettings.from_dict(self.meta["preprocess"])


def weights_sha256(weights: dict) -> str:
    """Hash of names, shapes and little-endian float32 bytes, independent of file layout."""
    h = sha256()
    for name in sorted(weights):
        a = np.ascontiguousarray(weights[name], dtype="<f4")
        h.update(f"{name}:{list(a.shape)};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def make_meta(*, name, task, labels, input_shape, preprocess, architecture, provenance, weights) -> dict:
    """Meta for a new bundle, with the weights' hash filled in."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "name": name,
        "task": task,
        "labels": [str(l) for l in labels],
        "input_shape": [int(d) for d in input_shape],
        "preprocess": preprocess.to_dict() if isinstance(preprocess, PreprocessSettings) else dict(preprocess),
        "architecture": architecture,
        "provenance": provenance,
        "weights_sha256": weights_sha256(weights),
    }


def save_bundle(bundle: Bundle, path) -> Path:
    """Validate, then write to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    bundle.meta["weights_sha256"] = weights_sha256(bundle.weights)
    validate(bundle.meta, bundle.weights, str(path))
    check_tflite_entry(bundle.meta, bundle.tflite, str(path))
    arrays = {name: np.ascontiguousarray(a, dtype="<f4") for name, a in bundle.weights.items()}
    arrays["meta"] = np.frombuffer(json.dumps(bundle.meta, indent=1).encode("utf-8"), dtype=np.uint8)
    if bundle.tflite is not None:
        arrays[TFLITE_ENTRY] = np.frombuffer(bundle.tflite, dtype=np.uint8)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # no such folder, disk full, ...: the file that was there stays as it was
            raise BundleError(f"{path}: cannot write the bundle: {e.strerror or e}") from None
        raise
    bundle.path = path
    return path


def load_bundle(path) -> Bundle:
    """Read and fully check a bundle. Any problem raises BundleError('<file>: <what>')."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BundleError(f"{path}: cannot read: {e.strerror or e}") from None
    return _bundle_from_bytes(data, path)


def _bundle_from_bytes(data: bytes, path: Path) -> Bundle:
    where = str(path)
    # np.load would read a lone .npy as an array, and anything else as a pickle it then refuses.
    if not data.startswith(b"PK"):
        raise BundleError(f"{where}: not a .npz file (no zip header); not a cardcam model bundle")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except ValueError as e:
        if "pickle" in str(e):
            raise BundleError(f"{where}: contains pickled objects, which are never loaded") from None
        raise BundleError(f"{where}: not a cardcam model bundle ({e})") from None
    # Damaged compressed data surfaces from zipfile as zlib.error, NotImplementedError (a garbled
    # compression method), RuntimeError (a garbled "encrypted" flag) or, on 32-bit Python,
    # OverflowError (a garbled entry offset too large to seek to: found on armv7l).
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, zlib.error, NotImplementedError, RuntimeError,
            OverflowError) as e:
        raise BundleError(f"{where}: not a readable .npz file (truncated or corrupt: {e})") from None
    if "meta" not in arrays:
        raise BundleError(f"{where}: no 'meta' entry; not a cardcam model bundle")
    raw = arrays.pop("meta")
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise BundleError(f"{where}: 'meta' must be UTF-8 JSON bytes")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{where}: 'meta' is not valid JSON ({e})") from None
    tflite = arrays.pop(TFLITE_ENTRY, None)
    if tflite is not None and (tflite.dtype != np.uint8 or tflite.ndim != 1):
        raise BundleError(f"{where}: '{TFLITE_ENTRY}' must be raw bytes (uint8)")
    validate(meta, arrays, where)
    tflite = tflite.tobytes() if tflite is not None else None
    check_tflite_entry(meta, tflite, where)
    weights = {name: a.astype(np.float32) for name, a in arrays.items()}  # native byte order
    return Bundle(meta, weights, tflite, path)


def validate(meta, weights: dict, where: str) -> None:
    """Raise BundleError on the first thing wrong with meta or weights."""
    if not isinstance(meta, dict):
        raise BundleError(f"{where}: 'meta' must be a JSON object")
    for key, kind in _REQUIRED_META.items():
        if key not in meta:
            raise BundleError(f"{where}: meta is missing '{key}'")
        if not isinstance(meta[key], kind) or (kind is int and isinstance(meta[key], bool)):
            raise BundleError(f"{where}: meta '{key}' must be a {kind.__name__}")
    if meta["format"] != FORMAT:
        raise BundleError(f"{where}: meta 'format' is {meta['format']!r}, expected {FORMAT!r}")
    if meta["version"] != FORMAT_VERSION:
        raise BundleError(
            f"{where}: bundle format version {meta['version']} is not supported "
            f"(this cardcam reads version {FORMAT_VERSION}); retrain or upgrade cardcam")
    labels = meta["labels"]
    if not labels or not all(isinstance(l, str) and l for l in labels) or len(set(labels)) != len(labels):
        raise BundleError(f"{where}: meta 'labels' must be distinct non-empty strings, got {labels!r}")
    try:
        PreprocessSettings.from_dict(meta["preprocess"])
    except ValueError as e:
        raise BundleError(f"{where}: meta 'preprocess': {e}") from None
    try:
        layers = nn.infer_shapes(meta["architecture"], meta["input_shape"])
    except nn.SpecError as e:
        raise BundleError(f"{where}: meta 'architecture': {e}") from None
    outputs = layers[-1].output_shape[0]
    if outputs != len(labels):
        raise BundleError(f"{where}: the network gives {outputs} scores but meta has {len(labels)} labels")
    expected = nn.weight_names(layers)
    for name, shape in expected.items():
        if name not in weights:
            raise BundleError(f"{where}: weight '{name}' is missing")
        a = weights[name]
        if a.dtype.kind != "f" or a.dtype.itemsize != 4:
            raise BundleError(f"{where}: weight '{name}' has dtype {a.dtype}, expected float32")
        if tuple(a.shape) != tuple(shape):
            raise BundleError(f"{where}: weight '{name}' has shape {list(a.shape)}, expected {list(shape)}")
        if not np.isfinite(a).all():
            raise BundleError(f"{where}: weight '{name}' contains NaN or infinite values")
        if name.endswith(".var") and (a < 0).any():
            raise BundleError(f"{where}: weight '{name}' has negative variances")
    unexpected = sorted(set(weights) - set(expected))
    if unexpected:
        raise BundleError(f"{where}: unexpected array '{unexpected[0]}' that the architecture does not use")
    digest = weights_sha256(weights)
    if digest != meta["weights_sha256"]:
        raise BundleError(f"{where}: weights do not match their hash in meta (file altered or damaged)")
    if "tflite" in meta:
        record = meta["tflite"]
        if not isinstance(record, dict):
            raise BundleError(f"{where}: meta 'tflite' must be a JSON object")
        for key in ("input", "output"):
            if record.get(key) not in TFLITE_IO_TYPES:
                raise BundleError(f"{where}: meta 'tflite' '{key}' must be one of {', '.join(TFLITE_IO_TYPES)}, "
                                  f"got {record.get(key)!r}")
        if not isinstance(record.get("sha256"), str):
            raise BundleError(f"{where}: meta 'tflite' needs 'sha256', the hash of the TFLite entry")


def check_tflite_entry(meta: dict, tflite: bytes | None, where: str) -> None:
    """The TFLite entry and its description in meta agree (an entry without one is allowed)."""
    record = meta.get("tflite")
    if record is None:
        return
    if tflite is None:
        raise BundleError(f"{where}: meta describes a TFLite model but there is no '{TFLITE_ENTRY}' entry")
    if sha256(tflite).hexdigest() != record["sha256"]:
        raise BundleError(f"{where}: the '{TFLITE_ENTRY}' entry does not match its hash in meta (altered or damaged)")
