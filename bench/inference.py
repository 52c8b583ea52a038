"""Per-image inference time of every shipped model and architecture, batch 1.

    python bench/inference.py [--json]

Columns: NumPy forward ms; TFLite columns (litert float / int8, tflite-runtime) appear once the
TFLite runtimes exist (see the Keras/TFLite issue); until then they print as "-", and the
ratio NumPy/litert-float is left empty rather than guessed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from _common import best_of, random_bundle

from device.bundle import load_bundle
from device.runtime import NumpyRuntime

ROOT = Path(__file__).resolve().parent.parent


def measure(bundle) -> dict:
    x = np.random.default_rng(0).random((1, *bundle.input_shape), dtype=np.float32)
    numpy_rt = NumpyRuntime(bundle)
    numpy_ms = best_of(lambda: numpy_rt.predict(x), repeats=7, number=50) * 1000
    return {"model": bundle.name, "numpy_ms": round(numpy_ms, 4), "litert_f32_ms": None,
            "litert_int8_ms": None, "tflite_runtime_ms": None, "numpy_over_litert": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per model per line")
    args = parser.parse_args()
    bundles = [load_bundle(p) for p in sorted((ROOT / "models").glob("*.npz"))]
    bundles += [random_bundle(a) for a in ("lenet5", "dwengo", "digitnet")]
    if not args.json:
        print(f"{'model':<18}{'numpy ms':>10}{'litert f32':>12}{'litert int8':>13}{'numpy/litert':>14}")
    for b in bundles:
        r = measure(b)
        if args.json:
            print(json.dumps(r))
        else:
            dash = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            print(f"{r['model']:<18}{r['numpy_ms']:>10.3f}{dash(r['litert_f32_ms']):>12}"
                  f"{dash(r['litert_int8_ms']):>13}{dash(r['numpy_over_litert']):>14}")


if __name__ == "__main__":
    main()
