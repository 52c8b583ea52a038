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
from training import parallel
from training.keras_model import KerasMissing
from training.data import DataError, load_folder, load_task, split
from training.nets import ARCHS
from training.optim import OPTIMISERS
from training.options import count, positive, writable_folder
from training.trainer import TrainConfig, as_float, confusion_matrix, make_inputs, predict_labels, train

# The defaults that give the shipped models (models/README.md).
DEFAULT_ARCH = {"digits01": "lenet5", "digits": "digitnet", "smiley": "smileynet"}


def parse_preprocess(pairs) -> dict:
    """``--preprocess KEY=VALUE`` options -> PreprocessSettings fields (checked there)."""
    defaults, out = PreprocessSettings(), {}
    known = list(defaults.to_dict())
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or key not in known:
            raise ValueError(f"--preprocess {pair}: expected KEY=VALUE with KEY one of {', '.join(known)}")
        kind = type(getattr(defaults, key))
        try:
            out[key] = kind(value)
        except ValueError:
            raise ValueError(f"--preprocess {pair}: {key} must be {kind.__name__}") from None
    try:
        PreprocessSettings.from_dict(out)  # ranges
    except ValueError as e:
        raise ValueError(f"--preprocess: {e}") from None
    return out


def default_out(task: str) -> str:
    """models/<task>.npz; for folder:DIR, DIR's own name (folder:. is the current folder's)."""
    if task.startswith("folder:"):
        return f"models/{Path(task[len('folder:'):]).resolve().name}.npz"
    return f"models/{task.split(':')[0]}.npz"


def cmd_train(args) -> int:
    parallel.threads()  # a bad CARDCAM_TRAIN_THREADS stops here, not after the data is prepared
    cfg = TrainConfig(task=args.task, arch=args.arch or DEFAULT_ARCH.get(args.task.split(":")[0], "lenet5"),
                      epochs=args.epochs, seed=args.seed, batch_size=args.batch_size, optimizer=args.optimizer,
                      lr=args.lr, jitter_variants=args.jitter, camera_variants=args.camera,
                      processes=args.processes, trainer=args.trainer,
                      preprocess=parse_preprocess(args.preprocess) or None)
    out = args.out or default_out(args.task)
    writable_folder(out)
    command = "cardcam-train " + " ".join(shlex.quote(a) for a in args.argv)
    cards, description = load_task(cfg.task)  # here, so the report judges the same cards
    bundle = train(cfg, out, command, progress=not args.quiet, cards=cards, data_description=description)
    p = bundle.meta["provenance"]
    print(f"saved {out}: best epoch {p['best_epoch']}, validation accuracy {p['val_accuracy']:.4f} "
          f"(camera frames {p['val_camera_accuracy']:.4f})")
    from training.report import report_dir, write_report

    try:
        write_report(out, cards=cards)
    except Exception as e:  # the model is saved; a report that cannot be drawn must not hide that
        print(f"cardcam-train: {out}: report not written ({type(e).__name__}: {e})", file=sys.stderr)
        return 0
    print(f"report pictures in {report_dir(out)}/ (one HTML page: cardcam-train report {out})")
    return 0


def cmd_report(args) -> int:
    from training.report import render_html

    if args.out:
        writable_folder(args.out)
    page = render_html(args.model, data=args.data, out=args.out)
    print(f"wrote {page}")
    return 0


def cmd_export(args) -> int:
    from training.export import export

    if args.tflite:
        writable_folder(args.tflite, "--tflite")
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
    pred, _ = predict_labels(runtime, as_float(x), kept, len(idx))
    labels = bundle.labels
    n = len(labels)
    confusion = confusion_matrix(y, pred, n)
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


def cmd_ablate(args) -> int:
    from training import ablate

    parallel.threads()  # as in cmd_train

    arch = ablate.ARCHS[args.arch](2)
    if args.list:
        for name in ablate.automatic_variants(arch["layers"]):
            v = ablate.make_variant(name, arch["layers"], arch["input_shape"])
            print(f"{name:16} {v.description}" + (f"  (skipped: {v.skipped})" if v.skipped else ""))
        return 0
    names = [n.strip() for group in args.variants or [] for n in group.split(",") if n.strip()]
    for name in names:  # a name that means nothing for this network fails now, not after the data
        ablate.make_variant(name, arch["layers"], arch["input_shape"])
    out = args.out or "ablation/" + "".join(c if c.isalnum() or c in "-_." else "-" for c in f"{args.task}-{args.arch}")
    writable_folder(out, folder=True)
    result = ablate.ablate(task=args.task, arch=args.arch, variants=names or None, runs=args.runs, seed=args.seed,
                           epochs=args.epochs, trainer=args.trainer, jobs=args.jobs, out=out,
                           batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr, jitter=args.jitter,
                           camera=args.camera, preprocess=parse_preprocess(args.preprocess) if args.preprocess else None,
                           progress=not args.quiet)
    print(result["title"])
    print(ablate.format_table(result["rows"]))
    print(f"{result['trained']} runs trained, {result['reused']} reused; written: "
          + ", ".join(str(f) for f in result["files"].values()))
    return 1 if result["errors"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cardcam-train", description="Train and check cardcam models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("train", help="train a model (NumPy trainer, or --trainer keras)")
    p.add_argument("--task", default="digits", help="digits01, digits, smiley[:N] or folder:DIR (default: digits)")
    p.add_argument("--arch", choices=sorted(ARCHS), help="architecture (default: lenet5 for digits01, digitnet for digits, smileynet for smiley)")
    p.add_argument("--epochs", type=count(1), default=12)
    p.add_argument("--seed", type=count(0), default=0)
    p.add_argument("--batch-size", type=count(1), default=64)
    p.add_argument("--optimizer", choices=sorted(OPTIMISERS), default="adam")
    p.add_argument("--lr", type=positive, default=2e-3)
    p.add_argument("--jitter", type=count(0), default=3, help="handwriting-jitter variants per card (default 3)")
    p.add_argument("--camera", type=count(0), default=2, help="simulated camera frames per card (default 2)")
    p.add_argument("--processes", type=count(1), help="processes that make the inputs (default: all cores)")
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
    p.add_argument("--count", type=count(1), default=300, help="representative inputs from the training split (default 300)")
    p.add_argument("--tflite", help="standalone .tflite to write (default: beside the bundle)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix of a model")
    p.add_argument("--model", required=True)
    p.add_argument("--split", choices=("val", "all"), default="val",
                   help="for a task: its validation split (default) or every image")
    p.add_argument("--camera", action="store_true", help="judge simulated camera frames instead of clean cards")
    p.add_argument("--frames", type=count(1), default=1, help="with --camera: frames per card (default 1)")
    p.add_argument("--runtime", choices=RUNTIMES, default="numpy",
                   help="numpy (default: the float weights), tflite (the bundle's int8 model) or auto")
    p.add_argument("--json", action="store_true")
    p.add_argument("data", help="a task (digits01, digits, folder:DIR) or a folder DIR/<label>/*.png")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("report", help="a model's training report as one self-contained HTML page")
    p.add_argument("model", help="the bundle (.npz); pictures missing from NAME.report/ are drawn first")
    p.add_argument("--data", help="cards to judge on: a task or a folder DIR/<label>/ (default: the model's task)")
    p.add_argument("--out", help="HTML file to write (default: NAME.report/report.html)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("ablate", help="train variants of a network (parts removed, filters halved, ...) and compare")
    p.add_argument("--task", default="smiley:300", help="a task as for train (default: smiley:300, 300 cards per class)")
    p.add_argument("--arch", choices=sorted(ARCHS), default="dwengo", help="the network to take apart (default: dwengo)")
    p.add_argument("--variants", action="append", metavar="A,B,...",
                   help="variants to train (default: every automatic one; --list shows them), e.g. "
                        "baseline,no-conv2,no-batchnorm+no-dropout,kernel5,pool3")
    p.add_argument("--list", action="store_true", help="print the automatic variants of --arch and stop")
    p.add_argument("--runs", type=count(1), default=3, help="trainings per variant, seeds SEED, SEED+1, ... (default 3)")
    p.add_argument("--seed", type=count(0), default=0)
    p.add_argument("--epochs", type=count(1), default=4)
    p.add_argument("--trainer", choices=("numpy", "keras"), default="numpy")
    p.add_argument("--jobs", type=count(1), default=1, help="runs trained at once, one process and BLAS thread each")
    p.add_argument("--out", help="folder for runs.jsonl, ablation.csv/.md/.png (default: ablation/TASK-ARCH)")
    p.add_argument("--batch-size", type=count(1), default=64)
    p.add_argument("--optimizer", choices=sorted(OPTIMISERS), default="adam")
    p.add_argument("--lr", type=positive, default=2e-3)
    p.add_argument("--jitter", type=count(0), default=1, help="handwriting-jitter variants per card (default 1)")
    p.add_argument("--camera", type=count(0), default=1, help="simulated camera frames per card (default 1)")
    p.add_argument("--preprocess", action="append", metavar="KEY=VALUE",
                   help="a preprocessing setting (default for smiley tasks: paper_window=0.35, as the shipped models)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_ablate)
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
    except OSError as e:  # a file or folder that cannot be written or read: one line, no traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"cardcam-train: {where}{e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
