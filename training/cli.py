"""`cardcam-train`: train, evaluate (on the laptop)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from device.bundle import BundleError, load_bundle
from device.preprocess import PreprocessSettings
from device.runtime import RUNTIMES, RuntimeUnavailable, make_runtime
from training.keras_model import KerasMissing
from training.data import DataError, load_folder, load_task, split
from training.nets import ARCHS
from training.optim import OPTIMISERS
from training.trainer import TrainConfig, as_float, make_inputs, train

# The defaults that give the shipped models (models/README.md).
DEFAULT_ARCH = {"digits01": "lenet5", "digits": "digitnet"}


def parse_preprocess(pairs) -> dict:
    """``--preprocess KEY=VALUE`` options -> PreprocessSettings fields (checked there)."""
    defaults, out = PreprocessSettings(), {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not hasattr(defaults, key) or key.startswith("_"):
            raise ValueError(f"--preprocess {pair}: expected KEY=VALUE with KEY a preprocessing setting")
        kind = type(getattr(defaults, key))
        try:
            out[key] = kind(value)
        except ValueError:
            raise ValueError(f"--preprocess {pair}: {key} must be {kind.__name__}") from None
    PreprocessSettings.from_dict(out)  # ranges
    return out


def cmd_train(args) -> int:
    cfg = TrainConfig(task=args.task, arch=args.arch or DEFAULT_ARCH.get(args.task, "lenet5"),
                      epochs=args.epochs, seed=args.seed, batch_size=args.batch_size, optimizer=args.optimizer,
                      lr=args.lr, jitter_variants=args.jitter, camera_variants=args.camera,
                      processes=args.processes, trainer=args.trainer,
                      preprocess=parse_preprocess(args.preprocess) or None)
    out = args.out or f"models/{args.task.split(':')[0] if not args.task.startswith('folder:') else Path(args.task[7:]).name}.npz"
    command = "cardcam-train " + " ".join(shlex.quote(a) for a in args.argv)
    bundle = train(cfg, out, command, progress=not args.quiet)
    p = bundle.meta["provenance"]
    print(f"saved {out}: best epoch {p['best_epoch']}, validation accuracy {p['val_accuracy']:.4f} "
          f"(camera frames {p['val_camera_accuracy']:.4f})")
    return 0


def cmd_export(args) -> int:
    from training.export import export

    bundle, tflite_path, record = export(args.model, data=args.data, io_type=args.io, count=args.count,
                                         tflite_out=args.tflite)
    check = record["validation"]
    print(f"{args.model}: int8 TFLite ({record['input']} input/output, {len(bundle.tflite) / 1024:.0f} KiB) added; "
          f"also written to {tflite_path}")
    print(f"validation ({check['images']} images): top-1 agreement with float {check['top1_agreement']:.2%}, "
          f"accuracy {check['float_accuracy']:.2%} float -> {check['int8_accuracy']:.2%} int8")
    return 0


def cmd_evaluate(args) -> int:
    bundle = load_bundle(args.model)
    runtime = make_runtime(bundle, args.runtime)
    if Path(args.data).is_dir():
        cards = load_folder(args.data)
        idx = np.arange(len(cards))
    else:
        cards, _ = load_task(args.data)
        train_idx, val_idx = split(cards)
        idx = val_idx if args.split == "val" else np.arange(len(cards))
    if cards.names != bundle.labels:
        missing = sorted(set(cards.names) - set(bundle.labels))
        if missing:
            print(f"cardcam-train: {args.data}: label {missing[0]!r} is not one of the model's {bundle.labels}",
                  file=sys.stderr)
            return 2
    to_model = np.array([bundle.labels.index(n) for n in cards.names])
    kind = "camera" if args.camera else "clean"
    frames = args.frames if args.camera else 1
    idx = np.repeat(idx, frames)
    jobs = [(int(i), kind, 999 + k % frames) for k, i in enumerate(idx)]
    x, kept = make_inputs(cards.cards, jobs, bundle.preprocess, bundle.input_shape, 0)
    y = to_model[cards.labels[idx]]
    pred = np.full(len(idx), -1)
    probs = np.concatenate([runtime.predict(as_float(x[i:i + 256])) for i in range(0, len(x), 256)]) if len(x) else np.zeros((0, 1))
    pred[kept] = probs.argmax(axis=1) if len(x) else []
    labels = bundle.labels
    n = len(labels)
    confusion = np.zeros((n, n + 1), np.int64)  # last column: no ink found
    for t, p in zip(y, pred):
        confusion[t, p if p >= 0 else n] += 1
    acc = float((pred == y).mean())
    per_class = {labels[c]: float(confusion[c, c] / max(1, confusion[c].sum())) for c in range(n)}
    result = {"model": str(args.model), "data": args.data, "split": args.split if not Path(args.data).is_dir() else "all",
              "pictures": kind, "runtime": runtime.description, "count": int(len(idx)), "accuracy": round(acc, 5),
              "no_ink": int((pred < 0).sum()), "per_class": {k: round(v, 5) for k, v in per_class.items()},
              "confusion": confusion.tolist()}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.model} on {args.data} ({result['split']}, {kind} pictures, {runtime.description}): {len(idx)} images, "
          f"accuracy {acc:.2%}, no ink found in {result['no_ink']}")
    print("per class: " + "  ".join(f"{k}: {v:.2%}" for k, v in per_class.items()))
    width = max(5, max(len(l) for l in labels) + 1)
    print("confusion (rows: true, columns: predicted, last: no ink)")
    print(" " * width + "".join(f"{l:>{width}}" for l in labels) + f"{'none':>{width}}")
    for c in range(n):
        print(f"{labels[c]:>{width}}" + "".join(f"{v:>{width}}" for v in confusion[c]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cardcam-train", description="Train and check cardcam models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("train", help="train a model (NumPy trainer, or --trainer keras)")
    p.add_argument("--task", default="digits", help="digits01, digits, smiley[:N] or folder:DIR (default: digits)")
    p.add_argument("--arch", choices=sorted(ARCHS), help="architecture (default: lenet5 for digits01, digitnet for digits)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--optimizer", choices=sorted(OPTIMISERS), default="adam")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--jitter", type=int, default=3, help="handwriting-jitter variants per card (default 3)")
    p.add_argument("--camera", type=int, default=2, help="simulated camera frames per card (default 2)")
    p.add_argument("--processes", type=int, help="processes that make the inputs (default: all cores)")
    p.add_argument("--out", help="bundle to write (default: models/TASK.npz)")
    p.add_argument("--preprocess", action="append", metavar="KEY=VALUE",
                   help="a preprocessing setting for this model (kept in its bundle), e.g. paper_window=0.35")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--trainer", choices=("numpy", "keras"), default="numpy",
                   help="numpy (default) or keras (pip install 'cardcam[keras]'); same specs, data and bundle")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("export", help="add a full-integer int8 TFLite model to a bundle (and write it as .tflite)")
    p.add_argument("--model", required=True, help="the bundle (.npz); rewritten in place, weights unchanged")
    p.add_argument("--data", help="the training data for representative inputs (default: the bundle's task)")
    p.add_argument("--io", choices=("int8", "float32"), default="int8",
                   help="type of the TFLite model's input and output (default int8; the ops are int8 either way)")
    p.add_argument("--count", type=int, default=300, help="representative inputs from the training split (default 300)")
    p.add_argument("--tflite", help="standalone .tflite to write (default: beside the bundle)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix of a model")
    p.add_argument("--model", required=True)
    p.add_argument("--split", choices=("val", "all"), default="val",
                   help="for a task: its validation split (default) or every image")
    p.add_argument("--camera", action="store_true", help="judge simulated camera frames instead of clean cards")
    p.add_argument("--frames", type=int, default=1, help="with --camera: frames per card (default 1)")
    p.add_argument("--runtime", choices=RUNTIMES, default="numpy",
                   help="numpy (default: the float weights), tflite (the bundle's int8 model) or auto")
    p.add_argument("--json", action="store_true")
    p.add_argument("data", help="a task (digits01, digits, folder:DIR) or a folder DIR/<label>/*.png")
    p.set_defaults(func=cmd_evaluate)
    from training import cards, deploy, sheets  # printing, sheet cutting and deploying live with their code

    sheets.add_commands(sub)
    cards.add_command(sub)
    deploy.add_command(sub)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (BundleError, DataError, ValueError, KerasMissing, RuntimeUnavailable) as e:
        print(f"cardcam-train: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `cardcam-train evaluate ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
