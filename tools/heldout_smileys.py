"""A held-out smiley check set, drawn independently of training/smileys.py.

The shipped smiley models are trained only on training/smileys.py. To estimate how they do on
smileys drawn by other people, this script draws faces another way: with matplotlib's patches
(Arc, Wedge, Ellipse, Polygon) and its hand-drawn "sketch" renderer, in styles of its own —
emoji (filled yellow discs), xkcd-like sketches, kawaii (tiny features set low), bold marker
drawings, open grins and crying mouths as wedges, worried faces with wavy mouths and raised
brows, tearful faces. It shares no code and no parameter ranges with the generator.

    .venv/bin/python tools/heldout_smileys.py --out /tmp/heldout [--per-style 20]
    cardcam-train evaluate --model models/smiley.npz /tmp/heldout
    cardcam-train evaluate --model models/smiley.npz --camera --frames 3 /tmp/heldout

or, accuracy per style on the faces as drawn and through the camera simulation:

    .venv/bin/python tools/heldout_smileys.py --model models/smiley.npz [--per-style 20]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

STYLES = ("emoji", "sketch", "kawaii", "marker", "wedge", "worried", "tearful", "minimal")


def _figure(plt):
    fig = plt.figure(figsize=(1.6, 1.6), dpi=80)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-1.3, 1.3)
    ax.set_ylim(-1.3, 1.3)  # y up, as matplotlib draws
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def _draw(ax, style: str, happy: bool, rng: np.random.Generator):
    from matplotlib import patches

    ink = str(rng.uniform(0.0, 0.25))
    lw = rng.uniform(1.2, 4.5)
    sketch = (rng.uniform(0.5, 2.0), rng.uniform(20, 80), rng.uniform(1, 4)) if style in ("sketch", "worried", "tearful") else None

    def add(p):
        p.set_sketch_params(*sketch) if sketch else None
        ax.add_patch(p)

    def line(xs, ys, width=None, color=None):
        (l,) = ax.plot(xs, ys, color=color or ink, lw=width or lw, solid_capstyle="round")
        if sketch:
            l.set_sketch_params(*sketch)

    # Face
    if style == "emoji":
        add(patches.Circle((0, 0), 1.0, facecolor=(1.0, rng.uniform(0.75, 0.9), rng.uniform(0.0, 0.3)),
                           edgecolor=ink if rng.random() < 0.7 else "none", lw=lw))
    elif style == "minimal":
        pass
    elif style == "kawaii":
        add(patches.Ellipse((0, 0), 2.2, 1.8, fill=False, edgecolor=ink, lw=lw))
    else:
        add(patches.Circle((0, 0), rng.uniform(0.9, 1.05), fill=False, edgecolor=ink, lw=lw * rng.uniform(0.8, 1.5)))

    # Eyes
    if style == "kawaii":
        ey, ex, er = -0.05, 0.55, 0.09
    elif style == "minimal":
        ey, ex, er = 0.25, 0.3, 0.07
    else:
        ey, ex, er = rng.uniform(0.15, 0.45), rng.uniform(0.3, 0.45), rng.uniform(0.07, 0.16)
    for sx in (-1, 1):
        if style == "tearful" and not happy or (style == "marker" and rng.random() < 0.3):
            ax.add_patch(patches.Arc((sx * ex, ey), er * 2.5, er * 2.0, theta1=180, theta2=360, color=ink, lw=lw))
        elif happy and style in ("tearful", "wedge") and rng.random() < 0.5:  # ^ ^ laughing eyes
            ax.add_patch(patches.Arc((sx * ex, ey - er * 0.5), er * 2.5, er * 2.5, theta1=20, theta2=160, color=ink, lw=lw))
        elif style == "sketch" and rng.random() < 0.5:
            line([sx * ex, sx * ex], [ey - er, ey + er])
        else:
            add(patches.Ellipse((sx * ex, ey), er * 1.4, er * 2.0, color=ink))
            if style == "emoji" and rng.random() < 0.5:
                ax.add_patch(patches.Circle((sx * ex + er * 0.2, ey + er * 0.4), er * 0.3, color="white"))
    # Brows on worried faces
    if style == "worried":
        for sx in (-1, 1):
            if happy:
                line([sx * (ex - 0.15), sx * (ex + 0.15)], [ey + 0.3, ey + 0.32])
            else:
                line([sx * (ex - 0.18), sx * (ex + 0.15)], [ey + 0.42, ey + 0.25])

    # Mouth
    my = rng.uniform(-0.6, -0.25) if style not in ("kawaii", "minimal") else (-0.3 if style == "kawaii" else -0.1)
    mw = rng.uniform(0.7, 1.3) if style not in ("kawaii", "minimal") else rng.uniform(0.3, 0.5)
    if style == "wedge":
        # An open mouth: a half disc, flat side up for a grin, flat side down for a wail.
        h = rng.uniform(0.35, 0.6)
        if happy:
            add(patches.Wedge((0, my + h * 0.5), mw / 2, 180, 360, color=ink))
            if rng.random() < 0.5:
                add(patches.Rectangle((-mw * 0.4, my + h * 0.5 - 0.12), mw * 0.8, 0.1, color="white"))
        else:
            add(patches.Wedge((0, my - h * 0.5), mw / 2, 0, 180, color=ink))
    elif style == "worried" and not happy:
        xs = np.linspace(-mw / 2, mw / 2, 60)
        line(xs, my + 0.06 * np.sin(xs * rng.uniform(14, 20)) - 0.15 * (2 * xs / mw) ** 2)
    elif style == "kawaii":
        xs = np.linspace(-mw / 2, mw / 2, 40)
        if happy:  # a small "w" cat mouth or a tiny smile
            if rng.random() < 0.5:
                line(xs, my - 0.12 * np.abs(np.sin(xs / mw * 2 * math.pi)))
            else:
                line(xs, my - 0.15 * (1 - (2 * xs / mw) ** 2))
        else:
            line(xs, my + 0.15 * (1 - (2 * xs / mw) ** 2))
    else:
        # An arc of a circle: the lower part of a circle for a smile, the upper for a frown.
        r = mw / 2 / math.sin(math.radians(rng.uniform(35, 75)))
        half = math.degrees(math.asin(min(1.0, mw / 2 / r)))
        if happy:
            ax.add_patch(patches.Arc((0, my + r * math.cos(math.radians(half)) * 0.9), 2 * r, 2 * r,
                                     theta1=270 - half, theta2=270 + half, color=ink, lw=lw))
        else:
            ax.add_patch(patches.Arc((0, my - r * math.cos(math.radians(half)) * 0.9 - 0.15), 2 * r, 2 * r,
                                     theta1=90 - half, theta2=90 + half, color=ink, lw=lw))
    # Tears
    if style == "tearful" and not happy:
        for sx in (-1, 1) if rng.random() < 0.5 else (1,):
            tx, ty = sx * ex, ey - 0.3
            add(patches.Polygon([(tx, ty + 0.12), (tx - 0.08, ty - 0.05), (tx, ty - 0.12), (tx + 0.08, ty - 0.05)],
                                color=(0.3, 0.5, 0.9) if rng.random() < 0.5 else ink))


def render(style: str, happy: bool, rng: np.random.Generator) -> np.ndarray:
    """One face as a grey uint8 card (dark on light)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = _figure(plt)
    _draw(ax, style, happy, rng)
    # A slight turn of the whole face, as a hand holds a pen or a card.
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.float32)
    plt.close(fig)
    gray = rgba @ np.array([0.299, 0.587, 0.114], np.float32)
    from PIL import Image

    im = Image.fromarray(gray.clip(0, 255).astype(np.uint8)).rotate(rng.uniform(-12, 12), Image.Resampling.BILINEAR,
                                                                     fillcolor=255)
    return np.asarray(im, np.uint8)


def faces(per_style: int, seed: int):
    """(style, label, card) for every style, happy then sad."""
    for happy, label in ((True, "happy"), (False, "sad")):
        for s, style in enumerate(STYLES):
            for i in range(per_style):
                yield style, label, i, render(style, happy, np.random.default_rng([seed, s, i, happy]))


def evaluate(model, per_style: int, seed: int, camera_frames: int = 2) -> dict:
    """Accuracy per style: {style: (clean accuracy, camera accuracy)}; "no ink" counts as wrong."""
    from device.bundle import load_bundle
    from device.preprocess import preprocess
    from device.runtime import make_runtime
    from training.augment import camera_frame

    bundle = load_bundle(model)
    runtime = make_runtime(bundle, "numpy")
    scores: dict = {}
    for style, label, i, card in faces(per_style, seed):
        pictures = [("clean", card)] + [("camera", camera_frame(card, np.random.default_rng([seed, i, f])))
                                        for f in range(camera_frames)]
        for kind, picture in pictures:
            p = preprocess(picture, bundle.preprocess, bundle.input_shape)
            right = p.found and bundle.labels[int(runtime.predict(p.input[None]).argmax())] == label
            scores.setdefault(style, {}).setdefault(kind, []).append(right)
    return {style: (float(np.mean(k["clean"])), float(np.mean(k["camera"])) if k.get("camera") else float("nan"))
            for style, k in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder to write OUT/happy/*.png and OUT/sad/*.png")
    parser.add_argument("--model", help="instead: print a model's accuracy on the faces, per style")
    parser.add_argument("--per-style", type=int, default=20, help="faces per style and class (default 20)")
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args()
    if args.model:
        result = evaluate(args.model, args.per_style, args.seed)
        for style, (clean, camera) in result.items():
            print(f"{style:>8}: drawn {clean:.1%}  camera {camera:.1%}")
        clean = np.mean([c for c, _ in result.values()])
        camera = np.mean([c for _, c in result.values()])
        print(f"{'all':>8}: drawn {clean:.1%}  camera {camera:.1%}  ({2 * len(STYLES) * args.per_style} faces)")
        return
    if not args.out:
        parser.error("give --out DIR or --model MODEL")
    from PIL import Image

    out = Path(args.out)
    for style, label, i, card in faces(args.per_style, args.seed):
        (out / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(card).save(out / label / f"{style}-{i:03d}.png")
    print(f"wrote {2 * len(STYLES) * args.per_style} faces to {out}/happy and {out}/sad")


if __name__ == "__main__":
    main()
