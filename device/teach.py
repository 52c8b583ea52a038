"""Teaching on the device: a new output layer for a model, learnt from a folder of examples.

``EXAMPLES/<label>/*.png|jpg`` holds camera pictures of cards, one folder per label. The base
model's convolutional layers (up to its flatten, kept_layers) are kept, frozen, as a feature
extractor; each example goes through the bundle's own preprocessing and that network; a new dense
+ softmax layer for the folder's labels is fitted to the features. The result is a normal bundle:
same format, same preprocessing, the base's layers and weights, a new last layer, and provenance
saying how it was made. Every picture the camera will show it goes through exactly the path its
examples did.

The output layer is softmax regression on standardised features of each example and its copies
turned a little, scaled a little, moved by a pixel and drawn with thicker strokes (variants), fitted by accelerated full-batch
gradient descent from the class means (bench/teach.py measures it against a closed-form ridge fit,
class means with a learnt scale, and the fit on the last hidden layer shipped before). Reading and preprocessing the pictures and the frozen network's
forward pass take most of a teach; the fit, tens of milliseconds.
"""

from __future__ import annotations

import datetime
import math
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from device import nn
from device.bundle import Bundle, BundleError, make_meta, sha256
from device.files import check_regular
from device.preprocess import ImageError, load_image, preprocess
from device.runtime import last_hidden_layer

EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg")
LABEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]{0,39}")  # a folder name, a log word, a web label
MIN_EXAMPLES = 2          # per label
MAX_EXAMPLES = 2000       # in all: a teach stays interactive on a Pi and fits its memory
MAX_EXAMPLE_BYTES = 32 << 20
# The fit: softmax regression, L2 on the weights, STEPS full-batch gradient steps with Nesterov's
# momentum (100 reach a lower loss than 300 plain steps: bench/teach.py).
STEPS = 100
L2 = 1e-2


class TeachError(ValueError):
    """Examples or a base model that cannot be taught from; the message names the file or folder."""


@dataclass
class Examples:
    """The network inputs made from an examples folder, and what provenance says of them."""
    labels: list[str]
    inputs: np.ndarray        # (N, H, W, C) float32
    targets: np.ndarray       # (N,) index into labels
    counts: dict              # label -> examples
    sha256: str               # of the labels, file names and file bytes, in order
    root: Path | None = None  # the folder they came from


def check_label(label: str, where) -> None:
    """A label is a plain word: it names a folder, a log line and a web page button."""
    if not isinstance(label, str) or not LABEL_PATTERN.fullmatch(label):
        raise TeachError(f"{where}: label {label!r} must be 1 to 40 letters, digits, '-', '_' or '+' "
                         "(starting with a letter or digit)")


def label_folders(root) -> list[Path]:
    """The label folders of ``root`` (hidden ones left out), sorted, their names checked."""
    root = Path(root)
    if not root.is_dir():
        raise TeachError(f"{root}: not a folder of examples (expected {root}/<label>/*.png)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in folders:
        check_label(folder.name, folder)
    if len(folders) < 2:
        raise TeachError(f"{root}: needs at least 2 label folders ({root}/<label>/*.png), found {len(folders)}")
    return folders


def example_files(folder: Path) -> list[Path]:
    """A label folder's pictures, sorted (none if there is no folder). Sub-folders (``seen/``)
    and hidden files (a picture being written) are left out; any other file is refused, so
    nothing is silently ignored."""
    if not folder.is_dir():
        return []
    files = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        if p.suffix.lower() not in EXAMPLE_SUFFIXES:
            raise TeachError(f"{p}: unknown file type {p.suffix or '(none)'!r}; examples are "
                             f"{', '.join(EXAMPLE_SUFFIXES)} pictures")
        files.append(p)
    return files


def _check_counts(root, files: dict) -> None:
    """Every label needs MIN_EXAMPLES; one line names each label short of them."""
    short = {folder: len(found) for folder, found in files.items() if len(found) < MIN_EXAMPLES}
    if not short:
        return
    words = [f"'{folder.name}' {count}" for folder, count in short.items()]
    if len(short) == 1:
        folder, count = next(iter(short.items()))
        raise TeachError(f"{folder}: label '{folder.name}' has {count} example{'' if count == 1 else 's'}; "
                         f"each label needs at least {MIN_EXAMPLES}")
    raise TeachError(f"{root}: labels with too few examples: {', '.join(words)}; each label needs at least "
                     f"{MIN_EXAMPLES}")


def read_examples(root, base: Bundle, labels=None) -> Examples:
    """Every example through the base's preprocessing. A picture that cannot be read, or in
    which preprocessing finds no card or no ink, is refused by name: a model taught on blanks
    learns that blanks are a label. ``labels``: only these label folders, in this order (the
    appliance's configured labels); by default every label folder, sorted."""
    if labels is None:
        folders = label_folders(root)
    else:
        for label in labels:
            check_label(label, root)
        folders = [Path(root) / label for label in labels]
    settings, shape = base.preprocess, base.input_shape
    digest = sha256()
    inputs, targets, counts = [], [], {}
    files = {folder: example_files(folder) for folder in folders}
    _check_counts(root, files)
    if sum(map(len, files.values())) > MAX_EXAMPLES:
        raise TeachError(f"{root}: more than {MAX_EXAMPLES} examples; teach from fewer "
                         "(or train on a laptop: cardcam-train train --task folder:DIR)")
    for index, folder in enumerate(folders):
        counts[folder.name] = len(files[folder])
        for path in files[folder]:
            try:
                check_regular(path, MAX_EXAMPLE_BYTES)
                data = path.read_bytes()
                picture = load_image(path)
            except (OSError, ValueError) as e:  # ImageError is a ValueError
                text = str(e) if isinstance(e, ImageError) else f"{path}: {getattr(e, 'strerror', None) or e}"
                raise TeachError(text) from None
            prepared = preprocess(picture, settings, shape)
            if not prepared.found:
                raise TeachError(f"{path}: no card to learn from ({prepared.reason}); remove the picture "
                                 "or take it again")
            digest.update(f"{folder.name}/{path.name}:{len(data)};".encode())
            digest.update(data)
            inputs.append(prepared.input)
            targets.append(index)
    return Examples([f.name for f in folders], np.stack(inputs).astype(np.float32), np.array(targets),
                    counts, digest.hexdigest(), Path(root).resolve())


# --- the frozen network ----------------------------------------------------------------------

MAX_FEATURES = 1024  # a flatten wider than this is max-pooled (2 x 2) first: the fit's cost grows with it


def kept_layers(base: Bundle, where="base model") -> list:
    """Which of the base's layers a taught model keeps, in order, and the max-pools it adds after
    them: (architecture, old index of each kept layer or None for an added pool).

    The taught network reads the base's convolutional part: its layers up to the flatten before
    the first dense layer. A 2-class base's dense layers keep little about strokes its two labels
    never needed; its convolutions see every stroke (bench/teach.py: 96.6 % instead of 95.4 % on
    further pictures of a taught card, 78 % instead of 74 % of other cards). The ReLU before the
    last max-pool is left out (max-pool commutes with it): the new layer reads the values before
    it, what the ReLU zeroes was no use to the base's labels but may tell new ones apart. A
    flatten wider than MAX_FEATURES is max-pooled to at most that first. A base with no layer with
    weights before its flatten (or no flatten) keeps its layers up to its last hidden dense layer,
    before that layer's ReLU. There must be some layer with weights to keep."""
    layers = nn.infer_shapes(base.architecture, base.input_shape)
    kinds = [l.spec["type"] for l in layers]
    dense = [i for i, kind in enumerate(kinds) if kind == "dense"]
    if not dense:
        raise TeachError(f"{where}: has no dense output layer to replace")
    flat = [i for i in range(dense[0]) if kinds[i] == "flatten"]
    if flat and any(l.weights for l in layers[:flat[-1]]):
        cut = flat[-1]      # the flatten itself goes after the added pools
    else:
        cut = dense[-1]
        if not any(l.weights for l in layers[:cut]):
            raise TeachError(f"{where}: has no hidden layer to keep (its only layer with weights is the output "
                             "layer); teach from a model with conv or dense layers before its last one")
    kept = list(range(cut))
    i = cut - 1
    while i >= 0 and kinds[i] in ("maxpool2d", "dropout"):
        i -= 1
    if i >= 0 and kinds[i] == "relu":
        kept.remove(i)
    architecture = [dict(layers[i].spec) for i in kept]
    origin = list(kept)
    if kinds[cut] == "flatten":
        h, w, c = layers[cut].input_shape
        while h * w * c > MAX_FEATURES and h >= 2 and w >= 2:
            architecture.append({"type": "maxpool2d", "size": 2})
            origin.append(None)
            h, w = h // 2, w // 2
        architecture.append({"type": "flatten"})
        origin.append(cut)
    return architecture, origin


def _network(base: Bundle, labels, kernel=None, bias=None, *, where="base model", provenance=None,
             name=None, task="taught") -> Bundle:
    """The taught bundle: the base's kept layers (kept_layers) with their weights, renumbered,
    then a dense layer (``kernel``, ``bias``; zeros if not given) and softmax."""
    kept, origin = kept_layers(base, where)
    architecture = kept + [{"type": "dense", "units": len(labels)}, {"type": "softmax"}]
    layers = nn.infer_shapes(architecture, base.input_shape)
    weights = {}
    for new, old in enumerate(origin):
        for key in layers[new].weights:
            weights[f"L{new}.{key}"] = base.weights[f"L{old}.{key}"]
    out = layers[len(kept)]
    weights[f"L{out.index}.kernel"] = np.zeros(out.weights["kernel"], np.float32) if kernel is None else kernel
    weights[f"L{out.index}.bias"] = np.zeros(out.weights["bias"], np.float32) if bias is None else bias
    meta = make_meta(name=name or f"{base.name[:200]}-taught", task=task, labels=labels,
                     input_shape=base.input_shape, preprocess=base.meta["preprocess"],
                     architecture=architecture, provenance=provenance or {}, weights=weights)
    return Bundle(meta, weights)


def features(base: Bundle, inputs: np.ndarray) -> np.ndarray:
    """(N, H, W, C) inputs -> (N, D): what the taught model's new output layer reads (the
    base's kept layers, kept_layers), in inference mode (device.runtime's NumPy forward pass,
    stopped before the output layer)."""
    return last_hidden_layer(_network(base, ["a", "b"], where=str(base.path or "base model")))(inputs)


# --- the examples seen a little otherwise ----------------------------------------------------

SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))
# (degrees, scale) about the centre. Turns of 12 degrees and scales of 1.15 / 0.87 beat 8 and 1.1 / 0.9
# by 0.1-0.4 points on a taught card and 0.6-0.9 on other cards (bench/teach.py).
TURNS = ((12.0, 1.0), (-12.0, 1.0), (0.0, 1.15), (0.0, 0.87))


def warped(inputs: np.ndarray, degrees: float, scale: float) -> np.ndarray:
    """Each input turned by ``degrees`` and scaled by ``scale`` about its centre (bilinear; what
    comes in from outside is background, 0)."""
    n, h, w, c = inputs.shape
    turn = math.radians(degrees)
    cos, sin = math.cos(turn) / scale, math.sin(turn) / scale
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    dy, dx = y - (h - 1) / 2, x - (w - 1) / 2
    sy, sx = -sin * dx + cos * dy + (h - 1) / 2, cos * dx + sin * dy + (w - 1) / 2
    margin = 2 + int(max(h, w) * abs(1 - 1 / scale) + max(h, w) * abs(math.sin(turn)))
    sy, sx = np.clip(sy, -margin, h + margin - 2), np.clip(sx, -margin, w + margin - 2)
    y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
    fy, fx = (sy - y0)[None, :, :, None], (sx - x0)[None, :, :, None]
    padded = np.pad(inputs, ((0, 0), (margin, margin), (margin, margin), (0, 0)))
    y0, x0 = y0 + margin, x0 + margin
    return ((1 - fy) * ((1 - fx) * padded[:, y0, x0] + fx * padded[:, y0, x0 + 1])
            + fy * ((1 - fx) * padded[:, y0 + 1, x0] + fx * padded[:, y0 + 1, x0 + 1])).astype(inputs.dtype)


def thicker(inputs: np.ndarray) -> np.ndarray:
    """Each input with its strokes a pixel thicker all round: the largest value in each 3 x 3
    neighbourhood (ink is high, the background 0). The camera draws one card's strokes thinner or
    thicker from frame to frame (the pen's width at its size, blur); a thin-lined face drawn
    thick fills its eyes and mouth and looks like another face."""
    n, h, w, c = inputs.shape
    padded = np.pad(inputs, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = inputs.copy()
    for dy in range(3):
        for dx in range(3):
            np.maximum(out, padded[:, dy:dy + h, dx:dx + w], out=out)
    return out


# The 1-pixel shifts a teach uses: three of SHIFTS' four moves. With thicker strokes among the variants the
# fourth bought nothing (97.17 % at 10 examples per label with it as a tenth variant or without; 9 draws
# of bench/teach.py's examples).
VARIANT_SHIFTS = SHIFTS[1:4]
VARIANTS = 1 + len(TURNS) + len(VARIANT_SHIFTS) + 1  # each example, its turns and scales, shifts, thicker strokes
# The frozen network's multiply-adds in one teach, at most: examples x variants x the network's work
# on one input. 3 labels x 20 examples keep all 9 variants on digits01 (0.36 M a picture) and smiley
# (1.1 M); digits (3.7 M) keeps 4. The cap keeps a teach interactive on a Pi 3B (README: "Teach it on the Pi").
NETWORK_BUDGET = 1_000_000_000


def variants(inputs: np.ndarray, count: int = VARIANTS) -> np.ndarray:
    """Each example as the camera may also show it: itself, turned a little or a little bigger
    or smaller (TURNS), moved a pixel (VARIANT_SHIFTS; rolled, as the border is background), its
    strokes thicker (thicker); the first
    ``count`` of these, whole copies of the batch after each other. Turns and scales come before
    shifts: on their own they did better (bench/teach.py). Thicker strokes lifted the worst base x
    new labels pair, smiley taught new faces, from 94.3 % to 95.2 % at 10 examples per label (9
    draws of bench/teach.py's examples); they come last, so a heavy base that keeps only a
    few variants keeps the ones it kept before."""
    makers = [lambda: inputs] + [partial(warped, inputs, d, s) for d, s in TURNS] + [
        partial(np.roll, inputs, shift, axis=(1, 2)) for shift in VARIANT_SHIFTS] + [partial(thicker, inputs)]
    return np.concatenate([make() for make in makers[:count]])


def multiply_adds(base: Bundle, where="base model") -> int:
    """The kept network's multiply-adds (kept_layers) for one input."""
    kept, _ = kept_layers(base, where)
    layers = nn.infer_shapes(kept + [{"type": "dense", "units": 2}, {"type": "softmax"}], base.input_shape)
    total = 0
    for layer in layers[:len(kept)]:
        if "kernel" in layer.weights:
            positions = math.prod(layer.output_shape[:-1]) if layer.spec["type"] == "conv2d" else 1
            total += math.prod(layer.weights["kernel"]) * positions
    return total


def variant_count(base: Bundle, examples: int, where="base model") -> int:
    """How many variants of each example a teach of ``examples`` examples fits on: all VARIANTS
    while the frozen network's work stays within NETWORK_BUDGET, fewer (at least the example
    itself) on a heavy base or many examples, so that a teach stays interactive on a Pi."""
    return max(1, min(VARIANTS, NETWORK_BUDGET // max(1, examples * multiply_adds(base, where))))


# --- the new output layer --------------------------------------------------------------------

def fit_output(feats: np.ndarray, targets: np.ndarray, classes: int, steps: int = STEPS, l2: float = L2):
    """A dense layer (kernel (D, K), bias (K,)) whose softmax fits ``targets``.

    The features are standardised (each to mean 0, spread 1 over the examples; a feature that
    never varies is left out), the weights start at the class means, and Nesterov's accelerated
    gradient descent on the mean cross-entropy + l2 * |W|^2 / 2 takes ``steps`` full-batch steps
    of 1 / (its smoothness bound). The standardisation is folded into the returned kernel and bias.

    With fewer examples than features, the same steps run on W = X' A (the class means and
    every gradient lie in that span), using the N x N products X X': the same weights, for a
    cost that no longer grows with the features at each step."""
    n = len(feats)
    mean = feats.mean(axis=0)
    spread = feats.std(axis=0)
    used = spread > 1e-6 * max(float(spread.max()), 1e-12)
    scale = np.where(used, 1.0 / np.where(used, spread, 1.0), 0.0)
    x = ((feats - mean) * scale).astype(np.float32)  # float32 halves the steps' cost; 100 steps lose nothing
    onehot = np.eye(classes, dtype=np.float32)[targets]
    counts = onehot.sum(axis=0)
    dual = n < x.shape[1]
    # X' as an array of its own: faster products than the transposed view, and X X' as a plain product of
    # two arrays: NumPy sends x @ x.T to float32 SYRK, which gave NaN in 10 of 40 tries under qemu's arm64
    # emulation (GEMM: 0 of 40).
    xt = np.ascontiguousarray(x.T)
    gram = x @ xt if dual else None
    # Softmax cross-entropy's Hessian is at most 1/2 * X'X / n (plus l2): a safe, fast step.
    top = _top_eigenvalue(gram.__matmul__ if dual else lambda v: xt @ (x @ v), len(gram) if dual else x.shape[1])
    step = np.float32(1.0 / (0.5 * top / n + 0.5 + l2))
    l2 = np.float32(l2)
    # Weights: the class means, small. In the dual, W = X' A with A = onehot / counts * that factor.
    w = onehot / counts / np.float32(max(x.shape[1], 1) ** 0.5)
    if not dual:
        w = xt @ w
    b = np.zeros(classes, np.float32)
    w_before, b_before = w, b
    for t in range(steps):
        momentum = np.float32(t / (t + 3))
        w_ahead, b_ahead = w + momentum * (w - w_before), b + momentum * (b - b_before)
        z = (gram @ w_ahead if dual else x @ w_ahead) + b_ahead
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / n
        w_before, b_before = w, b
        w = w_ahead - step * ((g if dual else xt @ g) + l2 * w_ahead)
        b = b_ahead - step * g.sum(axis=0)
    if dual:
        w = xt @ w
    kernel = scale[:, None] * w.astype(np.float64)
    bias = b - mean @ kernel
    return kernel.astype(np.float32), bias.astype(np.float32)


def _top_eigenvalue(product, size: int, iterations: int = 30) -> float:
    """The largest eigenvalue of a symmetric positive semi-definite matrix (``product``: v -> M v,
    ``size`` its side), by power iteration (cheaper than an SVD of the features),
    rounded up by 10 % for safety."""
    v = np.full(size, 1 / max(size, 1) ** 0.5, np.float32)
    value = 0.0
    for _ in range(iterations):
        w = product(v)
        value = float(np.linalg.norm(w))
        if value == 0.0:
            return 0.0
        v = w / value
    return 1.1 * value


# --- the new bundle --------------------------------------------------------------------------

def teach(base: Bundle, examples: Examples, *, base_name: str | None = None) -> Bundle:
    """A bundle for ``examples.labels``: the base's kept layers (kept_layers), then a new dense
    layer fitted here (fit_output, on the examples and their variants) and softmax. Not saved
    (device.bundle.save_bundle)."""
    where = str(base.path or "base model")
    count = variant_count(base, len(examples.inputs), where)
    kernel, bias = fit_output(features(base, variants(examples.inputs, count)), np.tile(examples.targets, count),
                              len(examples.labels))
    base_name = base_name or (base.path.name if base.path else base.name)
    provenance = {
        "taught": "taught on the device (cardcam teach): the base model's layers frozen, a new output layer "
                  "fitted to the examples",
        "base_model": base_name,
        "base_name": base.name,
        "base_weights_sha256": base.meta["weights_sha256"],
        "examples": {"counts": dict(examples.counts), "sha256": examples.sha256},
        "fit": f"softmax regression on standardised features (the base's layers to its flatten, before the "
               f"last ReLU) of the examples and {count - 1} variants of each (of: turns and scales "
               f"{list(map(list, TURNS))} (degrees, scale), then 1-pixel shifts {list(map(list, VARIANT_SHIFTS))}, then "
               f"strokes a pixel thicker); {STEPS} full-batch steps with "
               f"Nesterov's momentum, l2 {L2}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data": f"{sum(examples.counts.values())} examples taught on the device "
                f"({', '.join(f'{l}: {c}' for l, c in examples.counts.items())})",
    }
    # The task names the examples as a training folder: `cardcam-train report` and `export` judge
    # and calibrate on them by default, and `train --task` takes the same words.
    task = f"folder:{examples.root}" if examples.root and len(str(examples.root)) < 1000 else "taught"
    return _network(base, examples.labels, kernel, bias, where=where, provenance=provenance, task=task)


def teach_folder(base: Bundle, root, *, labels=None, base_name: str | None = None) -> Bundle:
    """read_examples + teach: the whole of ``cardcam teach`` but the saving."""
    kept_layers(base, str(base.path or "base model"))  # before reading any picture
    return teach(base, read_examples(root, base, labels), base_name=base_name)


__all__ = ["TeachError", "Examples", "BundleError", "check_label", "read_examples", "features", "fit_output",
           "kept_layers", "variants", "thicker", "variant_count", "teach", "teach_folder"]
