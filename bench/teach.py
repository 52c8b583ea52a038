"""Teaching on the device (device.teach): accuracy on new labels, and how long a teach takes.

    python bench/teach.py [--quick] [--json] [--bases smiley,digits] [--labels new-faces]
    python bench/teach.py --times-only     # device code only (NumPy + Pillow): for a Pi or its emulation

Bases: the shipped models/digits01.npz and models/digits.npz (and models/smiley.npz when it is
on this preprocessing version), plus "digits01-small", a lenet5 trained here for 3 epochs on 600
MNIST 0/1 cards (a weak base). New labels, none of which a digits01 base has seen:
  mnist-237  MNIST 2, 3 and 7 (other writers' digits for the test pictures)
  font-AKR   the letters A, K and R in the DejaVu fonts, sizes, weights and slants
  faces      training.smileys' happy and sad faces
  new-faces  surprised, neutral and sleepy faces (new_face), which no smiley model has seen
Every example and test picture is a simulated camera frame of its card (training.augment: close-ups
and cards held up in a room), read through the base's preprocessing, as on the Pi.

For each base x label set x examples per label (5, 10, 20), over 3 draws of the examples, the
accuracy on 100 further pictures per label of these output-layer fits:
  shipped   device.teach.fit_output (softmax regression, 100 Nesterov steps) on device.teach.features
            (the base's layers to its flatten) of the examples and their variants (device.teach.variants:
            small turns and scales, 1-pixel shifts, thicker strokes; as many as device.teach.variant_count
            allows)
  shifts    the same on the examples and their 1-pixel shifts only (shifted)
  before    the fit shipped before (93acbaa): the same fit on the last hidden dense layer's values
            (before its ReLU) of the examples and their 1-pixel shifts
  ridge     closed form: least squares to one-hot targets with a ridge, logits scaled by a fitted
            temperature (shipped's features and variants)
  means     nearest class mean (squared distance, standardised features) with a learnt scale (same)
Times: the fits alone, and a whole teach (read 3 x 20 PNG camera frames, preprocess, frozen
network, fit) against its peer in the same run: classifying the same 60 files (`cardcam predict`'s
work: read, preprocess, NumpyRuntime).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from _common import REPO, best_of

from device import teach
from device.bundle import BundleError, load_bundle
from device.preprocess import load_image, preprocess
from device.runtime import NumpyRuntime, last_hidden_layer

FONTS = sorted((Path("/usr/share/fonts/truetype/dejavu")).glob("DejaVu*.ttf"))
TEST_PER_LABEL = 100


# --- pictures ----------------------------------------------------------------------------------

def letter_card(letter: str, rng) -> np.ndarray:
    """A printed letter (uint8, dark on light) in a random DejaVu font, size, slant and turn."""
    size = int(rng.integers(40, 80))
    font = ImageFont.truetype(str(FONTS[rng.integers(len(FONTS))]), size) if FONTS else \
        ImageFont.load_default(size=size)
    side = size * 2
    im = Image.new("L", (side, side), 255)
    ImageDraw.Draw(im).text((side / 2, side / 2), letter, fill=0, font=font, anchor="mm",
                            stroke_width=int(rng.integers(0, max(1, size // 14) + 1)), stroke_fill=0)
    slant, angle = rng.uniform(-0.2, 0.2), math.radians(rng.uniform(-10, 10))
    c, s = math.cos(angle), math.sin(angle)
    coeffs = (c, s + slant, side / 2 * (1 - c) - (s + slant) * side / 2, -s, c, side / 2 * (1 - c) + s * side / 2)
    im = im.transform(im.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=255)
    return np.asarray(im.resize((56, 56), Image.Resampling.BOX), np.uint8)


NEW_FACES = ("surprised", "neutral", "sleepy")


def new_face(label: str, rng) -> np.ndarray:
    """A face no smiley model has seen (uint8, dark on light, 112 x 112): "surprised" (round eyes,
    an O for a mouth), "neutral" (dot eyes, a straight mouth), "sleepy" (closed-eye arcs, a small
    flat mouth); outline, size, place, turn and pen width vary."""
    big = 336
    im = Image.new("L", (big, big), int(rng.uniform(235, 256)))
    draw = ImageDraw.Draw(im)
    r = rng.uniform(0.28, 0.42) * big
    cx, cy = big / 2 + rng.uniform(-0.04, 0.04) * big, big / 2 + rng.uniform(-0.04, 0.04) * big
    pen = max(2, int(rng.uniform(0.035, 0.08) * r * 2))
    ink = int(rng.uniform(0, 60))
    if rng.random() < 0.8:
        squash = rng.uniform(0.85, 1.15)
        draw.ellipse((cx - r, cy - r * squash, cx + r, cy + r * squash), outline=ink, width=pen)
    ey, dx = cy - r * rng.uniform(0.2, 0.35), r * rng.uniform(0.3, 0.45)
    for side in (-1, 1):
        ex = cx + side * dx
        if label == "surprised":
            e = r * rng.uniform(0.12, 0.18)
            draw.ellipse((ex - e, ey - e, ex + e, ey + e), outline=ink, width=max(2, pen * 2 // 3))
        elif label == "neutral":
            e = r * rng.uniform(0.06, 0.1)
            draw.ellipse((ex - e, ey - e, ex + e, ey + e), fill=ink)
        else:
            e = r * rng.uniform(0.14, 0.2)
            draw.arc((ex - e, ey - e, ex + e, ey + e), 20, 160, fill=ink, width=pen)
    my = cy + r * rng.uniform(0.3, 0.5)
    if label == "surprised":
        m = r * rng.uniform(0.12, 0.22)
        draw.ellipse((cx - m, my - m * 1.2, cx + m, my + m * 1.2), outline=ink, width=pen)
    else:
        half = r * (rng.uniform(0.3, 0.5) if label == "neutral" else rng.uniform(0.12, 0.2))
        tilt = r * rng.uniform(-0.05, 0.05)
        draw.line((cx - half, my - tilt, cx + half, my + tilt), fill=ink, width=pen)
    im = im.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BILINEAR, fillcolor=255)
    return np.asarray(im.resize((112, 112), Image.Resampling.BOX), np.uint8)


LABEL_SETS = ("mnist-237", "font-AKR", "faces", "new-faces")


def label_sets(per_label: int, seed: int = 0) -> dict:
    """name -> (labels, cards per label): ``per_label`` cards of each label, dark on light."""
    from training.data import load_mnist

    rng = np.random.default_rng(seed)
    mnist = load_mnist(digits=(2, 3, 7))
    sets = {"mnist-237": (mnist.names, [[mnist.cards[i] for i in rng.permutation(np.flatnonzero(mnist.labels == c))
                                          [:per_label]] for c in range(3)])}
    sets["font-AKR"] = (["A", "K", "R"], [[letter_card(l, rng) for _ in range(per_label)] for l in "AKR"])
    from training.smileys import draw_smiley
    sets["faces"] = (["happy", "sad"], [[draw_smiley(l, np.random.default_rng([seed, c, i, 23]))
                                         for i in range(per_label)] for c, l in enumerate(("happy", "sad"))])
    sets["new-faces"] = (list(NEW_FACES), [[new_face(l, rng) for _ in range(per_label)] for l in NEW_FACES])
    return sets


def frames(cards: list, seed: int) -> list:
    """Each card as the camera sees it."""
    from training.augment import camera_frame

    rng = np.random.default_rng([seed, 5])
    return [camera_frame(card, rng) for card in cards]


# --- output-layer fits to compare --------------------------------------------------------------

def softmax_probs(kernel, bias, feats):
    z = feats @ kernel + bias
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def _standardise(feats):
    mean, spread = feats.mean(axis=0), feats.std(axis=0)
    scale = np.where(spread > 1e-6 * max(spread.max(), 1e-12), 1 / np.maximum(spread, 1e-12), 0.0)
    return mean, scale


def _temperature(logits, targets):
    """The scale t minimising the cross-entropy of softmax(t * logits) (a few Newton-free steps
    of golden-section search on log t, from 1e-2 to 1e3)."""
    def nll(log_t):
        z = logits * math.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(-(z[np.arange(len(z)), targets] - np.log(np.exp(z).sum(axis=1))).mean())
    lo, hi = math.log(1e-2), math.log(1e3)
    g = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        lo, hi = (lo, b) if nll(a) < nll(b) else (a, hi)
    return math.exp((lo + hi) / 2)


def fit_ridge(feats, targets, classes, ridge=1.0):
    mean, scale = _standardise(feats)
    x = np.hstack([(feats - mean) * scale, np.ones((len(feats), 1))])
    y = np.eye(classes)[targets] * 2 - 1
    # Dual form: n x n, n (tens) << D (84-128).
    a = np.linalg.solve(x @ x.T + ridge * np.eye(len(x)), y)
    w = x.T @ a
    t = _temperature(x @ w, targets)
    kernel = scale[:, None] * w[:-1] * t
    return kernel, (w[-1] - mean @ (scale[:, None] * w[:-1])) * t


def fit_means(feats, targets, classes):
    """-s * |x - mu_c|^2 as a dense layer: s * (2 x.mu_c - |mu_c|^2) (|x|^2 is the same for every class)."""
    mean, scale = _standardise(feats)
    x = (feats - mean) * scale
    mu = np.stack([x[targets == c].mean(axis=0) for c in range(classes)])
    w, b = 2 * mu.T, -(mu ** 2).sum(axis=1)
    s = _temperature(x @ w + b, targets)
    return scale[:, None] * w * s, (b - mean @ (scale[:, None] * w)) * s


def before_features(base, inputs):
    """The frozen network as taught before (commit 93acbaa): the base's layers up to its last
    hidden dense layer, read before that layer's ReLU."""
    return last_hidden_layer(base)(inputs)


def shifted(inputs: np.ndarray) -> np.ndarray:
    """Each input and its copies moved one pixel up, down, left and right (device.teach.SHIFTS,
    whole copies of the batch after each other): the variants a teach used before turns, scales
    and thicker strokes."""
    return np.concatenate([np.roll(inputs, shift, axis=(1, 2)) for shift in teach.SHIFTS])


# name -> (fit, frozen network: "kept" (device.teach.features) or "before" (before_features),
#          examples: "variants" (device.teach.variants) or "shifts" (shifted))
FITS = {"shipped": (teach.fit_output, "kept", "variants"), "shifts": (teach.fit_output, "kept", "shifts"),
        "before": (teach.fit_output, "before", "shifts"), "ridge": (fit_ridge, "kept", "variants"),
        "means": (fit_means, "kept", "variants")}
NETWORKS = {"kept": teach.features, "before": before_features}
EXAMPLES = {"variants": lambda base, x: teach.variants(x, teach.variant_count(base, len(x))),
            "shifts": lambda base, x: shifted(x)}


def training_sets(base, inputs, targets) -> dict:
    """(network, examples) -> (features, targets) for every pair FITS uses."""
    out = {}
    for _, network, examples in FITS.values():
        if (network, examples) not in out:
            copies = EXAMPLES[examples](base, inputs)
            out[network, examples] = NETWORKS[network](base, copies), np.tile(targets, len(copies) // len(inputs))
    return out


# --- the measurements --------------------------------------------------------------------------

def small_base(folder: Path) -> Path:
    """digits01-small: the tests' weak base (lenet5, 3 epochs, 600 MNIST 0/1 cards, no augmentation)."""
    from training.data import load_mnist
    from training.trainer import TrainConfig, train

    cards = load_mnist(digits=(0, 1))
    idx = np.sort(np.random.default_rng(1).choice(len(cards), 600, replace=False))
    out = folder / "digits01-small.npz"
    train(TrainConfig(task="digits01", arch="lenet5", epochs=3, seed=0, jitter_variants=0, camera_variants=0,
                      processes=1), out, command="bench/teach.py", progress=False, cards=cards.subset(idx),
          data_description="600 MNIST 0/1 cards")
    return out


BASES = ("digits01", "digits", "smiley", "digits01-small")


def words(text: str) -> list[str]:
    """An argparse type: comma-separated names."""
    return [w.strip() for w in text.split(",") if w.strip()]


def bases(folder: Path, names=None) -> dict:
    """The bases by name (``names``: only these, of BASES), left out with a line if not loadable."""
    found = {}
    for name in ("digits01", "digits", "smiley"):
        if names is not None and name not in names:
            continue
        try:
            found[name] = load_bundle(REPO / "models" / f"{name}.npz")
        except BundleError as e:
            print(f"# {name}: left out ({e})")
    if names is None or "digits01-small" in names:
        found["digits01-small"] = load_bundle(small_base(folder))
    return found


def accuracy_table(bundles: dict, counts=(5, 10, 20), draws: int = 3, one_card: bool = False,
                   label_names=None) -> list[dict]:
    """``one_card``: every picture of a label is of the same card (the appliance: you teach the
    card you hold up); otherwise each picture is of another card (another writer, font, face).
    ``label_names``: only these label sets (label_sets' names); by default all."""
    rows = []
    for seed in range(draws):
        sets = label_sets(max(counts) + TEST_PER_LABEL, seed)
        for set_name, (labels, cards) in sets.items():
            if label_names is not None and set_name not in label_names:
                continue
            if one_card:
                cards = [[c[0]] * len(c) for c in cards]
            pictures = [frames(c, seed * 10 + i) for i, c in enumerate(cards)]
            for base_name, base in bundles.items():
                if set(labels) <= set(base.labels):
                    continue  # not new to this base
                feats = []
                for c, pics in enumerate(pictures):
                    for k, pic in enumerate(pics):
                        prepared = preprocess(pic, base.preprocess, base.input_shape)
                        if prepared.found:  # the daemon refuses a press with no card, so no blank examples
                            feats.append((c, k, prepared.input))
                inputs = np.stack([f[2] for f in feats])
                label_of = np.array([c for c, _, _ in feats])
                index = np.array([k for _, k, _ in feats])
                test = index >= max(counts)
                test_feats = {name: network(base, inputs[test]) for name, network in NETWORKS.items()}
                for n in counts:
                    train = index < n
                    sets = training_sets(base, inputs[train], label_of[train])
                    for fit_name, (fit, network, examples) in FITS.items():
                        kernel, bias = fit(*sets[network, examples], len(labels))
                        p = softmax_probs(kernel, bias, test_feats[network])
                        right = p.argmax(axis=1) == label_of[test]
                        rows.append({"cards": "one card" if one_card else "many cards", "base": base_name,
                                     "labels": set_name, "examples": n, "fit": fit_name,
                                     "draw": seed, "accuracy": float(right.mean()),
                                     "confidence": float(p.max(axis=1).mean()), "tested": int(test.sum()),
                                     "not_found": int(len(labels) * (max(counts) + TEST_PER_LABEL) - len(feats))})
    return rows


def plain_frames(cards: list, seed: int) -> list:
    """Each card pasted on grey paper with sensor noise, at the appliance's frame size (160 x 120):
    pictures for timing made with Pillow alone."""
    rng = np.random.default_rng([seed, 6])
    out = []
    for card in cards:
        frame = np.full((120, 160), 200.0) + rng.normal(0, 4, (120, 160))
        side = int(rng.integers(70, 100))
        glyph = np.asarray(Image.fromarray(card).resize((side, side), Image.Resampling.BILINEAR), float)
        top, left = int(rng.integers(5, 120 - side)), int(rng.integers(20, 160 - side - 20))
        frame[top:top + side, left:left + side] *= glyph / 255
        out.append(np.clip(frame, 0, 255).astype(np.uint8))
    return out


def timings(bundles: dict, folder: Path, camera: bool = True) -> list[dict]:
    """A whole teach of 3 labels x 20 frames (160 x 120 grey PNG files, as the appliance keeps
    them), and its peer."""
    rng = np.random.default_rng(99)
    root = folder / "examples"
    files = []
    for label in "AKR":
        cards = [letter_card(label, rng) for _ in range(20)]
        pictures = [np.asarray(Image.fromarray(f).convert("L").resize((160, 120), Image.Resampling.BOX))
                    for f in frames(cards, 7)] if camera else plain_frames(cards, 7)
        (root / label).mkdir(parents=True)
        for i, frame in enumerate(pictures):
            path = root / label / f"{i:02d}.png"
            Image.fromarray(frame).save(path)
            files.append(path)
    rows = []
    for base_name, base in bundles.items():
        runtime = NumpyRuntime(base)
        examples = teach.read_examples(root, base)

        def predict_all():
            for path in files:
                prepared = preprocess(load_image(path), base.preprocess, base.input_shape)
                if prepared.found:
                    runtime.predict(prepared.input[None])
        row = {"base": base_name, "examples": len(files),
               "teach_s": best_of(lambda: teach.teach_folder(base, root), repeats=5),
               "read_preprocess_s": best_of(lambda: teach.read_examples(root, base), repeats=5),
               "features_s": best_of(lambda: teach.features(base, examples.inputs), repeats=5),
               "predict_files_s": best_of(predict_all, repeats=5)}
        sets = training_sets(base, examples.inputs, examples.targets)
        row["variants"] = teach.variant_count(base, len(examples.inputs))
        row["features_variants_s"] = best_of(lambda: teach.features(base, EXAMPLES["variants"](base, examples.inputs)),
                                             repeats=5)
        for fit_name, (fit, network, kind) in FITS.items():
            row[f"fit_{fit_name}_s"] = best_of(lambda: fit(*sets[network, kind], 3), repeats=5)
        row["teach_vs_predict"] = row["teach_s"] / row["predict_files_s"]
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one draw of the examples, not three")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--bases", type=words, help=f"only these bases, comma-separated (of: {', '.join(BASES)}); "
                        "no teach times")
    parser.add_argument("--labels", type=words, help=f"only these new label sets, comma-separated (of: "
                        f"{', '.join(LABEL_SETS)}); no teach times")
    parser.add_argument("--times-only", action="store_true",
                        help="only the teach times, on the shipped digits01 and pictures drawn with Pillow "
                             "(no training/ code: runs where only the device's packages are)")
    args = parser.parse_args()
    if args.times_only:
        with tempfile.TemporaryDirectory() as tmp:
            times = timings({"digits01": load_bundle(REPO / "models" / "digits01.npz")}, Path(tmp), camera=False)
        print_times(times)
        return
    for given, known, what in ((args.bases, BASES, "base"), (args.labels, LABEL_SETS, "label set")):
        unknown = sorted(set(given or ()) - set(known))
        if unknown:
            parser.error(f"unknown {what} {unknown[0]!r} (known: {', '.join(known)})")
    some = args.bases is not None or args.labels is not None
    with tempfile.TemporaryDirectory() as tmp:
        bundles = bases(Path(tmp), args.bases)
        times = [] if some else timings(bundles, Path(tmp))
        draws = 1 if args.quick else 3
        rows = accuracy_table(bundles, draws=draws, one_card=True, label_names=args.labels) + \
            accuracy_table(bundles, draws=draws, label_names=args.labels)
    if args.json:
        print(json.dumps({"times": times, "accuracy": rows}))
        return
    if times:
        print_times(times)
    print_accuracy(rows, list(bundles))


def print_times(times):
    print("teach 3 labels x 20 frames (160 x 120 PNG), best of 5, seconds; peer: predict the same 60 files")
    print("(network: the frozen layers on the 60 examples and their variants, variants x 60 inputs; each fit on "
          "its own features)")
    print(f"{'base':16} {'teach':>7} {'read+prep':>9} {'variants':>8} {'network':>8} " + " ".join(f"{f:>8}" for f in FITS)
          + f" {'predict':>8} {'teach/predict':>13}")
    for r in times:
        print(f"{r['base']:16} {r['teach_s']:7.3f} {r['read_preprocess_s']:9.3f} {r['variants']:8d} "
              f"{r['features_variants_s']:8.4f} "
              + " ".join(f"{r[f'fit_{f}_s']:8.4f}" for f in FITS) + f" {r['predict_files_s']:8.3f} "
              f"{r['teach_vs_predict']:13.2f}")


def print_accuracy(rows, bundles):
    print(f"\naccuracy on {TEST_PER_LABEL} further camera pictures per label, mean over draws "
          f"({' / '.join(FITS)}), mean confidence of the shipped fit")
    keys = sorted({(r["cards"], r["base"], r["labels"]) for r in rows},
                  key=lambda k: (k[0] != "one card", list(bundles).index(k[1]), k[2]))
    print(f"{'pictures of':11} {'base':16} {'new labels':10} " + " ".join(f"{f'{n} per label':>29}" for n in (5, 10, 20))
          + "  conf@10")
    for key in keys:
        cells = []
        for n in (5, 10, 20):
            acc = {fit: np.mean([r["accuracy"] for r in rows if (r["cards"], r["base"], r["labels"], r["examples"],
                                                                 r["fit"]) == key + (n, fit)]) for fit in FITS}
            cells.append(" / ".join(f"{acc[f]:.1%}" for f in FITS))
        conf = np.mean([r["confidence"] for r in rows if (r["cards"], r["base"], r["labels"], r["examples"], r["fit"])
                        == key + (10, "shipped")])
        print(f"{key[0]:11} {key[1]:16} {key[2]:10} " + " ".join(f"{c:>29}" for c in cells) + f"  {conf:7.1%}")


if __name__ == "__main__":
    main()
