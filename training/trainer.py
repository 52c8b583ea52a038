"""The NumPy trainer: cards -> camera-simulated, preprocessed inputs -> a trained bundle."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

import device
from device.bundle import Bundle, make_meta, save_bundle
from device.preprocess import PreprocessSettings, preprocess
from training import augment, cache, progress
from training.layers import softmax_cross_entropy
from training.data import CardSet, DataError, split
from training.tasks import load_task
from training.nets import ARCHS, Network
from training.optim import OPTIMISERS

# --- inputs ----------------------------------------------------------------------------------
# Each input is made from (card, kind, variant) with its own seed, so the result does not depend
# on how many processes made it. Inputs are kept as uint8 (ink 0..255) to keep memory small.

_WORK: dict = {}


def _make_input(job):
    i, kind, variant = job
    card = _WORK["cards"][i]
    rng = np.random.default_rng([_WORK["seed"], i, variant])
    if kind == "jitter":
        picture = augment.jitter_glyph(card, rng)
    elif kind == "camera":
        picture = augment.camera_frame(card, rng)
    else:
        picture = card
    prepared = preprocess(picture, _WORK["settings"], _WORK["input_shape"])
    if not prepared.found:
        return None
    return prepared.input_bytes()


def make_inputs(cards: list, jobs: list, settings, input_shape, seed: int, processes=None):
    """Preprocessed inputs (N, H, W, 1) uint8 for jobs [(card index, kind, variant)], and the
    indices of the jobs that gave one (a picture with no ink found is left out). The answer is
    kept in training.cache: the same arguments and code give it back at once."""
    key = cache.inputs_key(cards, jobs, settings, input_shape, seed)
    stored = cache.load(key)
    if stored is not None:
        return stored["x"], stored["kept"]
    _WORK.update(cards=cards, settings=settings, input_shape=tuple(input_shape), seed=seed)
    results = _each_job(jobs, processes or os.cpu_count() or 1)
    kept = [k for k, r in enumerate(results) if r is not None]
    h, w = input_shape[0], input_shape[1]
    x = np.stack([results[k] for k in kept]) if kept else np.zeros((0, h, w), np.uint8)
    x, kept = x[..., None], np.array(kept, np.int64)
    cache.save(key, x=x, kept=kept)
    return x, kept


def _each_job(jobs: list, processes: int) -> list:
    """_make_input for every job, in order, on every core, with progress for long lists. The
    workers ignore Ctrl-C, which a terminal sends to them too: the parent alone stops (one line
    from the CLI), instead of a traceback from each worker."""
    bar = progress.bar(len(jobs), "preparing inputs", "picture", disable=len(jobs) < 500, leave=False)
    try:
        if processes > 1 and len(jobs) > 200:
            with get_context("fork").Pool(processes, initializer=signal.signal,
                                          initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
                results = []
                for result in pool.imap(_make_input, jobs, chunksize=16):
                    results.append(result)
                    bar.update()
        else:
            results = []
            for job in jobs:
                results.append(_make_input(job))
                bar.update()
    finally:
        bar.close()
    return results


def as_float(x_uint8: np.ndarray) -> np.ndarray:
    return x_uint8.astype(np.float32) / np.float32(255.0)


# --- training --------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    task: str = "digits"
    arch: str = "digitnet"
    epochs: int = 12
    seed: int = 0
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 2e-3
    jitter_variants: int = 3
    camera_variants: int = 2
    val_fraction: float = 0.15
    processes: int | None = None
    trainer: str = "numpy"  # or "keras" (optional extra): the same specs, data and schedule
    preprocess: dict | None = None  # PreprocessSettings fields that differ from the defaults


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == labels).mean()) if len(labels) else float("nan")


def predict_labels(runtime, x: np.ndarray, kept, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, confidences) for ``count`` pictures, of which those at ``kept`` had ink found and
    are the float inputs ``x``, run in batches of 256. Where no ink was found: label -1 (which
    counts as wrong) and confidence 0."""
    pred, confidence = np.full(count, -1), np.zeros(count, np.float32)
    if len(x):
        probs = np.concatenate([runtime.predict(x[i:i + 256]) for i in range(0, len(x), 256)])
        pred[kept], confidence[kept] = probs.argmax(axis=1), probs.max(axis=1)
    return pred, confidence


def confusion_matrix(y: np.ndarray, pred: np.ndarray, classes: int) -> np.ndarray:
    """Counts, rows: true class, columns: predicted class, and a last column for no ink found (-1)."""
    out = np.zeros((classes, classes + 1), np.int64)
    for t, p in zip(y, pred):
        out[t, p if p >= 0 else classes] += 1
    return out


def _loss(probs, labels) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def validation(p_val, y_val, p_cam, y_cam, val_cards: int) -> dict:
    """One epoch's validation figures, unrounded. A card whose ink was not found counts as
    wrong (the Pi would show nothing for it): accuracies are over all ``val_cards``."""
    return {"val_loss": _loss(p_val, y_val),
            "val_accuracy": accuracy(p_val, y_val) * len(y_val) / val_cards,
            "val_camera_accuracy": accuracy(p_cam, y_cam) * len(y_cam) / val_cards}


class NumpyLearner:
    """training.layers + training.optim, one epoch at a time (KerasLearner is its Keras twin)."""

    def __init__(self, architecture, input_shape, optimizer: str, lr: float, rng):
        self.net = Network(architecture, input_shape, rng)
        self.opt = OPTIMISERS[optimizer](self.net, lr=lr)

    def fit_epoch(self, x_uint8, y, order, lr: float, batch_size: int, desc: str | None = None):
        """One pass in the given order; returns (mean training loss, training accuracy)."""
        self.opt.lr = lr
        steps = -(-len(x_uint8) // batch_size)
        losses, correct = [], 0
        # On a terminal only: in a log, the epoch's own line says it all.
        bar = progress.bar(steps, desc, "batch", disable=desc is None, lines=False, leave=False)
        for step in range(steps):
            b = order[step * batch_size:(step + 1) * batch_size]
            xb, yb = as_float(x_uint8[b]), y[b]
            logits = self.net.logits(xb, training=True)
            loss, d = softmax_cross_entropy(logits, yb)
            self.net.backward(d, input_grad=False)
            self.opt.step()
            losses.append(loss)
            correct += int((logits.argmax(axis=1) == yb).sum())
            bar.update()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", acc=f"{correct / ((step + 1) * batch_size):.3f}")
        bar.close()
        return float(np.mean(losses)), correct / len(x_uint8)

    def predict(self, x):
        return self.net.predict(x)

    def weights(self) -> dict:
        return self.net.weights()


def train(cfg: TrainConfig, out, command: str, progress: bool = True, cards: CardSet | None = None,
          data_description: str | None = None) -> Bundle:
    """Train, keep the best epoch (validation accuracy), save the bundle and its epoch log."""
    out = Path(out)
    if cards is None:
        cards, data_description = load_task(cfg.task)
    if cfg.arch not in ARCHS:
        raise ValueError(f"unknown architecture {cfg.arch!r} (choose from {', '.join(ARCHS)})")
    arch = ARCHS[cfg.arch](len(cards.names))
    input_shape = tuple(arch["input_shape"])
    settings = PreprocessSettings.from_dict(cfg.preprocess or {})
    train_idx, val_idx = split(cards, cfg.val_fraction)

    t0 = time.perf_counter()
    x_train, y_train, x_val, y_val, x_cam, y_cam = prepare_inputs(cfg, cards, train_idx, val_idx, settings, input_shape)
    prep_s = time.perf_counter() - t0
    if progress:
        print(f"data: {len(x_train)} training inputs from {len(train_idx)} cards, {len(x_val)} validation "
              f"cards (+{len(x_cam)} camera frames) in {prep_s:.0f} s")

    rng = np.random.default_rng(cfg.seed)
    learner = make_learner(cfg, arch["layers"], input_shape, rng)
    log = epoch_log(out)
    best = None
    log_lines = []
    interrupted = None
    try:
        for epoch, lr, seconds, train_loss, train_accuracy, figures in run_epochs(
                cfg, learner, rng, x_train, y_train, x_val, y_val, x_cam, y_cam, len(val_idx), progress):
            record = {
                "epoch": epoch, "lr": round(float(lr), 6), "seconds": round(seconds, 2),
                "train_loss": round(train_loss, 5), "train_accuracy": round(train_accuracy, 5),
            } | {k: round(v, 5) for k, v in figures.items()}
            log_lines.append(record)
            score = epoch_score(record)
            if best is None or score > best[0]:
                best = (score, epoch, learner.weights(), record)
            if progress:
                print(f"epoch {epoch:>2}/{cfg.epochs}  loss {record['train_loss']:.4f}  train {record['train_accuracy']:.4f}  "
                      f"val {record['val_accuracy']:.4f}  camera {record['val_camera_accuracy']:.4f}  {seconds:.1f} s")
    except KeyboardInterrupt:  # Ctrl-C: the finished epochs are worth keeping
        if best is None:
            raise
        interrupted = (f"stopped (Ctrl-C) during epoch {len(log_lines) + 1} of {cfg.epochs}; the best of the "
                       f"{len(log_lines)} finished epoch{'s' * (len(log_lines) > 1)} is kept")
    _, best_epoch, weights, best_record = best
    provenance = {
        "trainer": cfg.trainer,
        "data": data_description,
        "command": command,
        "seed": cfg.seed,
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "cardcam_version": device.__version__,
        "config": cfg.__dict__,
        "epochs_run": len(log_lines),
        "best_epoch": best_epoch,
        "train_inputs": int(len(x_train)),
        "val_cards": int(len(val_idx)),
        "val_cards_without_ink_found": int(len(val_idx) - len(x_val)),
        "val_accuracy": best_record["val_accuracy"],
        "val_camera_accuracy": best_record["val_camera_accuracy"],
        "val_split": f"{cfg.val_fraction:.0%} of each class, fixed split seed",
    }
    if interrupted:
        provenance["interrupted"] = interrupted
    if cfg.trainer == "keras":
        import keras
        import tensorflow as tf

        provenance["framework"] = f"keras {keras.__version__}, tensorflow {tf.__version__}"
    meta = make_meta(name=out.stem, task=cfg.task, labels=cards.names, input_shape=input_shape,
                     preprocess=settings, architecture=arch["layers"], provenance=provenance, weights=weights)
    meta["arch"] = cfg.arch
    bundle = Bundle(meta, weights)
    save_bundle(bundle, out)
    with open(log, "w") as f:
        for line in log_lines:
            f.write(json.dumps(line) + "\n")
    return bundle


def epoch_log(model) -> Path:
    """Where `train` writes a model's epoch log: NAME.train.jsonl beside NAME.npz."""
    return Path(model).with_suffix(".train.jsonl")


def run_epochs(cfg: TrainConfig, learner, rng, x_train, y_train, x_val, y_val, x_cam, y_cam, val_cards: int,
               progress: bool = False):
    """Train ``cfg.epochs`` epochs, each in a new random order and at its learning rate; after
    each, yield (epoch, lr, seconds of training, training loss, training accuracy, validation
    figures). The one epoch loop of `cardcam-train train` and of the ablation runs."""
    x_val, x_cam = as_float(x_val), as_float(x_cam)
    for epoch in range(1, cfg.epochs + 1):
        lr = learning_rate(cfg, epoch)
        order = rng.permutation(len(x_train))
        t = time.perf_counter()
        loss, accuracy = learner.fit_epoch(x_train, y_train, order, lr, cfg.batch_size,
                                           f"epoch {epoch}/{cfg.epochs}" if progress else None)
        seconds = time.perf_counter() - t
        figures = validation(learner.predict(x_val), y_val, learner.predict(x_cam), y_cam, val_cards)
        yield epoch, lr, seconds, loss, accuracy, figures


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """Cosine decay over the run: large steps first, fine ones at the end (epoch counts from 1)."""
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * (epoch - 1) / max(1, cfg.epochs))))


def epoch_score(record: dict) -> tuple:
    """What picks the kept epoch: clean + camera validation accuracy, then the lower loss."""
    return (record["val_accuracy"] + record["val_camera_accuracy"], -record["val_loss"])


def make_learner(cfg: TrainConfig, layers: list, input_shape, rng):
    if cfg.trainer == "keras":
        from training.keras_model import KerasLearner

        return KerasLearner(layers, input_shape, cfg.optimizer, cfg.lr, cfg.seed)
    if cfg.trainer == "numpy":
        return NumpyLearner(layers, input_shape, cfg.optimizer, cfg.lr, rng)
    raise ValueError(f"unknown trainer {cfg.trainer!r} (choose numpy or keras)")


def prepare_inputs(cfg: TrainConfig, cards: CardSet, train_idx, val_idx, settings, input_shape):
    """(x_train, y_train, x_val, y_val, x_cam, y_cam): every training card clean, jittered and
    through the camera; the validation cards clean and once through the camera."""
    jobs = [(int(i), "clean", 0) for i in train_idx]
    jobs += [(int(i), "jitter", 1 + v) for i in train_idx for v in range(cfg.jitter_variants)]
    jobs += [(int(i), "camera", 100 + v) for i in train_idx for v in range(cfg.camera_variants)]
    x_train, kept = make_inputs(cards.cards, jobs, settings, input_shape, cfg.seed, cfg.processes)
    y_train = cards.labels[[jobs[k][0] for k in kept]]
    validation_sets = validation_inputs(cards.cards, val_idx, settings, input_shape, cfg.processes)
    (x_val, kept_val), (x_cam, kept_cam) = validation_sets["clean"], validation_sets["camera"]
    if not len(x_train) or not len(x_val):  # nothing to learn from, or nothing to judge by
        raise DataError(
            f"preprocessing found a glyph in {len(x_train)} of {len(jobs)} training pictures and {len(x_val)} of "
            f"{len(val_idx)} validation cards: cards need dark ink on light paper (`cardcam predict` with any model "
            "says what it finds in a picture)")
    return x_train, y_train, x_val, cards.labels[val_idx[kept_val]], x_cam, cards.labels[val_idx[kept_cam]]


_last_validation: list = []  # [(cards, key, inputs)]: validation_inputs' last answer


def validation_inputs(cards: list, val_idx, settings, input_shape, processes=None) -> dict:
    """{"clean": (inputs, kept), "camera": (inputs, kept)}: the validation cards clean, and each
    once through the camera (seed fixed, so every training seed is judged on the same frames).

    The last answer is kept (read-only): the report drawn right after training asks again for
    the same cards list, split and settings, and gets the same arrays instead of preprocessing
    them twice (seconds for digits)."""
    key = (np.asarray(val_idx).tobytes(), settings, tuple(input_shape))
    if _last_validation and _last_validation[0][0] is cards and _last_validation[0][1] == key:
        return _last_validation[0][2]
    sets = {kind: make_inputs(cards, [(int(i), kind, variant) for i in val_idx], settings, input_shape, 0, processes)
            for kind, variant in (("clean", 0), ("camera", 999))}
    for x, kept in sets.values():
        x.flags.writeable = kept.flags.writeable = False
    _last_validation[:] = [(cards, key, sets)]
    return sets
