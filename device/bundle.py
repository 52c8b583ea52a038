"""The model bundle: one ``.npz`` file, the only model format on both sides.

Inside: ``meta`` (UTF-8 JSON as a uint8 array) and one float32 array per weight, named
``L<layer>.<name>`` (see device.nn). Optionally ``tflite``: the bytes of an int8 TFLite model.
Loading never unpickles and checks everything before anyone runs the model; saving is atomic,
so a reader (the daemon) never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from device import nn
from device.files import open_regular
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
# Limits that keep a hostile or broken file from costing more than a real model: the largest
# shipped model (digits) has 0.3 M parameters, 32x32 inputs and layers of at most 0.4 M numbers.
MAX_FILE_BYTES = 40 << 20    # the whole .npz: 16 MiB of weights, a float TFLite model as large, meta
MAX_META_BYTES = 1 << 20     # meta's JSON (a real one is 3-4 KB)
MAX_META_DEPTH = 16          # lists and objects nested in meta (a real one: 4)
MAX_PARAMETERS = 1 << 22     # numbers in the weights (16 MiB of float32)
MAX_LAYER_VALUES = 1 << 22   # numbers one layer makes from one input (a conv's patch matrix included)
MAX_INPUT_SIDE = 1024
MAX_CHANNELS = 64
MAX_LAYERS = 256
MAX_LAYER_NUMBER = 1 << 16   # filters, units, kernel, pool size
MAX_LABELS = 1000
MAX_TEXT = 1024              # characters in the name, the task and each label
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
_KIND_NAMES = {str: "string", int: "whole number", list: "list", dict: "JSON object"}


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

    @cached_property
    def preprocess(self) -> PreprocessSettings:  # read once: the frame loop asks for it every frame
        return PreprocessSettings.from_bundle(self.meta["preprocess"])


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
            # np.savez_compressed's layout, written here so that a failed write (a full disk)
            # closes the archive at once: NumPy 1.x leaves it to the garbage collector, which
            # then prints a traceback of its own.
            with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as archive:
                for name, a in arrays.items():
                    with archive.open(f"{name}.npy", "w", force_zip64=True) as entry:
                        np.lib.format.write_array(entry, a, allow_pickle=False)
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
    """Read and fully check a bundle. Any problem raises BundleError('<file>: <what>').

    Nothing is read before it is known to fit: the file must be a regular file (a FIFO would
    block, a device never ends) of at most MAX_FILE_BYTES; meta is read and checked first, then
    each array only once its declared type, shape and size are what meta's architecture needs.
    So refusing any file costs little more memory than the model it claims to be.
    """
    path = Path(path)
    where = str(path)
    try:
        f = open_regular(path, MAX_FILE_BYTES)
    except OSError as e:
        raise BundleError(f"{where}: cannot read: {e.strerror or e}") from None
    except ValueError as e:
        raise BundleError(f"{where}: {e}") from None
    with f:
        if f.read(2) != b"PK":  # np.load would read a lone .npy as an array, anything else as a pickle
            raise BundleError(f"{where}: not a .npz file (no zip header); not a cardcam model bundle")
        try:
            with zipfile.ZipFile(f) as archive:
                return _read_archive(archive, path)
        except BundleError:
            raise
        # Damaged data surfaces from zipfile and zlib as BadZipFile, zlib.error, EOFError,
        # NotImplementedError (a garbled compression method), RuntimeError (a garbled "encrypted"
        # flag), OverflowError (a garbled offset, on 32-bit Python: found on armv7l), ValueError...
        except Exception as e:
            raise BundleError(f"{where}: not a readable .npz file (truncated or corrupt: "
                              f"{_cut(str(e) or type(e).__name__)})") from None


def _read_archive(archive: zipfile.ZipFile, path: Path) -> Bundle:
    where = str(path)
    entries = {}
    for info in archive.infolist():
        name = info.filename.removesuffix(".npy")
        if name in entries:
            raise BundleError(f"{where}: entry {_show(info.filename)} appears twice")
        entries[name] = info
    if "meta" not in entries:
        raise BundleError(f"{where}: no 'meta' entry; not a cardcam model bundle")
    raw = _read_array(archive, entries.pop("meta"), "'meta'", where, limit=MAX_META_BYTES)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise BundleError(f"{where}: 'meta' must be UTF-8 JSON bytes")
    meta = parse_meta(raw.tobytes(), where)
    layers = validate_meta(meta, where)
    expected = nn.weight_names(layers)
    for name, info in entries.items():
        if name not in expected and name != TFLITE_ENTRY or not info.filename.endswith(".npy"):
            raise BundleError(f"{where}: unexpected array {_show(name)} that the architecture does not use")
    for name in expected:
        if name not in entries:
            raise BundleError(f"{where}: weight '{name}' is missing")
    tflite = None
    if TFLITE_ENTRY in entries:
        limit = 4 * nn.parameter_count(layers) + (1 << 20)  # a float32 TFLite model and its graph, at most
        tflite = _read_array(archive, entries.pop(TFLITE_ENTRY), f"'{TFLITE_ENTRY}'", where, limit=limit)
        if tflite.dtype != np.uint8 or tflite.ndim != 1:
            raise BundleError(f"{where}: '{TFLITE_ENTRY}' must be raw bytes (uint8)")
        tflite = tflite.tobytes()
    weights = {name: _read_array(archive, info, f"weight '{name}'", where, shape=expected[name])
               for name, info in entries.items()}
    check_weights(meta, weights, expected, where)
    check_tflite_entry(meta, tflite, where)
    weights = {name: a.astype(np.float32, copy=False) for name, a in weights.items()}  # native byte order
    return Bundle(meta, weights, tflite, path)


def _read_array(archive: zipfile.ZipFile, info: zipfile.ZipInfo, what: str, where: str, *, limit=None, shape=None):
    """One .npy entry, its header checked before its data is decompressed: a weight must be float32
    of ``shape``; anything else at most ``limit`` bytes. The declared size must match the header."""
    with archive.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                declared, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                declared, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f".npy format version {version}")
        except (ValueError, TypeError, SyntaxError, EOFError) as e:
            raise BundleError(f"{where}: {what} is not a readable .npy array ({_cut(str(e))})") from None
        if dtype.hasobject:
            raise BundleError(f"{where}: contains pickled objects, which are never loaded")
        if shape is not None:
            if dtype.kind != "f" or dtype.itemsize != 4:
                raise BundleError(f"{where}: {what} has dtype {dtype}, expected float32")
            if tuple(declared) != tuple(shape):
                raise BundleError(f"{where}: {what} has shape {list(declared)}, expected {list(shape)}")
        if any(d < 0 for d in declared):
            raise BundleError(f"{where}: {what} has a negative size in its header")
        size = math.prod(declared) * dtype.itemsize
        if limit is not None and size > limit:
            raise BundleError(f"{where}: {what} is {size} bytes; at most {limit} are expected")
        if info.file_size != f.tell() + size:
            raise BundleError(f"{where}: {what} declares {info.file_size} bytes, its header {f.tell() + size}")
        a = np.empty(declared[::-1] if fortran else declared, dtype)
        view = memoryview(a.reshape(-1).view(np.uint8)) if size else memoryview(b"")
        got = 0
        while got < size:
            n = f.readinto(view[got:])
            if not n:
                raise BundleError(f"{where}: {what} ends after {got} of {size} bytes (truncated)")
            got += n
        if f.read(1):  # also reaches the end, where zipfile checks the entry's CRC
            raise BundleError(f"{where}: {what} is longer than its header says")
    return a.T if fortran else a


def parse_meta(raw: bytes, where: str) -> dict:
    """Meta's JSON, no deeper than MAX_META_DEPTH."""
    try:
        meta = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise BundleError(f"{where}: 'meta' is nested too deeply (at most {MAX_META_DEPTH} levels)") from None
    except ValueError as e:  # UnicodeDecodeError, JSONDecodeError, an integer of too many digits
        raise BundleError(f"{where}: 'meta' is not valid JSON ({_cut(str(e))})") from None
    if _depth(meta) > MAX_META_DEPTH:
        raise BundleError(f"{where}: 'meta' is nested too deeply (at most {MAX_META_DEPTH} levels)")
    return meta


def _depth(value) -> int:
    """How deep lists and objects nest in a JSON value (a scalar is 0), without recursion."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth + 1)
            todo.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def _show(value, width: int = 80) -> str:
    """A value from the file for a one-line message: its repr, cut to ``width``."""
    return _cut(repr(value), width)


def _cut(text: str, width: int = 80) -> str:
    """A text for a one-line message: on one line, cut to ``width``."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def validate(meta, weights: dict, where: str) -> None:
    """Raise BundleError on the first thing wrong with meta or weights."""
    layers = validate_meta(meta, where)
    expected = nn.weight_names(layers)
    for name in expected:
        if name not in weights:
            raise BundleError(f"{where}: weight '{name}' is missing")
    unexpected = sorted(set(weights) - set(expected))
    if unexpected:
        raise BundleError(f"{where}: unexpected array '{unexpected[0]}' that the architecture does not use")
    for name, shape in expected.items():
        a = weights[name]
        if a.dtype.kind != "f" or a.dtype.itemsize != 4:
            raise BundleError(f"{where}: weight '{name}' has dtype {a.dtype}, expected float32")
        if tuple(a.shape) != tuple(shape):
            raise BundleError(f"{where}: weight '{name}' has shape {list(a.shape)}, expected {list(shape)}")
    check_weights(meta, weights, expected, where)


def check_weights(meta: dict, weights: dict, expected: dict, where: str) -> None:
    """Values and hash of weights whose names, types and shapes are already right."""
    for name in expected:
        a = weights[name]
        if not np.isfinite(a).all():
            raise BundleError(f"{where}: weight '{name}' contains NaN or infinite values")
        if name.endswith(".var") and (a < 0).any():
            raise BundleError(f"{where}: weight '{name}' has negative variances")
    if weights_sha256(weights) != meta["weights_sha256"]:
        raise BundleError(f"{where}: weights do not match their hash in meta (file altered or damaged)")


def validate_meta(meta, where: str) -> list:
    """Every field of meta, strictly typed and bounded (a bool is not a number, a list is not a
    name); returns the architecture's layers (device.nn.LayerShape) within the size limits."""
    if not isinstance(meta, dict):
        raise BundleError(f"{where}: 'meta' must be a JSON object")
    for key, kind in _REQUIRED_META.items():
        if key not in meta:
            raise BundleError(f"{where}: meta is missing '{key}'")
        if not isinstance(meta[key], kind) or (kind is int and isinstance(meta[key], bool)):
            raise BundleError(f"{where}: meta '{key}' must be a {_KIND_NAMES[kind]}, got {_show(meta[key])}")
    if meta["format"] != FORMAT:
        raise BundleError(f"{where}: meta 'format' is {_show(meta['format'])}, expected {FORMAT!r}")
    if meta["version"] != FORMAT_VERSION:
        raise BundleError(
            f"{where}: bundle format version {_show(meta['version'])} is not supported "
            f"(this cardcam reads version {FORMAT_VERSION}); retrain or upgrade cardcam")
    for key in ("name", "task"):
        _check_text(meta[key], f"meta '{key}'", where, empty=key == "task")
    labels = meta["labels"]
    if not 1 <= len(labels) <= MAX_LABELS:
        raise BundleError(f"{where}: meta 'labels' must list 1 to {MAX_LABELS} labels, got {len(labels)}")
    for label in labels:
        _check_text(label, "meta 'labels'", where)
    if len(set(labels)) != len(labels):
        raise BundleError(f"{where}: meta 'labels' must be distinct non-empty strings, got {_show(labels)}")
    if not re.fullmatch(r"[0-9a-f]{64}", meta["weights_sha256"]):
        raise BundleError(f"{where}: meta 'weights_sha256' must be 64 hex digits")
    shape = meta["input_shape"]
    # Any number of channels is a valid bundle (the runtimes take them); the daemon's check on the
    # sample frames refuses a model that preprocessing's one grey channel cannot feed.
    if len(shape) != 3 or not all(type(d) is int and 1 <= d <= MAX_INPUT_SIDE for d in shape[:2]) \
            or type(shape[2]) is not int or not 1 <= shape[2] <= MAX_CHANNELS:
        raise BundleError(f"{where}: meta 'input_shape' must be [height, width, channels] (whole numbers; sides 1 to "
                          f"{MAX_INPUT_SIDE}, 1 to {MAX_CHANNELS} channels), got {_show(shape)}")
    try:
        PreprocessSettings.from_bundle(meta["preprocess"])
    except (ValueError, TypeError) as e:
        raise BundleError(f"{where}: meta 'preprocess': {_cut(str(e), 200)}") from None
    layers = _check_architecture(meta["architecture"], shape, where)
    outputs = layers[-1].output_shape[0]
    if outputs != len(labels):
        raise BundleError(f"{where}: the network gives {outputs} scores but meta has {len(labels)} labels")
    if "tflite" in meta:
        record = meta["tflite"]
        if not isinstance(record, dict):
            raise BundleError(f"{where}: meta 'tflite' must be a JSON object")
        for key in ("input", "output"):
            if not isinstance(record.get(key), str) or record[key] not in TFLITE_IO_TYPES:
                raise BundleError(f"{where}: meta 'tflite' '{key}' must be one of {', '.join(TFLITE_IO_TYPES)}, "
                                  f"got {_show(record.get(key))}")
        if not isinstance(record.get("sha256"), str):
            raise BundleError(f"{where}: meta 'tflite' needs 'sha256', the hash of the TFLite entry")
    return layers


def _check_text(value, what: str, where: str, empty: bool = False) -> None:
    """A name that goes into log lines and systemd's STATUS=: a string, short, one line."""
    if not isinstance(value, str) or len(value) > MAX_TEXT or (not value and not empty) \
            or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise BundleError(f"{where}: {what} must be {'' if empty else 'non-empty '}strings of at most {MAX_TEXT} "
                          f"characters without control characters, got {_show(value)}")


def _check_architecture(architecture: list, input_shape: list, where: str) -> list:
    """device.nn checks what each layer means; here, first, that every spec is made of JSON
    scalars of sane size, and after, that the network fits in the appliance's memory."""
    if not 1 <= len(architecture) <= MAX_LAYERS:
        raise BundleError(f"{where}: meta 'architecture' must list 1 to {MAX_LAYERS} layers, got {len(architecture)}")
    for i, spec in enumerate(architecture):
        if not isinstance(spec, dict):
            raise BundleError(f"{where}: meta 'architecture': layer {i} must be a JSON object, got {_show(spec)}")
        if not isinstance(spec.get("type"), str):
            raise BundleError(f"{where}: meta 'architecture': layer {i}: 'type' must be a string, "
                              f"got {_show(spec.get('type'))}")
        for key, value in spec.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, str)) \
                    or (isinstance(value, str) and len(value) > 32) \
                    or (isinstance(value, int) and abs(value) > MAX_LAYER_NUMBER):
                raise BundleError(f"{where}: meta 'architecture': layer {i}: {_show(key)} must be a number "
                                  f"(at most {MAX_LAYER_NUMBER}) or a short string, got {_show(value)}")
    try:
        layers = nn.infer_shapes(architecture, input_shape)
    except nn.SpecError as e:
        raise BundleError(f"{where}: meta 'architecture': {_cut(str(e), 200)}") from None
    for layer in layers:
        kind = layer.spec["type"]
        values = math.prod(layer.output_shape)
        if kind == "conv2d":  # what the runtime's patch matrix holds for one input
            values = max(values, math.prod(layer.output_shape[:2]) * layer.spec["kernel"] ** 2 * layer.input_shape[2])
        if values > MAX_LAYER_VALUES:
            raise BundleError(f"{where}: meta 'architecture': layer {layer.index} ({kind}) works on {values} numbers "
                              f"per input; at most {MAX_LAYER_VALUES} fit this appliance")
    parameters = sum(math.prod(s) for layer in layers for s in layer.weights.values())
    if parameters > MAX_PARAMETERS:
        raise BundleError(f"{where}: meta 'architecture' has {parameters} parameters; at most {MAX_PARAMETERS} "
                          "fit this appliance")
    return layers


def check_tflite_entry(meta: dict, tflite: bytes | None, where: str) -> None:
    """The TFLite entry and its description in meta agree (an entry without one is allowed)."""
    record = meta.get("tflite")
    if record is None:
        return
    if tflite is None:
        raise BundleError(f"{where}: meta describes a TFLite model but there is no '{TFLITE_ENTRY}' entry")
    if sha256(tflite).hexdigest() != record["sha256"]:
        raise BundleError(f"{where}: the '{TFLITE_ENTRY}' entry does not match its hash in meta (altered or damaged)")
