"""Does device.preprocess still give exactly what the shipped models were trained on?

    PYTHONPATH=. .venv/bin/python tools/check_preprocess_equivalence.py [--camera 200] [--seed 5]

Every shipped model (models/*.npz) was trained on the outputs of preprocessing as it was before
the speed work (frozen in tools/preprocess_reference.py). This runs the same pictures through both
and compares the Prepared results: reason and box identical, ink_fraction identical, input within
``--tolerance`` (default 1e-5; the report says how many were bit-identical).

Pictures, each under the settings and input shape of every shipped bundle of its task:
- device/samples/*.png, read as the CLI reads files (float grey) and as replay reads them (uint8);
- simulated camera frames (training.augment.camera_frame, fixed seeds) of cards from the
  digits01, digits and smiley tasks, plus the same frames with light ink on dark ("ink": "light");
- clean and jittered training cards (what the trainer also feeds through preprocessing).
Exit status 1 if anything differs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

import preprocess_reference as reference  # noqa: E402
from device import preprocess as current  # noqa: E402
from device.bundle import load_bundle  # noqa: E402
from device.camera import SAMPLES_DIR  # noqa: E402


def shipped_settings() -> dict:
    """task -> [(bundle name, settings, input shape)], from the shipped bundles."""
    by_task: dict = {}
    for path in sorted((REPO / "models").glob("*.npz")):
        b = load_bundle(path)
        task = str(b.meta.get("task", "")).split(":")[0]
        by_task.setdefault(task, []).append((b.name, b.preprocess, tuple(b.input_shape)))
    return by_task


def task_cards(task: str, count: int, seed: int) -> list:
    """``count`` training cards of a task, spread over its labels (fixed choice)."""
    if task == "smiley":
        from training.smileys import make_smileys

        cards = make_smileys(max(1, count // 2), seed=seed).cards
    else:
        from training.data import load_task

        cards = load_task(task, REPO / "data" / "mnist-8k.npz")[0].cards  # the checkout's, also for an installed cardcam
    pick = np.random.default_rng([seed, len(task)]).choice(len(cards), size=min(count, len(cards)), replace=False)
    return [cards[i] for i in pick]


def pictures(camera: int, clean: int, seed: int, tasks=("digits01", "digits", "smiley")):
    """(name, task or None for every task, picture, light_ink) for every case to compare."""
    from training import augment

    for f in sorted(SAMPLES_DIR.glob("*.png")):
        yield f"samples/{f.name} float", None, current.load_image(f), False
        yield f"samples/{f.name} uint8", None, current.load_frame(f), False
    for t, task in enumerate(tasks):
        cards = task_cards(task, max(camera, clean), seed)
        for i in range(camera):
            rng = np.random.default_rng([seed, t, i])
            frame = augment.camera_frame(cards[i % len(cards)], rng)
            yield f"{task} camera {i}", task, frame, False
            if i % 4 == 0:  # light ink on dark paper: the inverted frame with ink="light"
                yield f"{task} camera {i} inverted", task, 255 - frame, True
        for i in range(clean):
            card = cards[i % len(cards)]
            yield f"{task} card {i}", task, card, False
            if i % 2 == 0:
                yield f"{task} jittered card {i}", task, augment.jitter_glyph(card, np.random.default_rng([seed, t, i, 1])), False


def same(a, b, tolerance: float) -> tuple[bool, float, bool]:
    """(equal within tolerance, max abs input difference, bit-identical)."""
    if (a.reason, a.box, a.ink_fraction) != (b.reason, b.box, b.ink_fraction):
        return False, float("inf"), False
    if a.input is None or b.input is None:
        return a.input is None and b.input is None, 0.0, a.input is None and b.input is None
    if a.input.shape != b.input.shape or a.input.dtype != b.input.dtype:
        return False, float("inf"), False
    diff = float(np.abs(a.input.astype(np.float64) - b.input).max())
    return diff <= tolerance, diff, bool(np.array_equal(a.input, b.input))


def check(camera: int = 200, clean: int = 50, seed: int = 5, tolerance: float = 1e-5, out=print) -> dict:
    by_task = shipped_settings()
    every = [entry for entries in by_task.values() for entry in entries]
    stats = {"pictures": 0, "comparisons": 0, "identical": 0, "found": 0, "max_diff": 0.0, "failures": [],
             "reference_s": 0.0, "current_s": 0.0}
    for name, task, picture, light in pictures(camera, clean, seed):
        stats["pictures"] += 1
        for model, settings, shape in (every if task is None else by_task.get(task, [])):
            if light:
                settings = current.PreprocessSettings.from_dict(dict(settings.to_dict(), ink="light"))
            ref_settings = reference.PreprocessSettings.from_dict(settings.to_dict())
            t0 = time.perf_counter()
            want = reference.preprocess(picture, ref_settings, shape)
            t1 = time.perf_counter()
            got = current.preprocess(picture, settings, shape)
            t2 = time.perf_counter()
            stats["reference_s"] += t1 - t0
            stats["current_s"] += t2 - t1
            ok, diff, identical = same(got, want, tolerance)
            stats["comparisons"] += 1
            stats["identical"] += identical
            stats["found"] += want.found
            if np.isfinite(diff):
                stats["max_diff"] = max(stats["max_diff"], diff)
            if not ok:
                stats["failures"].append(name)
                out(f"DIFFERS: {name} with {model}'s settings: reference {want.reason or 'found'} {want.box} "
                    f"ink {want.ink_fraction!r}; current {got.reason or 'found'} {got.box} ink {got.ink_fraction!r}; "
                    f"input max diff {diff:g}")
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--camera", type=int, default=200, help="camera frames per task (default 200)")
    parser.add_argument("--clean", type=int, default=50, help="clean training cards per task (default 50)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args()
    s = check(args.camera, args.clean, args.seed, args.tolerance)
    print(f"{s['pictures']} pictures, {s['comparisons']} comparisons ({s['found']} with a glyph found): "
          f"{s['comparisons'] - len(s['failures'])} equal, {s['identical']} bit-identical, "
          f"max input difference {s['max_diff']:g}; preprocessing took {s['current_s']:.2f} s "
          f"against the reference's {s['reference_s']:.2f} s ({s['reference_s'] / max(s['current_s'], 1e-9):.1f}x)")
    sys.exit(1 if s["failures"] else 0)


if __name__ == "__main__":
    main()
