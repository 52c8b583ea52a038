"""`cardcam-train ablate`: break a network on purpose and measure what each part was worth.

The school lesson's exercise made rigorous. From an architecture's layer specs come *variants*:
remove a conv block, remove BatchNorm or dropout, halve or double the filters, remove a pooling
layer, ... Each is trained ``runs`` times (seeds ``seed``, ``seed + 1``, ...) on the same
prepared inputs and judged on the same validation cards, and the table says per variant: weights,
validation accuracy mean ± std, training seconds mean ± std and the Pi runtime's milliseconds
for one picture.

A *conv block* (training.nets.conv_blocks) is a conv2d layer and the layers after it up to the
next conv2d or the flatten.
Variant names (``--variants``, joined with ``+`` to combine, e.g. ``no-batchnorm+no-dropout``):

    baseline           the architecture as it is
    no-conv<k>         without conv block k (1 = nearest the input)
    no-convs           without any conv block: flatten straight into the dense layers
    no-batchnorm       without BatchNorm layers      no-dropout   without dropout layers
    no-relu            without ReLUs (a linear network up to the softmax)
    no-pool<k>         without block k's max-pool    no-pools     without any max-pool
    half-filters       half the filters per conv     double-filters  twice the filters
    kernel<k>          every conv kernel k x k       pool<k>      every max-pool k x k

Every finished run is appended to ``runs.jsonl`` in the output folder under a key that hashes
everything its result depends on (the variant's layers, the training settings, the seed and a
hash of the prepared inputs), so a re-run skips what is done and a changed setting trains anew.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from device import nn
from device.bundle import Bundle, make_meta
from device.preprocess import PreprocessSettings
from device.runtime import make_runtime
from training import parallel
from training.progress import bar as progress_bar
from training.data import CardSet, split
from training.tasks import load_task, task_preprocess
from training.nets import ARCHS, conv_blocks
from training.trainer import TrainConfig, as_float, epoch_score, make_learner, prepare_inputs, run_epochs

RESULTS = "runs.jsonl"
RESULT_VERSION = 1  # bump when what a run measures changes, so old lines are not reused
SIMPLE = {
    "baseline": "the architecture as it is",
    "no-convs": "no conv blocks: flatten straight into the dense layers",
    "no-batchnorm": "no BatchNorm",
    "no-dropout": "no dropout",
    "no-relu": "no ReLU (linear up to the softmax)",
    "no-pools": "no max-pooling",
    "half-filters": "half the filters in every conv",
    "double-filters": "twice the filters in every conv",
}
NAMED = re.compile(r"(no-conv|no-pool|kernel|pool)(\d+)$")


class VariantError(ValueError):
    """A variant name that does not say a change to this architecture."""


class NoChange(VariantError):
    """A variant, or a part of one, that leaves the network as it is (kernel3 where every kernel is 3x3)."""


# --- variants --------------------------------------------------------------------------------

@dataclass
class Variant:
    name: str
    description: str
    layers: list          # the changed layer specs
    skipped: str = ""     # why it cannot be trained (shape inference), else ""


def _change(layers: list, blocks: list, part: str) -> tuple[list, list, str]:
    """One named change to (layers, their block numbers): the new pair and a description."""
    count = max(blocks, default=0)
    pairs = list(zip(layers, blocks))
    kinds = {s["type"] for s in layers}

    def keep(pred):
        kept = [(s, b) for s, b in pairs if pred(s, b)]
        return [s for s, _ in kept], [b for _, b in kept]

    def need(kind, what):
        if kind not in kinds:
            raise VariantError(f"variant {part!r}: the network has no {what} (left)")

    if part == "baseline":
        return layers, blocks, SIMPLE[part]
    if part == "no-convs":
        need("conv2d", "conv blocks")
        return (*keep(lambda s, b: b == 0), SIMPLE[part])
    if part in ("no-batchnorm", "no-dropout", "no-relu", "no-pools"):
        kind = {"no-batchnorm": "batchnorm", "no-dropout": "dropout", "no-relu": "relu", "no-pools": "maxpool2d"}[part]
        need(kind, kind + " layers")
        return (*keep(lambda s, b: s["type"] != kind), SIMPLE[part])
    if part in ("half-filters", "double-filters"):
        need("conv2d", "conv layers")
        scale = 0.5 if part == "half-filters" else 2.0
        new = [{**s, "filters": max(1, int(s["filters"] * scale))} if s["type"] == "conv2d" else s for s in layers]
        return new, blocks, SIMPLE[part]
    m = NAMED.match(part)
    if not m:
        raise VariantError(f"unknown variant {part!r} (known: {', '.join(SIMPLE)}, no-conv<k>, no-pool<k>, "
                           f"kernel<k>, pool<k>; join with + to combine)")
    what, k = m.group(1), int(m.group(2))
    if k < 1:
        raise VariantError(f"variant {part!r}: the number must be at least 1")
    if what in ("no-conv", "no-pool") and not 1 <= k <= count:
        raise VariantError(f"variant {part!r}: the network has conv blocks 1..{count}" if count else
                           f"variant {part!r}: the network has no conv blocks")
    if what == "no-conv":
        return (*keep(lambda s, b: b != k), f"without conv block {k}")
    if what == "no-pool":
        if not any(s["type"] == "maxpool2d" and b == k for s, b in pairs):
            raise VariantError(f"variant {part!r}: conv block {k} has no max-pool")
        return (*keep(lambda s, b: not (s["type"] == "maxpool2d" and b == k)), f"without block {k}'s max-pool")
    if what == "kernel":
        need("conv2d", "conv layers")
        return [{**s, "kernel": k} if s["type"] == "conv2d" else s for s in layers], blocks, f"{k}x{k} conv kernels"
    need("maxpool2d", "max-pool layers")
    return [{**s, "size": k} if s["type"] == "maxpool2d" else s for s in layers], blocks, f"{k}x{k} max-pools"


def make_variant(name: str, layers: list, input_shape) -> Variant:
    """The named variant of ``layers``; one whose shapes do not work is returned skipped, with
    shape inference's reason. A name that means nothing here raises VariantError."""
    new, blocks, parts = layers, conv_blocks(layers), []
    for part in name.split("+"):
        before = new
        new, blocks, description = _change(new, blocks, part.strip())
        if new == before and part.strip() != "baseline":
            raise NoChange(f"variant {part.strip()!r} changes nothing in this network ({description} already)")
        parts.append(description)
    variant = Variant(name, "; ".join(parts), [dict(s) for s in new])
    try:
        shapes = nn.infer_shapes(variant.layers, input_shape)
    except nn.SpecError as e:
        variant.skipped = str(e)
        return variant
    for layer in shapes:  # 'same' padding lets any kernel fit: one larger than its map is mostly padding
        kind = layer.spec["type"]
        size = layer.spec["kernel"] if kind == "conv2d" else layer.spec.get("size", 2) if kind == "maxpool2d" else 0
        if size > min(layer.input_shape[:2]):
            h, w = layer.input_shape[:2]
            variant.skipped = (f"layer {layer.index} ({kind}): a {size}x{size} window is larger than "
                               f"the {h}x{w} maps it slides over")
            break
    return variant


def automatic_variants(layers: list) -> list[str]:
    """The lesson's grid for an architecture: each conv block removed, all of them removed,
    BatchNorm and dropout removed, half and double the filters, each max-pool removed."""
    blocks = conv_blocks(layers)
    kinds = {s["type"] for s in layers}
    count = max(blocks, default=0)
    names = ["baseline"] + [f"no-conv{k}" for k in range(1, count + 1)]
    if count > 1:
        names.append("no-convs")
    names += [n for n, kind in (("no-batchnorm", "batchnorm"), ("no-dropout", "dropout")) if kind in kinds]
    if count:
        names += ["half-filters", "double-filters"]
    names += [f"no-pool{b}" for s, b in zip(layers, blocks) if s["type"] == "maxpool2d" and b]
    return names


def plan_variants(layers: list, input_shape, names=None) -> list[Variant]:
    """Variants by name (default: the automatic grid), without duplicates; a change that leaves
    the layers as they are (half of one filter is one) is left out of the automatic grid."""
    automatic = not names
    out, seen = [], set()
    for name in names or automatic_variants(layers):
        try:
            v = make_variant(name, layers, input_shape)
        except NoChange:
            if automatic:
                continue
            raise
        key = json.dumps(v.layers, sort_keys=True)
        if name in {x.name for x in out} or (automatic and key in seen):
            continue
        seen.add(key)
        out.append(v)
    return out


# --- one run ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """Everything a run's result depends on except the variant's layers, seed and the data."""
    task: str
    arch: str
    trainer: str
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    jitter_variants: int
    camera_variants: int
    preprocess: tuple  # sorted (key, value) pairs

    def config(self, seed: int) -> TrainConfig:
        return TrainConfig(task=self.task, arch=self.arch, epochs=self.epochs, seed=seed, batch_size=self.batch_size,
                           optimizer=self.optimizer, lr=self.lr, jitter_variants=self.jitter_variants,
                           camera_variants=self.camera_variants, trainer=self.trainer,
                           preprocess=dict(self.preprocess) or None)


def run_key(settings: Settings, layers: list, input_shape, seed: int, data_sha: str) -> str:
    blob = json.dumps({"v": RESULT_VERSION, "settings": asdict(settings), "layers": layers,
                       "input_shape": list(input_shape), "seed": seed, "data": data_sha}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def data_sha256(data: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(data):
        a = np.ascontiguousarray(data[name])
        h.update(f"{name}{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def inference_ms(layers: list, input_shape, weights: dict, labels: list, x1: np.ndarray, repeats: int = 30) -> float:
    """Milliseconds for one picture through the Pi's NumPy runtime (median of ``repeats``)."""
    meta = make_meta(name="ablation", task="ablation", labels=labels, input_shape=input_shape,
                     preprocess=PreprocessSettings(), architecture=layers, provenance={}, weights=weights)
    runtime = make_runtime(Bundle(meta, weights), "numpy")
    for _ in range(3):  # buffers, caches
        runtime.predict(x1)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        runtime.predict(x1)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def train_run(settings: Settings, layers: list, input_shape, labels: list, seed: int, data: dict) -> dict:
    """Train one variant with one seed; the kept epoch is chosen by `cardcam-train train`'s score
    (here on the unrounded figures; train scores its log line, rounded to 5 decimals)."""
    cfg = settings.config(seed)
    rng = np.random.default_rng(seed)
    learner = make_learner(cfg, layers, input_shape, rng)
    best, seconds = None, 0.0
    for epoch, _, epoch_seconds, _, _, record in run_epochs(
            cfg, learner, rng, data["x_train"], data["y_train"], data["x_val"], data["y_val"], data["x_cam"],
            data["y_cam"], int(data["val_cards"])):
        seconds += epoch_seconds
        if best is None or epoch_score(record) > best[0]:
            best = (epoch_score(record), epoch, record, learner.weights())
        if not np.isfinite(record["val_loss"]):
            break  # diverged (a linear network can): later epochs cannot do better
    _, epoch, record, weights = best
    return {
        "seed": seed,
        "best_epoch": epoch,
        "val_accuracy": round(record["val_accuracy"], 5),
        "val_camera_accuracy": round(record["val_camera_accuracy"], 5),
        "train_seconds": round(seconds, 3),
        "parameters": nn.parameter_count(nn.infer_shapes(layers, input_shape)),
        "inference_ms": round(inference_ms(layers, input_shape, weights, labels, as_float(data["x_val"][:1])), 4),
    }


# --- worker processes --------------------------------------------------------------------------

_DATA: dict = {}
SINGLE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                 "NUMEXPR_NUM_THREADS", parallel.ENV)


def _worker_init(data_path: str, trainer: str):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the workers too: the parent alone stops
    with np.load(data_path, allow_pickle=False) as f:
        _DATA.update({k: f[k] for k in f.files})
    if trainer == "keras":
        from training.keras_model import keras

        keras()
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def _worker_run(job):
    key, name, settings, layers, input_shape, labels, seed = job
    try:
        result = train_run(settings, layers, input_shape, labels, seed, _DATA)
    except Exception as e:  # one broken run is reported, the grid goes on
        return {"key": key, "variant": name, "seed": seed, "error": f"{type(e).__name__}: {e}"}
    return {"key": key, "variant": name, **result}


def _pool(jobs: int, data_path: Path, trainer: str):
    """A spawn pool whose workers start with one BLAS thread and one trainer thread
    (training.parallel) each, the runs sharing the cores (the variables are read when NumPy
    loads and on a worker's first convolution, so they are set for the children only and put
    back at once)."""
    from multiprocessing import get_context

    saved = {k: os.environ.get(k) for k in SINGLE_THREAD}
    os.environ.update({k: "1" for k in SINGLE_THREAD})
    try:
        return get_context("spawn").Pool(jobs, initializer=_worker_init, initargs=(str(data_path), trainer))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- the grid --------------------------------------------------------------------------------

def read_results(path: Path) -> list[dict]:
    """The finished runs in a results file; a line cut short by a killed run is ignored."""
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "key" in record and "error" not in record:
                out.append(record)
    return out


def _mean_std(values) -> tuple[float, float]:
    a = np.asarray(values, float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else float("nan")  # one run: no spread measured


def summarise(variants: list[Variant], results: dict, keys: dict) -> list[dict]:
    """One row per variant: means and sample standard deviations over its runs."""
    rows = []
    for v in variants:
        row = {"variant": v.name, "description": v.description, "status": "ok", "runs": 0}
        runs = [results[k] for k in keys.get(v.name, []) if k in results]
        if v.skipped:
            row.update(status="skipped", reason=v.skipped)
        elif not runs:
            row.update(status="not run")
        else:
            row["runs"] = len(runs)
            row["parameters"] = runs[0]["parameters"]
            for field in ("val_accuracy", "val_camera_accuracy", "train_seconds", "inference_ms"):
                row[f"{field}_mean"], row[f"{field}_std"] = _mean_std([r[field] for r in runs])
        rows.append(row)
    return rows


def ablate(task: str = "smiley:300", arch: str = "dwengo", variants=None, runs: int = 3, seed: int = 0,
           epochs: int = 4, trainer: str = "numpy", jobs: int = 1, out="ablation", batch_size: int = 64,
           optimizer: str = "adam", lr: float = 2e-3, jitter: int = 1, camera: int = 1, preprocess=None,
           progress: bool = True, cards: CardSet | None = None, architecture: dict | None = None,
           log=print) -> dict:
    """Train the grid (variants x seeds) that is not in ``out/runs.jsonl`` yet, then write the
    table (CSV, Markdown) and the plot. Returns {"rows", "trained", "reused", "files"}."""
    out = Path(out)
    if runs < 1 or epochs < 1 or jobs < 1:
        raise ValueError("--runs, --epochs and --jobs must be at least 1")
    if architecture is None:
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r} (choose from {', '.join(ARCHS)})")
    if cards is None:
        cards, _ = load_task(task)
    architecture = architecture or ARCHS[arch](len(cards.names))
    input_shape = tuple(architecture["input_shape"])
    preprocess = task_preprocess(task, preprocess)
    settings = Settings(task, arch, trainer, epochs, batch_size, optimizer, lr, jitter, camera,
                        tuple(sorted(preprocess.items())))
    plan = plan_variants(architecture["layers"], input_shape, variants)
    title = f"{arch if arch in ARCHS else 'custom'} on {task}: {runs} run{'s' * (runs > 1)} x {epochs} epochs, {trainer} trainer"
    out.mkdir(parents=True, exist_ok=True)
    if all(v.skipped for v in plan):  # nothing to train: no data to make
        rows = summarise(plan, {}, {})
        return {"rows": rows, "trained": 0, "reused": 0, "errors": [], "files": write_outputs(rows, out, title),
                "title": title}

    # The same inputs for every run: made once here, handed to the workers as a file.
    cfg = settings.config(seed)
    train_idx, val_idx = split(cards, cfg.val_fraction)
    t = time.perf_counter()
    arrays = prepare_inputs(cfg, cards, train_idx, val_idx, PreprocessSettings.from_dict(preprocess), input_shape)
    data = dict(zip(("x_train", "y_train", "x_val", "y_val", "x_cam", "y_cam"), arrays))
    data["val_cards"] = np.array(len(val_idx))
    if not len(data["x_val"]):
        raise ValueError(f"task {task!r}: no validation card had ink found; nothing to judge variants on")
    data_sha = data_sha256(data)
    if progress:
        log(f"data: {len(data['x_train'])} training inputs, {len(val_idx)} validation cards "
            f"({time.perf_counter() - t:.0f} s)")

    results_path = out / RESULTS
    done = {r["key"]: r for r in read_results(results_path)}
    keys, todo = {}, []
    for v in plan:
        if v.skipped:
            continue
        for s in range(seed, seed + runs):
            key = run_key(settings, v.layers, input_shape, s, data_sha)
            keys.setdefault(v.name, []).append(key)
            if key not in done:
                todo.append((key, v.name, settings, v.layers, input_shape, list(cards.names), s))
    reused = sum(len(k) for k in keys.values()) - len(todo)
    stale = len(done) - sum(1 for ks in keys.values() for k in ks if k in done)
    if progress and (reused or stale):
        log(f"{results_path}: {reused} finished runs reused" +
            (f"; {stale} from other settings or variants left out" if stale else ""))

    errors = []
    if todo:
        bar = progress_bar(len(todo), "ablate", "run", disable=not progress, every=0)
        with open(results_path, "a") as results_file:
            if results_file.tell() and not results_path.read_bytes().endswith(b"\n"):
                results_file.write("\n")  # a line cut short by a killed run stays a line of its own
            def finished(record):
                if "error" in record:
                    errors.append(record)
                else:
                    results_file.write(json.dumps(record) + "\n")
                    results_file.flush()
                    done[record["key"]] = record
                bar.set_postfix_str(f"{record['variant']} seed {record['seed']}", refresh=False)
                bar.update()

            if jobs > 1 and len(todo) > 1:
                data_path = out / f".inputs-{data_sha[:12]}.npz"
                np.savez(data_path, **data)
                pool = _pool(min(jobs, len(todo)), data_path, trainer)
                try:
                    for record in pool.imap_unordered(_worker_run, todo):
                        finished(record)
                    pool.close()
                except BaseException:  # Ctrl-C included: the finished runs are already written
                    pool.terminate()
                    raise
                finally:
                    pool.join()  # workers gone before the parent exits: nothing leaked
                    data_path.unlink(missing_ok=True)
            else:
                _DATA.clear()
                _DATA.update(data)
                for job in todo:
                    finished(_worker_run(job))
        bar.close()
    for e in errors:
        log(f"run failed: {e['variant']} seed {e['seed']}: {e['error']}")

    rows = summarise(plan, done, keys)
    files = write_outputs(rows, out, title)
    return {"rows": rows, "trained": len(todo) - len(errors), "reused": reused, "errors": errors,
            "files": files, "title": title}


# --- outputs ---------------------------------------------------------------------------------

COLUMNS = ("variant", "description", "status", "reason", "parameters", "runs", "val_accuracy_mean",
           "val_accuracy_std", "val_camera_accuracy_mean", "val_camera_accuracy_std", "train_seconds_mean",
           "train_seconds_std", "inference_ms_mean", "inference_ms_std")


def _cells(row: dict) -> list[str]:
    """variant, params, val accuracy, camera accuracy, train s, infer ms, runs (as text)."""
    if row["status"] != "ok":
        return [row["variant"], "", row["status"] + (f": {row['reason']}" if row.get("reason") else ""), "", "", "", ""]
    def spread(field, form):  # one run measures no spread: none is shown
        mean, std = format(row[f"{field}_mean"], form), format(row[f"{field}_std"], form)
        return f"{mean} \u00b1 {std}" if row["runs"] > 1 else mean

    return [row["variant"], f"{row['parameters']:,}", spread("val_accuracy", ".2%"),
            spread("val_camera_accuracy", ".2%"), spread("train_seconds", ".1f"),
            f"{row['inference_ms_mean']:.2f}", str(row["runs"])]


HEADERS = ["variant", "weights", "val accuracy", "camera accuracy", "train s", "infer ms", "runs"]


def format_table(rows: list[dict]) -> str:
    """The terminal table (a skipped variant's reason runs across the columns)."""
    cells = [_cells(r) for r in rows]
    width = [max([len(h)] + [len(c[i]) for c, r in zip(cells, rows) if r["status"] == "ok" or i == 0])
             for i, h in enumerate(HEADERS)]
    right = (False, True, True, True, True, True, True)

    def line(values):
        return "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, width, right)).rstrip()

    lines = [line(HEADERS), line(["-" * w for w in width])]
    for c, r in zip(cells, rows):
        lines.append(line(c) if r["status"] == "ok" else f"{c[0].ljust(width[0])}  {c[2]}")
    return "\n".join(lines)


def format_markdown(rows: list[dict], title: str) -> str:
    lines = [f"# Ablation: {title}", "", "| " + " | ".join(HEADERS + ["change"]) + " |",
             "|" + "---|" + "---:|" * (len(HEADERS) - 1) + "---|"]
    for r in rows:
        c = _cells(r)
        if r["status"] != "ok":
            c = [c[0], "", c[2].replace("|", "\\|"), "", "", "", ""]
        lines.append("| " + " | ".join(c + [r["description"]]) + " |")
    lines += ["", "Accuracy: validation cards (clean / one simulated camera frame each), at the best epoch; "
              "mean \u00b1 sample standard deviation over the runs (seeds). Train s: seconds in the epochs' "
              "training passes. Infer ms: one picture through the Pi's NumPy runtime, median of 30.", ""]
    return "\n".join(lines)


def write_outputs(rows: list[dict], out: Path, title: str) -> dict:
    files = {"csv": out / "ablation.csv", "markdown": out / "ablation.md", "plot": out / "ablation.png"}
    with open(files["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v != v else round(v, 6)) if isinstance(v, float) else v for k, v in r.items()})
    files["markdown"].write_text(format_markdown(rows, title))
    plot(rows, files["plot"], title)
    return files


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Validation accuracy against training seconds, error bars one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    for r in ok:
        base = r["variant"] == "baseline"
        spread = r["runs"] > 1  # one run: a point, no bars
        ax.errorbar(r["train_seconds_mean"], r["val_accuracy_mean"] * 100, xerr=r["train_seconds_std"] if spread else None,
                    yerr=r["val_accuracy_std"] * 100 if spread else None, fmt="o", capsize=3, ms=8 if base else 6,
                    color="tab:red" if base else "tab:blue", ecolor="0.45", zorder=3 if base else 2)
    ax.margins(0.15)
    if not ok:
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("training seconds (mean \u00b1 std over runs)")
    ax.set_ylabel("validation accuracy, % (mean \u00b1 std)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.canvas.draw()  # the axes' final limits and place, so label boxes are where they will be drawn
    _label_points(fig, ax, [(r["variant"], r["train_seconds_mean"], r["val_accuracy_mean"] * 100) for r in ok])
    fig.savefig(path)
    plt.close(fig)


# Where a point's label may go, in points from it: beside it first, then further out.
_LABEL_OFFSETS = [(6, 5), (6, -12), (-6, 5), (-6, -12), (6, 16), (-6, 16), (6, -23), (-6, -23), (6, 27), (-6, 27),
                  (6, -34), (-6, -34), (30, 0), (-30, 0)]


def _label_points(fig, ax, points) -> None:
    """Name every point, each label where it overlaps no label or point placed before it; a
    label set further out gets a thin line to its point."""
    import matplotlib.transforms

    renderer = fig.canvas.get_renderer()
    placed = []
    for _, x, y in points:  # the points themselves (8 pt markers) are taken
        px, py = ax.transData.transform((x, y))
        placed.append(matplotlib.transforms.Bbox.from_extents(px - 5, py - 5, px + 5, py + 5))
    for name, x, y in points:
        bold = name == "baseline"
        for dx, dy in _LABEL_OFFSETS:
            far = abs(dy) > 12 or abs(dx) > 6
            label = ax.annotate(name, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=8,
                                ha="left" if dx > 0 else "right", va="bottom", fontweight="bold" if bold else "normal",
                                arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6} if far else None)
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            if (dx, dy) != _LABEL_OFFSETS[-1]:
                label.remove()
        placed.append(box)
