"""`cardcam-train`: train, evaluate (on the laptop)."""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

from training import extras

try:  # before the imports below, which need it: one line naming the extra, not a traceback
    extras.require("train")
except extras.ExtraMissing as e:
    print(f"cardcam-train: {e}", file=sys.stderr)
    raise SystemExit(2) from None

import numpy as np  # noqa: E402

from device.bundle import BundleError, load_bundle  # noqa: E402
from device.classify import classify  # noqa: E402
from device.preprocess import ImageError, PreprocessSettings, load_image  # noqa: E402
from device.runtime import RUNTIMES, RuntimeUnavailable, make_runtime  # noqa: E402
from training import cache, parallel, progress  # noqa: E402
from training.keras_model import KerasMissing  # noqa: E402
from training.data import DataError, label_folders, label_pictures, split  # noqa: E402
from training.evaluation import judge_cards  # noqa: E402
from training.nets import ARCHS  # noqa: E402
from training.optim import OPTIMISERS  # noqa: E402
from training.options import count, output_file, positive, writable_folder  # noqa: E402
from training.tasks import TASKS, default_arch, load_task, task_preprocess  # noqa: E402
from training.trainer import TrainConfig, confusion_matrix, train  # noqa: E402

def parse_preprocess(pairs) -> dict:
    """``--preprocess KEY=VALUE`` options -> PreprocessSettings fields (checked there)."""
    defaults, out = PreprocessSettings(), {}
    known = [k for k in defaults.to_dict() if k != "version"]  # the version is preprocessing's own, not a setting
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


def free_name(path: str) -> str:
    """path if nothing is there, else the first of NAME-2.npz, NAME-3.npz, ... that is free."""
    p, n = Path(path), 2
    while p.exists():
        p, n = Path(path).with_name(f"{Path(path).stem}-{n}{Path(path).suffix}"), n + 1
    return str(p)


def remove_derived(model) -> list[str]:
    """Remove the files made from an earlier bundle of this name (its .tflite and NAME.report/),
    which would describe another model beside the new one; returns what was removed."""
    from training.report import report_dir

    gone = []
    tflite, report = Path(model).with_suffix(".tflite"), report_dir(model)
    if tflite.is_file():
        tflite.unlink()
        gone.append(str(tflite))
    if report.is_dir():
        shutil.rmtree(report)
        gone.append(f"{report}/")
    return gone


def cmd_train(args) -> int:
    parallel.threads()  # a bad CARDCAM_TRAIN_THREADS stops here, not after the data is prepared
    if args.trainer == "keras":
        extras.require("keras", "--trainer keras")
    # The task's own network and preprocessing (training.tasks), unless --arch or --preprocess says otherwise.
    preprocess = task_preprocess(args.task, parse_preprocess(args.preprocess))
    cfg = TrainConfig(task=args.task, arch=args.arch or default_arch(args.task),
                      epochs=args.epochs, seed=args.seed, batch_size=args.batch_size, optimizer=args.optimizer,
                      lr=args.lr, jitter_variants=args.jitter, camera_variants=args.camera,
                      processes=args.processes, trainer=args.trainer, preprocess=preprocess or None)
    # A practice run never replaces a model: without --out the next free name, with an --out
    # that exists only with --force.
    out = args.out or free_name(default_out(args.task))
    output_file(out, ".npz", force=args.force)
    command = "cardcam-train " + " ".join(shlex.quote(a) for a in args.argv)
    cards, description = load_task(cfg.task)  # here, so the report judges the same cards
    bundle = train(cfg, out, command, progress=not args.quiet, cards=cards, data_description=description)
    p = bundle.meta["provenance"]
    kept = f"; {default_out(args.task)} is kept (--out names the file)" if out != default_out(args.task) \
        and not args.out else ""
    print(f"saved {out}: best epoch {p['best_epoch']}, validation accuracy {p['val_accuracy']:.4f} "
          f"(camera frames {p['val_camera_accuracy']:.4f}){kept}")
    for gone in remove_derived(out):
        print(f"removed {gone} (made from the model that {out} replaces)")
    if p.get("interrupted"):
        print(f"cardcam-train: {p['interrupted']} ({out}; its provenance says so)", file=sys.stderr)
        return 130
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
        output_file(args.out, ".html")
    page = render_html(args.model, data=args.data, out=args.out)
    print(f"wrote {page}")
    return 0


def cmd_export(args) -> int:
    from training.export import export

    if args.tflite:
        output_file(args.tflite, ".tflite", "--tflite")
    bundle, tflite_path, record = export(args.model, data=args.data, io_type=args.io, count=args.count,
                                         tflite_out=args.tflite)
    check = record["validation"]
    print(f"{args.model}: int8 TFLite ({record['input']} input/output, {len(bundle.tflite) / 1024:.0f} KiB) added; "
          f"also written to {tflite_path}")
    print(f"validation ({check['images']} images): top-1 agreement with float {check['top1_agreement']:.2%}, "
          f"accuracy {check['float_accuracy']:.2%} float -> {check['int8_accuracy']:.2%} int8")
    return 0


def cmd_evaluate(args) -> int:
    if args.frames != 1 and not args.camera:
        raise ValueError(f"--frames {args.frames}: only with --camera (clean pictures are judged once each)")
    bundle = load_bundle(args.model)
    runtime = make_runtime(bundle, args.runtime)
    folder = args.data[len("folder:"):] if args.data.startswith("folder:") else args.data
    if Path(folder).is_dir() and args.split is None and not args.camera:
        result = judge_pictures(bundle, runtime, folder)  # every picture, each with what became of it
    else:
        result = judge_task(bundle, runtime, args)
    if result is None:
        return 2
    result = {"model": str(args.model), "data": args.data} | result
    if args.json:
        print(json.dumps(result))
        return 0
    print_evaluation(result, bundle.labels, args.worst)
    return 0


def judge_task(bundle, runtime, args) -> dict | None:
    """A task's validation split (or every card), clean or through the simulated camera."""
    folder = Path(args.data).is_dir()  # a plain DIR: every picture, unless --split val
    cards, _ = load_task(f"folder:{args.data}" if folder else args.data)
    train_idx, val_idx = split(cards)
    split_name = args.split or ("all" if folder else "val")
    idx = val_idx if split_name == "val" else np.arange(len(cards))
    if not _labels_known(cards.names, bundle.labels, args.data):
        return None
    kind = "camera" if args.camera else "clean"
    judged = judge_cards(bundle, runtime, cards, idx, kind, args.frames)
    outcomes = [(int(t), int(p), "" if p >= 0 else "not found", None, None) for t, p in zip(judged.y, judged.pred)]
    return {"split": split_name} | summarise_outcomes(outcomes, bundle.labels, kind, runtime)


def judge_pictures(bundle, runtime, root) -> dict | None:
    """Every picture in root/<label>/, as `cardcam predict` reads it: right, wrong (as what), no
    card, no ink or unreadable, and the probability the model gives its true label."""
    folders = label_folders(root)
    if not _labels_known([f.name for f in folders], bundle.labels, root):
        return None
    outcomes = []
    errors = {}  # file -> why it could not be read
    for folder in folders:
        true = bundle.labels.index(folder.name)
        for path in label_pictures(folder):
            try:
                found = classify(load_image(path), bundle, runtime)
            except ImageError as e:  # kept with the file: "one flat colour", "not an image", ...
                outcomes.append((true, -1, "unreadable", 0.0, str(path)))
                errors[str(path)] = str(e).removeprefix(f"{path}: ")
                continue
            if not found.found:
                outcomes.append((true, -1, found.reason or "not found", 0.0, str(path)))
            else:
                outcomes.append((true, int(found.probabilities.argmax()), "", float(found.probabilities[true]), str(path)))
    result = {"split": "all"} | summarise_outcomes(outcomes, bundle.labels, "clean", runtime)
    for f in result["files"]:
        if f["file"] in errors:
            f["error"] = errors[f["file"]]
    return result


def summarise_outcomes(outcomes, labels, kind, runtime) -> dict:
    """evaluate's figures from (true, predicted or -1, reason when nothing was read, probability
    of the true label or None, file or None) per picture: overall and per class accuracy, the
    confusion matrix (last column: nothing read), per class what became of the pictures, and the
    files from the worst (lowest probability of their true label) up."""
    n = len(labels)
    y = np.array([o[0] for o in outcomes], np.int64)
    pred = np.array([o[1] for o in outcomes], np.int64)
    confusion = confusion_matrix(y, pred, n)
    classes = {}
    for c, label in enumerate(labels):
        mine = [o for o in outcomes if o[0] == c]
        wrong: dict = {}
        not_read: dict = {}
        for _, p, reason, _, _ in mine:
            if p >= 0 and p != c:
                wrong[labels[p]] = wrong.get(labels[p], 0) + 1
            elif p < 0:
                not_read[reason] = not_read.get(reason, 0) + 1
        classes[label] = {"pictures": len(mine), "right": sum(o[1] == c for o in mine), "wrong": wrong,
                          "no card": not_read.pop("no card", 0), "no ink": not_read.pop("no ink", 0)} | not_read
    files = sorted((o for o in outcomes if o[4] is not None), key=lambda o: (o[3], o[4]))
    return {
        "pictures": kind, "runtime": runtime.description, "count": len(outcomes),
        "accuracy": round(float((pred == y).mean()) if len(y) else float("nan"), 5),
        "no_ink": int((pred < 0).sum()),
        "per_class": {labels[c]: round(float(confusion[c, c] / max(1, confusion[c].sum())), 5) for c in range(n)},
        "confusion": confusion.tolist(),
        "classes": classes,
        "files": [{"file": f, "label": labels[t], "read_as": labels[p] if p >= 0 else None,
                   "reason": reason or None, "p_true": round(q, 5)} for t, p, reason, q, f in files],
    }


def print_evaluation(result: dict, labels: list, worst: int) -> None:
    print(f"{result['model']} on {result['data']} ({result['split']}, {result['pictures']} pictures, "
          f"{result['runtime']}): {result['count']} images, accuracy {result['accuracy']:.2%}, "
          f"nothing read (no card or no ink) in {result['no_ink']}")
    print("per class: " + "  ".join(f"{k}: {v:.2%}" for k, v in result["per_class"].items()))
    width = max(5, max(len(l) for l in labels) + 1)
    print("confusion (rows: true, columns: predicted, last: nothing read)")
    print(" " * width + "".join(f"{l:>{width}}" for l in labels) + f"{'none':>{width}}")
    for c, row in enumerate(result["confusion"]):
        print(f"{labels[c]:>{width}}" + "".join(f"{v:>{width}}" for v in row))
    print("what became of each class's pictures:")
    for label, c in result["classes"].items():
        wrong = sum(c["wrong"].values())
        parts = [f"{c['right']} right", f"{wrong} wrong" + (" (as " + ", ".join(
            f"{k}: {v}" for k, v in sorted(c["wrong"].items(), key=lambda kv: -kv[1])) + ")" if wrong else "")]
        parts += [f"{v} {k}" for k, v in c.items() if k not in ("pictures", "right", "wrong") and (v or k in
                                                                                                   ("no card", "no ink"))]
        print(f"  {label:>{width}}  {c['pictures']} pictures: " + ", ".join(parts))
    bad = [f for f in result["files"] if f["read_as"] != f["label"]]
    shown = (bad + [f for f in result["files"] if f["read_as"] == f["label"]])[:worst]
    if shown:
        print("worst pictures (lowest probability of their true label; --worst N for more):")
        for f in shown:
            what = f["reason"] if f["read_as"] is None else "right" if f["read_as"] == f["label"] else \
                f"read as {f['read_as']}"
            what += f" ({f['error']})" if f.get("error") else ""
            print(f"  {f['file']}  {f['label']}: {what}, p({f['label']}) {f['p_true']:.1%}")


def _labels_known(names, labels, where) -> bool:
    missing = sorted(set(names) - set(labels))
    if missing:
        print(f"cardcam-train: {where}: label {missing[0]!r} is not one of the model's {labels}", file=sys.stderr)
    return not missing


def cmd_ablate(args) -> int:
    from training import ablate

    parallel.threads()  # as in cmd_train
    if args.trainer == "keras":
        extras.require("keras", "--trainer keras")

    arch = ablate.ARCHS[args.arch](2)
    if args.list:
        for v in ablate.plan_variants(arch["layers"], arch["input_shape"]):
            print(f"{v.name:16} {v.description}" + (f"  (skipped: {v.skipped})" if v.skipped else ""))
        return 0
    names = [n.strip() for group in args.variants or [] for n in group.split(",") if n.strip()]
    if args.variants is not None and not names:
        raise ValueError(f"--variants {' '.join(map(repr, args.variants))}: names no variant "
                         f"(leave it out for every automatic one; --list shows them)")
    # A name that means nothing for this network fails now, not after the data.
    ablate.plan_variants(arch["layers"], arch["input_shape"], names or None)
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


def cmd_cache(args) -> int:
    where = cache.folder()
    if args.action == "clear":
        files, size = cache.clear()
        print(f"removed {files} prepared input file{'s' * (files != 1)} ({size / 2**20:.1f} MiB) from {where}")
        return 0
    entries = cache.entries()
    size = sum(p.stat().st_size for p in entries)
    print(f"{where}: {len(entries)} prepared input file{'s' * (len(entries) != 1)}, {size / 2**20:.1f} MiB "
          "(cardcam-train cache clear empties it; --no-cache trains without it)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cardcam-train", description="Train and check cardcam models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("train", help="train a model (NumPy trainer, or --trainer keras)")
    p.add_argument("--task", default="digits", help="; ".join(f"{t.usage}: {t.description}" for t in TASKS.values())
                   + " (default: digits)")
    p.add_argument("--arch", choices=sorted(ARCHS), help="architecture (default: "
                   + ", ".join(f"{t.arch} for {t.name}" for t in TASKS.values()) + ")")
    p.add_argument("--epochs", type=count(1), default=12)
    p.add_argument("--seed", type=count(0), default=0)
    p.add_argument("--batch-size", type=count(1), default=64)
    p.add_argument("--optimizer", choices=sorted(OPTIMISERS), default="adam")
    p.add_argument("--lr", type=positive, default=2e-3)
    p.add_argument("--jitter", type=count(0), default=3, help="handwriting-jitter variants per card (default 3)")
    p.add_argument("--camera", type=count(0), default=2, help="simulated camera frames per card (default 2)")
    p.add_argument("--processes", type=count(1), help="processes that make the inputs (default: all cores)")
    p.add_argument("--out", help="bundle (.npz) to write (default: models/TASK.npz, or models/TASK-2.npz, ... "
                                 "if that exists: a run never replaces a model unless told to)")
    p.add_argument("--force", action="store_true",
                   help="replace --out if it exists (its .tflite and report, made from the old model, are removed)")
    p.add_argument("--preprocess", action="append", metavar="KEY=VALUE",
                   help="a preprocessing setting for this model (kept in its bundle), over the task's own "
                        "(smiley: paper_window=0.35, as the shipped models), e.g. ink_threshold=0.3")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--trainer", choices=("numpy", "keras"), default="numpy",
                   help="numpy (default) or keras (pip install 'cardcam[keras]'); same specs, data and bundle")
    add_no_cache(p)
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
    p.add_argument("--split", choices=("val", "all"),
                   help="val: the validation split (the default for a task, and for folder:DIR with --camera: "
                        "the model's own training folder) or all (the default for DIR, and folder:DIR without --camera)")
    p.add_argument("--camera", action="store_true", help="judge simulated camera frames instead of clean cards")
    p.add_argument("--frames", type=count(1), default=1, help="with --camera: frames per card (default 1)")
    p.add_argument("--runtime", choices=RUNTIMES, default="numpy",
                   help="numpy (default: the float weights), tflite (the bundle's int8 model) or auto")
    p.add_argument("--json", action="store_true", help="one JSON object: the figures, and every file worst first")
    p.add_argument("--worst", type=count(0), default=10, help="pictures listed, worst first (default 10)")
    add_no_cache(p)
    p.add_argument("data", help="a task (digits01, digits, smiley:N) or your pictures, DIR or folder:DIR "
                                "(DIR/<label>/*.png|jpg): every picture, each said what became of it")
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
                   help="a preprocessing setting, over the task's own as for train (smiley: paper_window=0.35)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_no_cache(p)
    p.set_defaults(func=cmd_ablate)
    p = sub.add_parser("cache", help="the prepared inputs kept between runs: where, how big; clear")
    p.add_argument("action", nargs="?", choices=("show", "clear"), default="show")
    p.set_defaults(func=cmd_cache)
    from training import cards, deploy, fetch, sheets  # printing, sheet cutting and deploying live with their code

    sheets.add_commands(sub)
    cards.add_command(sub)
    deploy.add_command(sub)
    fetch.add_command(sub)
    return parser


def add_no_cache(p) -> None:
    p.add_argument("--no-cache", action="store_true",
                   help=f"make the inputs anew and keep nothing (the cache: {cache.folder()}; cardcam-train cache)")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    cache.enabled = not getattr(args, "no_cache", False)
    progress.shown = not getattr(args, "quiet", False)
    try:
        return args.func(args)
    except (BundleError, DataError, ValueError, KerasMissing, RuntimeUnavailable, extras.ExtraMissing) as e:
        print(f"cardcam-train: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cardcam-train: stopped (Ctrl-C)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `cardcam-train evaluate ... | head`
        return 0
    except OSError as e:  # a file or folder that cannot be written or read: one line, no traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"cardcam-train: {where}{e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
