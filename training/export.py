"""Full-integer int8 TFLite for any bundle (NumPy- or Keras-trained), embedded and standalone.

The bundle's specs and weights become a Keras model (training.keras_model), TensorFlow's converter
quantises it with representative inputs from the bundle's own training split (clean cards and
simulated camera frames, through the Pi's preprocessing), and the result is checked against the
float NumPy forward pass on the validation split before anything is written. The choice made
(int8 or float32 input/output) is recorded in meta["tflite"], with the file's hash.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from device.bundle import Bundle, BundleError, load_bundle, save_bundle
from device.runtime import NumpyRuntime, TfliteRuntime, tflite_interpreter
from training.data import CardSet, DataError, split
from training.tasks import load_task
from training.keras_model import keras, model_from_bundle
from training.trainer import as_float, make_inputs

IO_TYPES = ("int8", "float32")
REPRESENTATIVE_COUNT = 300
MIN_AGREEMENT = 0.95  # below this the int8 model is not the same model any more: refuse it


def task_cards(bundle: Bundle, data: str | None = None) -> tuple[CardSet, str]:
    """The cards the bundle was trained on (its meta task), or those of ``data``."""
    task = data or bundle.meta.get("task", "")
    try:
        cards, _ = load_task(task)
    except DataError as e:
        raise DataError(f"{bundle.path or bundle.name}: cannot get representative data for task {task!r} ({e}); "
                        "name the training data with --data TASK|folder:DIR") from None
    if cards.names != bundle.labels:
        raise DataError(f"{task}: labels {cards.names} are not the model's {bundle.labels}")
    return cards, task


def split_inputs(bundle: Bundle, cards: CardSet, which: str, count: int | None, seed: int = 0) -> np.ndarray:
    """Float inputs from one split ("train" or "val"): each chosen card once clean and once as a
    simulated camera frame, as the Pi would see them. ``count`` caps the number of cards."""
    train_idx, val_idx = split(cards)
    idx = train_idx if which == "train" else val_idx
    if count is not None and len(idx) > count:
        idx = np.sort(np.random.default_rng(seed).choice(idx, count, replace=False))
    jobs = [(int(i), "clean", 0) for i in idx] + [(int(i), "camera", 999) for i in idx]
    x, kept = make_inputs(cards.cards, jobs, bundle.preprocess, bundle.input_shape, seed, processes=1)
    labels = cards.labels[[jobs[k][0] for k in kept]]
    return as_float(x), labels


@contextlib.contextmanager
def _native_chatter_hidden():
    """TensorFlow's C++ converter writes progress lines straight to file descriptor 2; hide them
    (its failures still arrive as Python exceptions with their messages)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def convert(bundle: Bundle, representative: np.ndarray, io_type: str = "int8") -> bytes:
    """TFLite flatbuffer of the bundle: full-integer int8 ops, int8 or float32 at the edges."""
    if io_type not in IO_TYPES:
        raise ValueError(f"input/output type must be one of {', '.join(IO_TYPES)}, got {io_type!r}")
    if not len(representative):
        raise ValueError("no representative inputs: the training split gave no usable pictures")
    keras()  # KerasMissing with the install command if TensorFlow is absent
    import tensorflow as tf

    model = model_from_bundle(bundle)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([representative[i:i + 1]] for i in range(len(representative)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if io_type == "int8":
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    # The converter prints its SavedModel's signature, and warns that the (int8) input has no
    # statistics, which it then takes from the representative data as it should.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _native_chatter_hidden():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        return bytes(converter.convert())


def convert_float(bundle: Bundle) -> bytes:
    """Plain float32 TFLite of the bundle (for benchmarks: what int8 is compared with)."""
    keras()
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model_from_bundle(bundle))
    with contextlib.redirect_stdout(io.StringIO()), _native_chatter_hidden():
        return bytes(converter.convert())


def agreement(bundle: Bundle, tflite: bytes, x: np.ndarray, y: np.ndarray | None = None) -> dict:
    """Top-1 agreement of the TFLite model with the float NumPy forward pass (and accuracies)."""
    found = tflite_interpreter()
    if found is None:
        raise RuntimeError("no TFLite interpreter to check the converted model with (pip install ai-edge-litert)")
    candidate = Bundle(bundle.meta, bundle.weights, tflite, bundle.path)
    q = TfliteRuntime(candidate, 1).predict(x)
    f = NumpyRuntime(bundle).predict(x)
    result = {"images": int(len(x)), "top1_agreement": round(float((q.argmax(1) == f.argmax(1)).mean()), 5),
              "max_abs_diff": round(float(np.abs(q - f).max()), 5)}
    if y is not None:
        result["float_accuracy"] = round(float((f.argmax(1) == y).mean()), 5)
        result["int8_accuracy"] = round(float((q.argmax(1) == y).mean()), 5)
    return result


def add_tflite(bundle: Bundle, cards: CardSet, data_name: str, io_type: str = "int8",
               count: int = REPRESENTATIVE_COUNT, seed: int = 0) -> tuple[bytes, dict]:
    """Convert and check; returns the flatbuffer and the meta["tflite"] record (bundle unchanged)."""
    keras()  # first: it quietens TensorFlow's start-up logging, or says how to install it
    import tensorflow as tf

    rep, _ = split_inputs(bundle, cards, "train", (count + 1) // 2, seed)
    tflite = convert(bundle, rep, io_type)
    xv, yv = split_inputs(bundle, cards, "val", None, seed)
    check = agreement(bundle, tflite, xv, yv)
    if check["top1_agreement"] < MIN_AGREEMENT:
        raise ValueError(f"{bundle.path or bundle.name}: the int8 model agrees with the float one on only "
                         f"{check['top1_agreement']:.1%} of {check['images']} validation images; not saved")
    record = {
        "input": io_type, "output": io_type,
        "quantization": "full-integer int8 (per-channel weights, per-tensor activations)",
        "representative": f"{len(rep)} inputs from the training split of {data_name} (clean cards and "
                          f"simulated camera frames, seed {seed})",
        "validation": check,
        "converter": f"tensorflow {tf.__version__}",
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "sha256": hashlib.sha256(tflite).hexdigest(),
    }
    return tflite, record


def export(model, data: str | None = None, io_type: str = "int8", count: int = REPRESENTATIVE_COUNT,
           tflite_out=None, seed: int = 0) -> tuple[Bundle, Path, dict]:
    """`cardcam-train export`: add the TFLite entry to the bundle file (atomically; the weights
    and their hash stay as they are) and write the same model beside it as ``.tflite``."""
    bundle = load_bundle(model)
    cards, data_name = task_cards(bundle, data)
    tflite, record = add_tflite(bundle, cards, data_name, io_type, count, seed)
    bundle.tflite = tflite
    bundle.meta["tflite"] = record
    save_bundle(bundle, bundle.path)
    out = Path(tflite_out) if tflite_out else Path(bundle.path).with_suffix(".tflite")
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(tflite)
    tmp.replace(out)
    return bundle, out, record


__all__ = ["convert", "convert_float", "agreement", "add_tflite", "export", "split_inputs", "task_cards", "BundleError"]
