"""Per-image inference time of every shipped model and architecture, batch 1.

    python bench/inference.py [--json] [--threads N]

Columns: NumPy forward ms (device.runtime.NumpyRuntime), litert float32 and int8 ms, tflite-runtime
int8 ms (where importable), and the ratio NumPy / litert float. The runtimes are timed in turn,
round after round (best kept), so load from other processes falls on all of them alike.
TFLite threads: 1 by default, as the daemon's default config ([model] threads = 1); here litert's
own default (no num_threads) timed the same as 1 thread, and 2 threads slower at batch 1. Every TFLite time goes through
device.runtime.TfliteRuntime.predict, so it includes quantising the input and dequantising the
output, as on the Pi. Float TFLite models are converted here (needs the keras extra); the int8
one is the bundle's own entry, or for random-weight bundles converted with random inputs.
Missing runtimes print as "-" (JSON null), never as a guess.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
from pathlib import Path

import numpy as np

from _common import best_of, random_bundle

from device.bundle import Bundle, load_bundle
from device.runtime import NumpyRuntime, TfliteRuntime, _package_version, in_turns
from training.options import count

ROOT = Path(__file__).resolve().parent.parent


def interpreter(module: str, label: str):
    try:
        found = importlib.import_module(module)
    except ImportError:
        return None
    return label, _package_version(label, found), found.Interpreter


def tflite_models(bundle) -> tuple[bytes | None, bytes | None]:
    """(float32, int8) flatbuffers for the bundle, or None where TensorFlow is needed and absent."""
    from training.keras_model import KerasMissing, keras

    try:
        keras()  # imports TensorFlow without its start-up lines on fd 2, which fell inside the table
    except KerasMissing:
        return None, bundle.tflite
    from training.export import convert, convert_float

    float_model = convert_float(bundle)
    int8_model = bundle.tflite
    if int8_model is None:
        rep = np.random.default_rng(1).random((32, *bundle.input_shape), dtype=np.float32)
        int8_model = convert(bundle, rep)
    return float_model, int8_model


def times_ms(runtimes: dict, x, rounds: int = 9, number: int = 50) -> dict:
    """Best ms per call of each runtime, timed in turn round after round, so that a burst of
    load from another process falls on all of them alike, not on whichever ran then."""
    for rt in runtimes.values():
        rt.predict(x)
    return in_turns(runtimes, rounds, lambda rt: best_of(lambda: rt.predict(x), repeats=1, number=number) * 1000)


def measure(bundle, threads: int) -> dict:
    x = np.random.default_rng(0).random((1, *bundle.input_shape), dtype=np.float32)
    float_model, int8_model = tflite_models(bundle)
    litert = interpreter("ai_edge_litert.interpreter", "ai_edge_litert")
    tflite_rt = interpreter("tflite_runtime.interpreter", "tflite_runtime")

    def tflite(found, model):
        if found is None or model is None:
            return None
        b = Bundle(bundle.meta, bundle.weights, model, bundle.path)
        with contextlib.redirect_stderr(open(os.devnull, "w")):
            return TfliteRuntime(b, threads, interpreter=found)

    runtimes = {"numpy_ms": NumpyRuntime(bundle), "litert_f32_ms": tflite(litert, float_model),
                "litert_int8_ms": tflite(litert, int8_model), "tflite_runtime_ms": tflite(tflite_rt, int8_model)}
    ms = times_ms({k: rt for k, rt in runtimes.items() if rt is not None}, x)
    r = {"model": bundle.name, **{k: (round(ms[k], 4) if k in ms else None) for k in runtimes}}
    f32 = r["litert_f32_ms"]
    return {**r, "numpy_over_litert": round(r["numpy_ms"] / f32, 2) if f32 else None, "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per model per line")
    parser.add_argument("--threads", type=count(1), default=1, help="TFLite interpreter threads (default 1)")
    args = parser.parse_args()
    bundles = [load_bundle(p) for p in sorted((ROOT / "models").glob("*.npz"))]
    bundles += [random_bundle(a) for a in ("lenet5", "dwengo", "digitnet")]
    if not args.json:
        print(f"{'model':<18}{'numpy ms':>10}{'litert f32':>12}{'litert int8':>13}{'tflite-rt':>11}"
              f"{'numpy/litert':>14}   (batch 1, {args.threads} TFLite thread(s))")
    for b in bundles:
        r = measure(b, args.threads)
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            dash = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            print(f"{r['model']:<18}{r['numpy_ms']:>10.3f}{dash(r['litert_f32_ms']):>12}"
                  f"{dash(r['litert_int8_ms']):>13}{dash(r['tflite_runtime_ms']):>11}"
                  f"{dash(r['numpy_over_litert']):>14}", flush=True)


if __name__ == "__main__":
    main()
