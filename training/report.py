"""Training reports: what a trained model learned, as pictures, and one HTML page of them.

``cardcam-train train`` writes, next to ``NAME.npz``, a folder ``NAME.report/``:

    curves.png          loss and accuracy per epoch, training and validation (NAME.train.jsonl)
    confusion.png       true vs predicted class on the validation cards, clean and camera frames
    filters.png         the first layer's weights (conv kernels, or a dense layer's input weights)
    feature_maps.png    one validation picture per class and what each conv block makes of it
    misclassified.png   every validation picture the model gets wrong (a contact sheet)
    meta.json           the bundle's metadata and the validation figures behind the pictures

``cardcam-train report NAME.npz`` renders them into ``NAME.report/report.html``, one
self-contained page (pictures inline as data: URIs), redrawing any that are missing from the
bundle, its training log and its task's data. Validation pictures are made as in training: the
fixed split, clean cards and one simulated camera frame each (seed 999), through the bundle's own
preprocessing and the Pi's NumPy runtime.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from pathlib import Path

import numpy as np

from device import nn
from device.bundle import Bundle, load_bundle
from device.runtime import make_runtime
from training.data import CardSet, DataError, load_folder, split
from training.tasks import load_task
from training.evaluation import judge_cards
from training.trainer import confusion_matrix, epoch_log

PICTURES = {
    "curves": ("curves.png", "Loss and accuracy per epoch"),
    "confusion": ("confusion.png", "Confusion matrices on the validation split"),
    "filters": ("filters.png", "First-layer weights"),
    "feature_maps": ("feature_maps.png", "Feature maps of one validation picture per class"),
    "misclassified": ("misclassified.png", "Validation pictures the model gets wrong"),
}
META = "meta.json"
HTML = "report.html"
MAX_MISTAKES = 48


def report_dir(model) -> Path:
    model = Path(model)
    return model.with_name(model.stem + ".report")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_log(model) -> list[dict]:
    """The trainer's epoch log (NAME.train.jsonl), or [] when there is none."""
    path = epoch_log(model)
    if not path.exists():
        return []
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise DataError(f"{path}: line {n} is not JSON") from None
    return records


# --- validation pictures -----------------------------------------------------------------------

class Validation:
    """The bundle's validation split as model inputs and its predictions on them."""

    def __init__(self, bundle: Bundle, cards: CardSet):
        fraction = (bundle.meta.get("provenance", {}).get("config") or {}).get("val_fraction", 0.15)
        _, val_idx = split(cards, fraction)
        runtime = make_runtime(bundle, "numpy")
        self.sets = {}
        for kind in ("clean", "camera"):  # as `cardcam-train evaluate` judges them
            judged = judge_cards(bundle, runtime, cards, val_idx, kind)
            self.sets[kind] = {"x": judged.inputs, "y": judged.y, "pred": judged.pred, "confidence": judged.confidence}

    def confusion(self, kind: str, classes: int) -> np.ndarray:
        return confusion_matrix(self.sets[kind]["y"], self.sets[kind]["pred"], classes)

    def accuracy(self, kind: str) -> float:
        s = self.sets[kind]
        return float((s["pred"] == s["y"]).mean()) if len(s["y"]) else float("nan")


# --- pictures --------------------------------------------------------------------------------

def plot_curves(log: list[dict], path: Path, best_epoch=None) -> None:
    plt = _plt()
    epochs = [r["epoch"] for r in log]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    ax1.plot(epochs, [r["train_loss"] for r in log], "o-", label="training")
    ax1.plot(epochs, [r["val_loss"] for r in log], "s-", label="validation")
    ax1.set_title("loss (cross-entropy)")
    ax2.plot(epochs, [100 * r["train_accuracy"] for r in log], "o-", label="training")
    ax2.plot(epochs, [100 * r["val_accuracy"] for r in log], "s-", label="validation")
    if all("val_camera_accuracy" in r for r in log):
        ax2.plot(epochs, [100 * r["val_camera_accuracy"] for r in log], "^--", label="validation, camera")
    ax2.set_title("accuracy, %")
    for ax in (ax1, ax2):
        if best_epoch:
            ax.axvline(best_epoch, color="0.6", ls=":", label=f"kept (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confusion(val: Validation, labels: list, path: Path) -> None:
    plt = _plt()
    n = len(labels)
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.1 * n, 2.4 + 0.45 * n), dpi=100)
    for ax, kind in zip(axes, ("clean", "camera")):
        m = val.confusion(kind, n)
        rates = m / np.maximum(1, m.sum(axis=1, keepdims=True))
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for i in range(n):
            for j in range(n + 1):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if rates[i, j] > 0.6 else "black")
        ax.set_xticks(range(n + 1), labels + ["no ink"], rotation=45 if n > 4 else 0, fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{kind} ({val.accuracy(kind):.1%} right)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _first_weights(bundle: Bundle):
    """(images (n, h, w), title) from the first conv layer's kernels, or else the first dense
    layer's weights reshaped to the input picture (what each unit looks for)."""
    for layer in nn.infer_shapes(bundle.architecture, bundle.input_shape):
        kind = layer.spec["type"]
        kernel = bundle.weights.get(f"L{layer.index}.kernel")
        if kind == "conv2d":
            k = kernel.mean(axis=2)  # (k, k, filters): the input's channels averaged (one for grey)
            return np.moveaxis(k, -1, 0), f"layer {layer.index}: {k.shape[-1]} conv kernels, {k.shape[0]}x{k.shape[1]}"
        if kind == "dense":
            h, w, c = bundle.input_shape
            if layer.input_shape[0] != h * w * c:
                break
            units = min(kernel.shape[1], 32)
            images = kernel[:, :units].T.reshape(units, h, w, c).mean(axis=-1)
            return images, f"layer {layer.index}: input weights of the first {units} dense units"
    return None, "no conv or dense layer on the input"


def _grid(count: int) -> tuple[int, int]:
    cols = min(count, 8)
    return -(-count // cols), cols


def _message(path: Path, text: str, width: float = 4) -> None:
    """A picture that only says why there is nothing to draw."""
    plt = _plt()
    fig = plt.figure(figsize=(width, 1.5), dpi=100)
    fig.text(0.5, 0.5, text, ha="center", va="center")
    fig.savefig(path)
    plt.close(fig)


def plot_filters(bundle: Bundle, path: Path) -> None:
    images, title = _first_weights(bundle)
    if images is None:
        _message(path, title)
        return
    plt = _plt()
    rows, cols = _grid(len(images))
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols + 0.8, 1.3 * rows + 0.6), dpi=100, squeeze=False)
    lim = float(np.abs(images).max()) or 1.0
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, im) in enumerate(zip(axes.flat, images)):
        shown = ax.imshow(im, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_title(str(i + 1), fontsize=8)
    fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.8)
    fig.suptitle(title + " (red positive, blue negative)", fontsize=9)
    fig.savefig(path)
    plt.close(fig)


def bundle_network(bundle: Bundle):
    """A training.nets Network with the bundle's weights."""
    from training.nets import Network

    net = Network(bundle.architecture, bundle.input_shape, np.random.default_rng(0))
    net.set_weights(bundle.weights)
    return net


def block_outputs(bundle: Bundle, x: np.ndarray, net=None) -> list[tuple[str, np.ndarray]]:
    """(name, activations (h, w, c)) after each conv block (the layer before the next conv or the
    flatten) for one input, with the bundle's weights in training.nets' inference forward pass
    (``net``: bundle_network(bundle), when it is at hand)."""
    from training.nets import conv_blocks

    net = net or bundle_network(bundle)
    out, a = [], x[None]
    blocks = conv_blocks(bundle.architecture)
    for block, after, layer in zip(blocks, blocks[1:] + [0], net.layers):
        a = layer.forward(a, training=False)
        if block and after != block:  # the block's last layer
            out.append((f"conv block {block}", a[0]))
    return out


def _mosaic(maps: np.ndarray, limit: int = 16) -> np.ndarray:
    """Channels (h, w, c) side by side in a near-square grid, each scaled to 0..1, 1-pixel gaps."""
    h, w, c = maps.shape
    c = min(c, limit)
    cols = int(np.ceil(np.sqrt(c)))
    rows = -(-c // cols)
    sheet = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan, np.float32)
    for k in range(c):
        m = maps[:, :, k]
        span = float(m.max() - m.min())
        m = (m - m.min()) / span if span > 0 else np.zeros_like(m)
        r, q = divmod(k, cols)
        sheet[r * (h + 1):r * (h + 1) + h, q * (w + 1):q * (w + 1) + w] = m
    return sheet


def plot_feature_maps(bundle: Bundle, val: Validation, path: Path) -> None:
    s = val.sets["clean"]
    examples = []
    for c, label in enumerate(bundle.labels):
        idx = np.flatnonzero((s["y"] == c) & (s["pred"] >= 0))
        if len(idx):
            examples.append((label, int(idx[0])))
    if not examples:
        _message(path, "no validation picture with ink found")
        return
    plt = _plt()
    net = bundle_network(bundle)
    blocks = [block_outputs(bundle, s["x"][i], net) for _, i in examples]
    cols = 1 + len(blocks[0])
    fig, axes = plt.subplots(len(examples), cols, figsize=(2.1 * cols, 2.6 * len(examples) + 0.3), dpi=100, squeeze=False)
    cmap = plt.get_cmap("magma").with_extremes(bad="white")  # the gaps between channels
    for r, ((label, i), outputs) in enumerate(zip(examples, blocks)):
        pred = bundle.labels[s["pred"][i]]
        axes[r, 0].imshow(s["x"][i][:, :, 0], cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title(f"{label} (model: {pred})", fontsize=9)
        for q, (name, maps) in enumerate(outputs, 1):
            axes[r, q].imshow(_mosaic(maps), cmap=cmap, interpolation="nearest")
            axes[r, q].set_title(f"{name}: {maps.shape[2]}x{maps.shape[0]}x{maps.shape[1]}", fontsize=8)
        for ax in axes[r]:
            ax.axis("off")
    fig.suptitle("input, then each conv block's output channels (each scaled to its own range)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_misclassified(bundle: Bundle, val: Validation, path: Path) -> None:
    wrong = [(kind, i) for kind in ("clean", "camera") for i in np.flatnonzero(val.sets[kind]["pred"] != val.sets[kind]["y"])]
    total = sum(len(s["y"]) for s in val.sets.values())
    if not wrong:
        _message(path, f"no mistakes: all {total} validation pictures right", width=5)
        return
    plt = _plt()
    shown = wrong[:MAX_MISTAKES]
    rows, cols = _grid(len(shown))
    # Wide enough for the title, on two lines, whatever the number of pictures (one was cut to "ctures wrong").
    fig, axes = plt.subplots(rows, cols, figsize=(max(1.45 * cols, 4.0), 1.7 * rows + 0.7), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (kind, i) in zip(axes.flat, shown):
        s = val.sets[kind]
        true = bundle.labels[s["y"][i]]
        if s["pred"][i] < 0:
            ax.text(0.5, 0.5, "no ink\nfound", ha="center", va="center", fontsize=8, transform=ax.transAxes)
            caption = f"{true} \u2192 none"
        else:
            ax.imshow(s["x"][i][:, :, 0], cmap="gray", vmin=0, vmax=1)
            caption = f"{true} \u2192 {bundle.labels[s['pred'][i]]} {s['confidence'][i]:.0%}"
        ax.set_title(caption + ("\n(camera)" if kind == "camera" else "\n(clean)"), fontsize=7)
    more = f", first {MAX_MISTAKES} shown" if len(wrong) > MAX_MISTAKES else ""
    fig.suptitle(f"{len(wrong)} of {total} validation pictures wrong{more}\n(true \u2192 predicted, confidence)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- the report folder -----------------------------------------------------------------------

def load_cards(bundle: Bundle, data: str | None = None) -> tuple[CardSet, str]:
    """The cards to judge on: ``data`` (a task or a folder) or the task the bundle was trained on."""
    source = data or bundle.meta.get("task")
    if not source:
        raise DataError(f"{bundle.path or bundle.name}: no task recorded to take validation cards from (use --data)")
    if Path(source).is_dir():
        return load_folder(source), f"the images in {source}"
    try:
        cards, _ = load_task(source)
    except DataError as e:
        if data is None and source.startswith("folder:"):  # the pictures it was trained on have moved
            raise DataError(f"{e}; if the pictures moved, name where they are now: cardcam-train report "
                            f"{bundle.path or bundle.name} --data DIR") from None
        raise
    return cards, f"task {source}"


def write_report(model, cards: CardSet | None = None, data: str | None = None, only_missing: bool = False,
                 bundle: Bundle | None = None) -> dict:
    """Draw the report pictures and meta.json into NAME.report/; with ``only_missing`` only those
    not there yet (the cards are then loaded only if a picture needs them). ``bundle``: the model
    file's bundle, when it is at hand. Returns name -> path."""
    model = Path(model)
    bundle = bundle or load_bundle(model)
    folder = report_dir(model)
    paths = {name: folder / file for name, (file, _) in PICTURES.items()}
    paths["meta"] = folder / META
    todo = {n for n, p in paths.items() if not (only_missing and p.exists())}
    description = "the training data"
    if cards is None and todo & {"confusion", "feature_maps", "misclassified", "meta"}:
        cards, description = load_cards(bundle, data)  # first: cards that cannot be found leave no half report
    folder.mkdir(parents=True, exist_ok=True)
    log = read_log(model)
    best = bundle.meta.get("provenance", {}).get("best_epoch")
    if "curves" in todo:
        if log:
            plot_curves(log, paths["curves"], best)
        else:
            paths.pop("curves")
    if "filters" in todo:
        plot_filters(bundle, paths["filters"])
    if todo & {"confusion", "feature_maps", "misclassified", "meta"}:
        val = Validation(bundle, cards)
        if "confusion" in todo:
            plot_confusion(val, bundle.labels, paths["confusion"])
        if "feature_maps" in todo:
            plot_feature_maps(bundle, val, paths["feature_maps"])
        if "misclassified" in todo:
            plot_misclassified(bundle, val, paths["misclassified"])
        if "meta" in todo:
            summary = {kind: {"pictures": len(s["y"]), "accuracy": round(val.accuracy(kind), 5),
                              "no_ink": int((s["pred"] < 0).sum()),
                              "confusion": val.confusion(kind, len(bundle.labels)).tolist()}
                       for kind, s in val.sets.items()}
            record = {"model": str(model), "report_date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
                      "validation_data": description, "validation": summary, "epochs": log, "meta": bundle.meta}
            paths["meta"].write_text(json.dumps(record, indent=1) + "\n")
    return paths


# --- one HTML page ---------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left} figure{margin:1em 0} img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em} code,pre{background:#f6f6f6;padding:.1em .3em;font-size:.85em}
pre{padding:.6em;overflow-x:auto;max-height:30em} .muted{color:#777}
"""


def _table(headers, rows, left=1) -> str:
    head = "".join(f'<th class="l">{html.escape(h)}</th>' if i < left else f"<th>{html.escape(h)}</th>"
                   for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="l">{html.escape(str(c))}</td>' if i < left else
                                    f"<td>{html.escape(str(c))}</td>" for i, c in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table>{f'<tr>{head}</tr>' if any(headers) else ''}{body}</table>"


def _percent(v) -> str:
    return f"{v:.2%}" if isinstance(v, (int, float)) else "-"


def render_html(model, data: str | None = None, out=None) -> Path:
    """NAME.report/report.html from the report folder, drawing what is missing first."""
    model = Path(model)
    bundle = load_bundle(model)
    paths = write_report(model, data=data, only_missing=data is None, bundle=bundle)  # other data: every picture anew
    try:
        record = json.loads(paths["meta"].read_text())
    except json.JSONDecodeError:
        record = {}
    if record.get("meta", {}).get("weights_sha256") != bundle.meta["weights_sha256"]:
        # Pictures of other weights (the model was retrained in place): draw them all again.
        paths = write_report(model, data=data, bundle=bundle)
        record = json.loads(paths["meta"].read_text())
    p = bundle.meta.get("provenance", {})
    val = record.get("validation", {})
    parts = [f"<h1>{html.escape(bundle.name)}</h1>",
             f'<p class="muted">{html.escape(str(model))} &middot; task {html.escape(str(bundle.meta.get("task")))} '
             f'&middot; labels {html.escape(", ".join(bundle.labels))} &middot; trained {html.escape(str(p.get("date", "?")))}</p>']
    summary = [("architecture", bundle.meta.get("arch", "custom")), ("trainer", p.get("trainer", "?")),
               ("seed", p.get("seed", "?")), ("epochs run / kept", f"{p.get('epochs_run', '?')} / {p.get('best_epoch', '?')}"),
               ("validation accuracy, clean (training)", _percent(p.get("val_accuracy"))),
               ("validation accuracy, camera (training)", _percent(p.get("val_camera_accuracy")))]
    for kind in ("clean", "camera"):
        if kind in val:
            summary.append((f"validation accuracy, {kind} (this report, NumPy runtime)",
                            f"{_percent(val[kind]['accuracy'])} of {val[kind]['pictures']}"))
    if record.get("validation_data"):
        summary.append(("this report's validation split of", record["validation_data"]))
    summary.append(("training data", p.get("data", "?")))
    parts.append("<h2>Summary</h2>" + _table(["", ""], summary, left=2))
    parts.append(f"<p>Command: <code>{html.escape(str(p.get('command', '?')))}</code></p>")

    layers = nn.infer_shapes(bundle.architecture, bundle.input_shape)
    rows = [(l.index, l.spec["type"], ", ".join(f"{k}={v}" for k, v in l.spec.items() if k != "type"),
             "x".join(map(str, l.output_shape)), f"{nn.parameter_count([l]):,}") for l in layers]
    total = nn.parameter_count(layers)
    parts.append(f"<h2>Network ({total:,} weights, input {'x'.join(map(str, bundle.input_shape))})</h2>"
                 + _table(["layer", "type", "settings", "output", "weights"], rows, left=3))

    parts.append("<h2>Pictures</h2>")
    for name, (file, caption) in PICTURES.items():
        path = paths.get(name)
        if path is None or not path.exists():
            parts.append(f'<p class="muted">{html.escape(caption)}: not available (no training log '
                         f'{html.escape(str(epoch_log(model)))})</p>')
            continue
        data_uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(f'<figure><img src="{data_uri}" alt="{html.escape(caption)}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    log = record.get("epochs") or []
    if log:
        keys = [k for k in ("epoch", "lr", "seconds", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                            "val_camera_accuracy") if k in log[0]]
        parts.append("<h2>Epochs</h2>" + _table(keys, [[r.get(k, "") for k in keys] for r in log], left=0))
    parts.append("<h2>Metadata</h2><details><summary>meta.json</summary><pre>"
                 + html.escape(json.dumps(record.get("meta", bundle.meta), indent=1)) + "</pre></details>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(bundle.name)}: training report</title>"
            "<link rel=\"icon\" href=\"data:,\">"  # no request for /favicon.ico
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    out = Path(out) if out else report_dir(model) / HTML
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
