"""Shared helpers for the benchmarks: timing and random-weight bundles for an architecture."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from device.bundle import Bundle, make_meta  # noqa: E402
from device.preprocess import PreprocessSettings  # noqa: E402


def best_of(fn, repeats: int = 5, number: int = 1) -> float:
    """Best wall time of ``repeats`` runs of ``number`` calls, in seconds per call."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t) / number)
    return best


def model_file(text: str) -> Path:
    """An argparse type: a model bundle that exists (checked before any work)."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such model")
    return Path(text)


def random_bundle(arch_name: str, classes: int = 10, seed: int = 0) -> Bundle:
    """An untrained bundle of an architecture, for timing only."""
    from training.nets import ARCHS, Network

    arch = ARCHS[arch_name](classes)
    net = Network(arch["layers"], arch["input_shape"], np.random.default_rng(seed))
    weights = net.weights()
    meta = make_meta(name=f"random-{arch_name}", task="bench", labels=[str(i) for i in range(classes)],
                     input_shape=arch["input_shape"], preprocess=PreprocessSettings(),
                     architecture=arch["layers"], provenance={"note": "random weights for benchmarks"},
                     weights=weights)
    return Bundle(meta, weights)


def simulation_config(model: Path, state: Path, status_interval: float, /, **sections: dict) -> str:
    """The TOML of `cardcam run --simulate` on the bundled sample frames at full speed, writing
    its state file to ``state``; keyword arguments add keys per section (model={"watch": False})."""
    config = {"camera": {"source": "samples", "fps": 0}, "model": {"path": str(model)},
              "daemon": {"state_file": str(state), "status_interval": status_interval}}
    for section, keys in sections.items():
        config.setdefault(section, {}).update(keys)
    value = lambda v: str(v).lower() if isinstance(v, bool) else json.dumps(v)  # noqa: E731  (TOML's forms)
    return "".join(f"[{section}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in keys.items())
                   for section, keys in config.items())
