"""`cardcam`: the command line on the Pi."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from device.bundle import BundleError, load_bundle
from device.classify import classify
from device.preprocess import ImageError, load_image
from device.runtime import RUNTIMES, RuntimeUnavailable, make_runtime


def _classify_file(path: str, bundle, runtime) -> dict:
    """One predict --json record for one file."""
    try:
        result = classify(load_image(path), bundle, runtime)
    except ImageError as e:
        return {"file": path, "error": str(e)}
    return {"file": path} | result.record(bundle.labels)


def cmd_predict(args) -> int:
    try:
        bundle = load_bundle(args.model)
        runtime = make_runtime(bundle, args.runtime, args.threads)
    except (BundleError, RuntimeUnavailable) as e:
        print(f"cardcam: {e}", file=sys.stderr)
        return 2
    failed = False
    for path in args.files:
        record = _classify_file(path, bundle, runtime)
        failed |= "error" in record
        if args.json:
            print(json.dumps(record), flush=False)
        elif "error" in record:  # the error names the file already
            print(f"{path}: error: {record['error'].removeprefix(path + ': ')}")
        elif record["label"] is None:
            print(f"{path}: nothing to read ({record['reason']})")
        else:
            print(f"{path}: {record['label']} ({record['confidence']:.1%})")
    sys.stdout.flush()
    return 1 if failed else 0


def cmd_teach(args) -> int:
    """A new bundle from BASE and a folder of examples. Exit 2: the base, --out or the saving is
    wrong (nothing written); 1: the examples cannot be taught from (nothing written)."""
    import time

    from device.bundle import save_bundle
    from device.teach import TeachError, kept_layers, read_examples, teach

    out = Path(args.out)
    if out.suffix.lower() != ".npz":
        return _fail(f"--out {out}: a model bundle is written here, so the name must end in .npz", 2)
    if out.is_dir():
        return _fail(f"--out {out}: is a folder; name the bundle file, e.g. {out}/taught.npz", 2)
    if out.exists() and not args.force:
        return _fail(f"--out {out}: exists; choose another name, or add --force to replace it", 2)
    start = time.perf_counter()
    try:
        base = load_bundle(args.model)
        kept_layers(base, args.model)
    except (BundleError, TeachError) as e:
        return _fail(str(e), 2)
    try:
        examples = read_examples(args.examples, base)
        bundle = teach(base, examples, base_name=Path(args.model).name)
    except TeachError as e:
        return _fail(str(e), 1)
    try:
        save_bundle(bundle, out)  # a temporary file renamed into place: a failed save leaves --out as it was
    except BundleError as e:
        return _fail(str(e), 2)
    counts = ", ".join(f"{label} ({count})" for label, count in examples.counts.items())
    print(f"saved {out}: {counts} taught on {Path(args.model).name} in {time.perf_counter() - start:.2f} s")
    return 0


def _fail(message: str, code: int) -> int:
    print(f"cardcam: {message}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cardcam", description="Read a card held in front of the camera.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("predict", help="classify picture files with a model bundle")
    p.add_argument("--model", required=True, help="model bundle (.npz)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line per file (with the int8 TFLite runtime the probabilities are "
                        "its dequantised outputs, steps of 1/256: they sum to 1 within a few 1/256)")
    p.add_argument("--runtime", choices=RUNTIMES, default="auto",
                   help="auto (default: the bundle's TFLite model if it has one and a TFLite runtime is "
                        "installed, else numpy), numpy or tflite")
    p.add_argument("--threads", type=int, default=1, help="TFLite interpreter threads (default 1)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("teach", help="teach a model new labels from a folder of examples, in seconds",
                       description="Keep MODEL's network up to its last hidden layer and learn a new output "
                                   "layer for the labels of EXAMPLES/<label>/*.png|jpg (camera pictures of cards, "
                                   "at least 2 per label), each read through MODEL's preprocessing. Writes a "
                                   "normal bundle. Exit 0: saved; 1: the examples cannot be taught from; "
                                   "2: the model, --out or the saving failed. Nothing is written unless it "
                                   "all worked.")
    p.add_argument("--model", required=True, help="the base model bundle (.npz)")
    p.add_argument("--examples", required=True, metavar="DIR", help="DIR/<label>/*.png|jpg, one folder per label")
    p.add_argument("--out", required=True, help="the new bundle (.npz); an existing file only with --force")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_teach)

    p = sub.add_parser("run", help="run the appliance: camera -> model -> LEDs (simulated off a Pi)")
    p.add_argument("--config", help="config file (default: /etc/cardcam/config.toml, or built-in defaults)")
    p.add_argument("--simulate", action="store_true", help="sample frames and mock GPIO pins, even on a Pi")
    p.set_defaults(func=_lazy("device.daemon", "run"))

    p = sub.add_parser("capture", help="save camera frames of a card for retraining")
    p.add_argument("--label", required=True, help="what the card shows, e.g. 0, 1, happy")
    p.add_argument("--count", type=int, default=20, help="how many pictures (default: 20)")
    p.add_argument("--out", default="captures", help="folder for raw/LABEL and seen/LABEL (default: captures)")
    p.add_argument("--config", help="config file (default: /etc/cardcam/config.toml)")
    p.add_argument("--simulate", action="store_true", help="sample frames and Enter instead of the camera and button")
    p.set_defaults(func=_lazy("device.capture", "capture"))

    p = sub.add_parser("doctor", help="check this machine: python, camera, GPIO, config, model, service")
    p.add_argument("--config", help="config file (default: /etc/cardcam/config.toml)")
    p.set_defaults(func=_lazy("device.doctor", "doctor"))
    return parser


def _lazy(module: str, name: str):
    """The appliance commands import their modules only when run, so `predict` stays quick."""
    def call(args):
        import importlib

        from device.config import ConfigError
        from device.outputs import OutputError
        try:
            return getattr(importlib.import_module(module), name)(args)
        except (ConfigError, OutputError) as e:  # the config file they read, a missing gpiozero: one line, exit 2
            print(f"cardcam: {e}", file=sys.stderr)
            return 2
    return call


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)  # inside: Ctrl-C at start-up is a quiet stop too
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `cardcam predict ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
