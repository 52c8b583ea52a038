"""NumPy trainer seconds per epoch, per architecture, on the same synthetic batch stream.

    python bench/train.py [--json] [--samples N] [--threads N]

Keras (training.keras_model.KerasLearner, the `--trainer keras` path) trains the same net on the
same inputs in the same run; without the keras extra its column prints as "-" (JSON null). Seconds
are for ``--samples`` inputs (default 2048) at batch 64, Adam, with the threads each library takes
by default on this machine (Keras: TensorFlow's thread pools, jit_compile="auto"; NumPy:
training.parallel's threads for the convolutions, BatchNorm, max-pool and dense layers,
``--threads`` or CARDCAM_TRAIN_THREADS, default one per core, each product on one BLAS thread;
the JSON says how many as ``numpy_threads``). Both get one warm-up pass first (allocation,
Keras' graph tracing), then ``--epochs`` timed epochs each (default 5: on a shared machine one
epoch in two or three ran 10-40 % slow), NumPy and Keras in turns, the best of each kept.
The CPU columns (process CPU seconds, all threads) tell how much of each wall time was work when
other processes share the cores.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import _common  # noqa: F401  (puts the repo on sys.path)

from device.runtime import in_turns
from training import parallel
from training.nets import ARCHS, Network
from training.optim import Adam
from training.options import count


def wall_and_cpu(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call of fn."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def numpy_epoch(arch_name: str, samples: int, batch: int = 64):
    """One NumPy trainer epoch over ``samples`` inputs, as a function (warmed up)."""
    arch = ARCHS[arch_name](10)
    rng = np.random.default_rng(0)
    net = Network(arch["layers"], arch["input_shape"], rng)
    opt = Adam(net)
    x = rng.random((samples, *arch["input_shape"]), dtype=np.float32)
    y = rng.integers(0, 10, samples)
    # One warm-up batch (allocation, BLAS thread start), then a timed epoch.
    net.loss_and_grads(x[:batch], y[:batch])

    def epoch():
        for i in range(0, samples, batch):
            net.loss_and_grads(x[i:i + batch], y[i:i + batch])
            opt.step()
    return epoch


def keras_epoch(arch_name: str, samples: int, batch: int = 64):
    """One Keras epoch of the same net on the same inputs, as a function (traced), or None
    without the keras extra."""
    from training.keras_model import KerasLearner, KerasMissing

    arch = ARCHS[arch_name](10)
    try:
        learner = KerasLearner(arch["layers"], arch["input_shape"], "adam", 1e-3, 0)
    except KerasMissing:
        return None
    rng = np.random.default_rng(0)
    x = (rng.random((samples, *arch["input_shape"])) * 255).astype(np.uint8)  # the trainer keeps uint8 inputs
    y = rng.integers(0, 10, samples)
    order = np.arange(samples)
    learner.fit_epoch(x[:batch * 2], y[:batch * 2], order[:batch * 2], 1e-3, batch)  # warm-up: tracing
    return lambda: learner.fit_epoch(x, y, order, 1e-3, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--samples", type=count(1), default=2048)
    parser.add_argument("--epochs", type=count(1), default=5, help="timed epochs per trainer, best kept (default 5)")
    parser.add_argument("--threads", type=count(1), default=None,
                        help="NumPy trainer threads (default: CARDCAM_TRAIN_THREADS, else one per core)")
    args = parser.parse_args()
    if args.threads is not None:
        parallel.set_threads(args.threads)
    if not args.json:
        print(f"{'arch':<10}{'numpy s/epoch':>15}{'keras s/epoch':>15}{'numpy/keras':>13}{'numpy cpu s':>13}"
              f"{'keras cpu s':>13}   ({args.samples} inputs, best of {args.epochs} epochs, "
              f"numpy on {parallel.threads()} thread{'s' if parallel.threads() > 1 else ''})")
    for name in ("lenet5", "dwengo", "digitnet"):
        trainers = {"numpy": numpy_epoch(name, args.samples), "keras": keras_epoch(name, args.samples)}
        # Epochs in turns, NumPy then Keras, best (wall, CPU) of each kept.
        times = in_turns({k: fn for k, fn in trainers.items() if fn}, args.epochs, wall_and_cpu)
        (s, s_cpu), (k, k_cpu) = times["numpy"], times.get("keras", (None, None))
        r = {"arch": name, "samples": args.samples, "numpy_s_per_epoch": round(s, 3),
             "keras_s_per_epoch": round(k, 3) if k is not None else None,
             "numpy_over_keras": round(s / k, 2) if k else None,
             "numpy_cpu_s_per_epoch": round(s_cpu, 3),
             "keras_cpu_s_per_epoch": round(k_cpu, 3) if k_cpu is not None else None,
             "numpy_threads": parallel.threads()}
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            dash = lambda v, f: "-" if v is None else f"{v:{f}}"  # noqa: E731
            print(f"{name:<10}{s:>15.2f}{dash(r['keras_s_per_epoch'], '.2f'):>15}"
                  f"{dash(r['numpy_over_keras'], '.2f'):>13}{s_cpu:>13.2f}"
                  f"{dash(r['keras_cpu_s_per_epoch'], '.2f'):>13}", flush=True)


if __name__ == "__main__":
    main()
