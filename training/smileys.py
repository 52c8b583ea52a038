"""Procedural smiley cards, "happy" and "sad": dark ink on light paper, seeded and reproducible.

Every card is drawn from its own seed ([seed, class, index]), so card 17 is the same whether 100
or 10,000 are made. Faces vary in everything a child or an artist varies: the outline (circle,
ellipse, a wobbly hand-drawn loop, a filled grey or yellow disc, or none), the eyes (dots, ovals,
rings with pupils, lines, closed arcs; brows or not), the mouth (smile or frown of any curvature,
width, thickness and height; open grins with or without teeth; wavy, down-turned or open sad
mouths), tears, noses, cheeks and hair, and a pen that wobbles. What tells the classes apart is
the expression only: the mouth's height, the eyes and the extras are drawn from the same ranges
for both, so the network cannot learn a shortcut such as "sad mouths sit lower".

The cards then go through the camera simulation (training.augment) and device.preprocess like
every other task's cards.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from training.data import CardSet

LABELS = ("happy", "sad")
CARD_SIZE = 112          # pixels of a generated card (drawn at SUPERSAMPLE times that, then reduced)
SUPERSAMPLE = 3
DEFAULT_PER_CLASS = 3000  # task "smiley"; "smiley:N" for another count
GENERATOR_VERSION = 1    # bump when the drawing changes, so provenance says which faces a model saw


# --- curves in face units: the face's centre is (0, 0), its radius 1, y grows downwards ---------

def _wobble(points: np.ndarray, rng, amount: float) -> np.ndarray:
    """A pen's wobble: smooth low-frequency drift along the stroke plus a little tremor."""
    if amount <= 0 or len(points) < 2:
        return points
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate(([0.0], np.cumsum(seg)))
    s = s / max(s[-1], 1e-6)
    out = points.copy()
    for axis in range(2):
        for _ in range(2):
            freq = rng.uniform(0.5, 3.0)
            out[:, axis] += amount * rng.uniform(0.3, 1.0) * np.sin(2 * math.pi * (freq * s + rng.random()))
    return out + rng.normal(0.0, amount * 0.08, out.shape)


def _mouth_curve(width: float, sag: float, centre_y: float, rng, n=32, power=None) -> np.ndarray:
    """A smile (sag > 0: the middle lower than the corners) or frown (sag < 0), centred on
    ``centre_y`` half-way between its corners and its middle, so its height says nothing of the
    class. ``power`` shapes it: 2 a parabola, higher a flatter bottom with sharper corners."""
    power = rng.uniform(1.6, 3.2) if power is None else power
    x = np.linspace(-width / 2, width / 2, n)
    y = sag * (1 - np.abs(2 * x / width) ** power)
    y = y - sag / 2 + centre_y
    return np.stack([x, y], axis=1)


def _ellipse(cx, cy, rx, ry, n=48, start=0.0, stop=2 * math.pi) -> np.ndarray:
    t = np.linspace(start, stop, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _rotate(points: np.ndarray, angle: float, about=(0.0, 0.0)) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    p = points - about
    return np.stack([c * p[:, 0] - s * p[:, 1], s * p[:, 0] + c * p[:, 1]], axis=1) + about


class _Pen:
    """Draws face-unit curves onto the supersampled canvas with one pen (width, ink, wobble)."""

    def __init__(self, draw: ImageDraw.ImageDraw, to_px, scale: float, width: float, ink: int, wobble: float, rng):
        self.draw, self.to_px, self.scale, self.rng = draw, to_px, scale, rng
        self.width, self.ink, self.wobble = width, ink, wobble

    def stroke(self, points, width_factor=1.0, wobble=True, fill=None):
        pts = np.asarray(points, float)
        if wobble:  # a short stroke wobbles less: the drift is at most a fifth of its extent
            extent = float(np.ptp(pts, axis=0).max())
            pts = _wobble(pts, self.rng, min(self.wobble, 0.2 * extent))
        px = self.to_px(pts)
        w = max(1.0, self.width * width_factor * self.scale)
        ink = self.ink if fill is None else fill
        self.draw.line([tuple(p) for p in px], fill=ink, width=int(round(w)), joint="curve")
        r = w / 2
        for x, y in (px[0], px[-1]):  # round pen tips
            self.draw.ellipse((x - r, y - r, x + r, y + r), fill=ink)

    def fill(self, points, fill=None, wobble=True):
        pts = _wobble(np.asarray(points, float), self.rng, self.wobble * 0.5) if wobble else np.asarray(points, float)
        self.draw.polygon([tuple(p) for p in self.to_px(pts)], fill=self.ink if fill is None else fill)

    def dot(self, cx, cy, rx, ry, fill=None):
        self.fill(_ellipse(cx, cy, rx, ry, 24), fill=fill, wobble=False)


# --- parts ---------------------------------------------------------------------------------------

def _outline(pen: _Pen, rng, kind: str, paper: int):
    if kind == "none":
        return
    if kind == "filled":
        fill = int(rng.choice([rng.uniform(195, 225), rng.uniform(120, 200)]))  # yellow-ish, or grey
        pen.fill(_ellipse(0, 0, 1, 1, 72), fill=fill, wobble=rng.random() < 0.5)
        if rng.random() < 0.6:
            pen.stroke(_ellipse(0, 0, 1, 1, 72))
        return
    if kind == "circle":
        pen.stroke(_ellipse(0, 0, 1, 1, 72), wobble=rng.random() < 0.5)
    elif kind == "ellipse":  # the face box is already squashed; this adds an egg or a pear
        t = np.linspace(0, 2 * math.pi, 72)
        egg = rng.uniform(-0.12, 0.12)
        pen.stroke(np.stack([np.cos(t) * (1 + egg * np.sin(t)), np.sin(t)], axis=1))
    else:  # "wobbly": drawn in one go by hand, the ends overshooting or missing each other
        start = rng.uniform(0, 2 * math.pi)
        span = 2 * math.pi + rng.uniform(-0.35, 0.5)
        t = np.linspace(start, start + span, 90)
        r = 1 + rng.uniform(0.02, 0.07) * np.sin(rng.integers(2, 5) * t + rng.random() * 6) \
            + np.linspace(0, rng.uniform(-0.08, 0.08), len(t))
        pen.stroke(np.stack([r * np.cos(t), r * np.sin(t)], axis=1))
        if rng.random() < 0.25:  # a sketcher goes round twice
            pen.stroke(np.stack([(r + rng.uniform(-0.06, 0.06)) * np.cos(t), (r + rng.uniform(-0.06, 0.06)) * np.sin(t)], axis=1),
                       width_factor=0.7)


def _eyes(pen: _Pen, rng, label: str, paper: int) -> tuple[float, float, float]:
    """Two eyes; returns (eye height, half spacing, eye size) for brows and tears."""
    ey = rng.uniform(-0.5, -0.08)
    dx = rng.uniform(0.2, 0.48)
    size = rng.uniform(0.05, 0.17)
    # Closed happy arcs (^ ^) are more common on happy faces, closed sad ones (u u) on sad ones,
    # but both appear on both: a smile decides, not the eyes.
    kinds = ["dot", "oval", "ring", "pupil", "line", "arc_up", "arc_down", "dash", "star"]
    weights = np.array([5, 5, 2, 3, 3, 2, 2, 1, 0.5])
    weights[kinds.index("arc_up" if label == "happy" else "arc_down")] += 1.5
    kind = rng.choice(kinds, p=weights / weights.sum())
    asym = rng.uniform(-0.05, 0.05)  # eyes a little uneven
    glint = rng.random() < 0.2
    tilt = rng.uniform(-0.25, 0.25)
    for side in (-1, 1):
        cx = side * dx + rng.normal(0, 0.015)
        cy = ey + (asym if side > 0 else 0) + rng.normal(0, 0.015)
        s = size * rng.uniform(0.9, 1.1)
        if kind in ("dot", "oval"):
            rx, ry = (s * 0.75, s * 0.75) if kind == "dot" else (s * rng.uniform(0.45, 0.7), s * rng.uniform(1.0, 1.5))
            pen.dot(cx, cy, rx, ry)
            if glint:  # a highlight left white, as in printed emoji
                pen.dot(cx + rx * 0.3, cy - ry * 0.35, rx * 0.35, rx * 0.35, fill=paper)
        elif kind == "ring":
            pen.stroke(_ellipse(cx, cy, s, s * rng.uniform(1.0, 1.4), 32), width_factor=0.7)
        elif kind == "pupil":
            pen.stroke(_ellipse(cx, cy, s * 1.1, s * rng.uniform(1.1, 1.5), 32), width_factor=0.6)
            off = rng.uniform(-0.3, 0.3, 2) * s
            pen.dot(cx + off[0], cy + off[1], s * 0.45, s * 0.45)
        elif kind == "line":
            pen.stroke(_rotate(np.array([[cx, cy - s * 1.2], [cx, cy + s * 1.2]]), side * tilt * 0.5, (cx, cy)))
        elif kind == "dash":
            pen.stroke(np.array([[cx - s, cy], [cx + s, cy]]))
        elif kind in ("arc_up", "arc_down"):
            sag = s * rng.uniform(0.6, 1.1) * (-1 if kind == "arc_up" else 1)
            pen.stroke(_mouth_curve(s * 2.4, sag, cy, rng, 16, power=2.0))
        else:  # a sparkly star/cross eye
            for a in (0.0, math.pi / 2):
                pen.stroke(_rotate(np.array([[cx - s, cy], [cx + s, cy]]), a + tilt, (cx, cy)), width_factor=0.6)
    return ey, dx, size


def _brows(pen: _Pen, rng, label: str, ey: float, dx: float, size: float):
    lift = ey - size * 1.5 - rng.uniform(0.06, 0.18)
    if label == "sad" and rng.random() < 0.7:
        slant = rng.uniform(0.15, 0.5)   # worried: the inner ends raised
    else:
        slant = rng.uniform(-0.15, 0.15)  # calm or lifted
    length = rng.uniform(0.12, 0.25)
    bend = rng.uniform(-0.05, 0.05)
    for side in (-1, 1):
        cx = side * dx
        inner = np.array([cx - side * length, lift - slant * length])
        outer = np.array([cx + side * length, lift + slant * length * 0.3])
        mid = (inner + outer) / 2 + [0, -abs(bend) - 0.02]
        t = np.linspace(0, 1, 12)[:, None]
        pts = (1 - t) ** 2 * inner + 2 * (1 - t) * t * mid + t ** 2 * outer
        pen.stroke(pts, width_factor=rng.uniform(0.6, 1.0))


def _mouth(pen: _Pen, rng, label: str, paper: int, below: float | None = None):
    """The mouth. ``below``: the eyes' lower edge on a face without an outline, where the mouth
    stays close under them (preprocessing keeps the main cluster of ink, and a face whose mouth
    floats far from its eyes would lose one of them)."""
    cy = rng.uniform(0.18, 0.58)   # the same range for both classes
    width = rng.uniform(0.35, 1.0)
    depth = max(0.06, width * rng.uniform(0.1, 0.55))  # curvature: gentle to deep, for both classes
    if below is not None:
        cy = below + depth / 2 + rng.uniform(0.06, 0.2)
    cx = rng.uniform(-0.1, 0.1)
    tilt = rng.uniform(-0.18, 0.18)
    sign = 1.0 if label == "happy" else -1.0
    if label == "happy":
        kind = rng.choice(["arc", "grin", "grin_teeth", "cheeks", "small"], p=[0.45, 0.17, 0.13, 0.15, 0.10])
    else:
        kind = rng.choice(["arc", "open", "wavy", "down_turned", "small"], p=[0.5, 0.12, 0.13, 0.15, 0.10])
    if kind == "small":
        width *= 0.75
        depth = max(0.06, width * rng.uniform(0.25, 0.6))
    curve = _mouth_curve(width, sign * depth, cy, rng)
    if kind in ("arc", "small", "cheeks"):
        pts = _rotate(curve + [cx, 0], tilt, (cx, cy))
        pen.stroke(pts, width_factor=rng.uniform(0.7, 1.4))
        if kind == "cheeks":  # dimple ticks at the corners of a smile
            for end, side in ((pts[0], -1), (pts[-1], 1)):
                tick = np.array([end + [-side * 0.03, -0.08], end + [side * 0.05, 0.06]])
                pen.stroke(tick, width_factor=0.7)
    elif kind in ("grin", "grin_teeth", "open"):
        # An open mouth: a flatter lip line and a deep curve closing it (D on its side).
        lip = _mouth_curve(width, sign * depth * rng.uniform(0.0, 0.4), cy - sign * depth * 0.3, rng, power=2.0)
        deep = _mouth_curve(width, sign * depth * rng.uniform(1.1, 1.8), cy - sign * depth * 0.3, rng, power=2.0)
        shape = np.concatenate([lip, deep[::-1]]) + [cx, 0]
        shape = _rotate(shape, tilt, (cx, cy))
        style = rng.random()
        if kind == "grin_teeth" or style < 0.45:
            pen.stroke(np.concatenate([shape, shape[:1]]), width_factor=rng.uniform(0.6, 1.0))
            if kind == "grin_teeth":
                lip_r = _rotate(lip + [cx, 0], tilt, (cx, cy))
                deep_r = _rotate(deep + [cx, 0], tilt, (cx, cy))
                if rng.random() < 0.5:  # a row of teeth: a line across and a few gaps
                    mid = (lip_r + deep_r) / 2
                    pen.stroke(mid[3:-3], width_factor=0.5)
                for j in np.linspace(0.25, 0.75, int(rng.integers(2, 5))):
                    k = int(j * (len(lip_r) - 1))
                    pen.stroke(np.array([lip_r[k], lip_r[k] + (deep_r[k] - lip_r[k]) * rng.uniform(0.4, 1.0)]),
                               width_factor=0.45)
        else:
            pen.fill(shape)
            extra = rng.random()
            if extra < 0.25:  # a tongue in paper colour
                pen.fill(_ellipse(cx, cy + sign * depth * 0.3, width * 0.18, depth * 0.25, 16), fill=paper)
            elif extra < 0.5:  # a row of teeth in paper colour along the lip
                lip_r = _rotate(lip + [cx, 0], tilt, (cx, cy))
                band = lip_r[4:-4]
                pen.fill(np.concatenate([band, band[::-1] + [0, sign * depth * rng.uniform(0.25, 0.45)]]),
                         fill=paper, wobble=False)
    elif kind == "wavy":  # a worried, wobbling line, its corners drooping
        x = np.linspace(-width / 2, width / 2, 40)
        waves = rng.uniform(1.5, 3.0)
        amp = width * rng.uniform(0.05, 0.12)
        droop = depth * rng.uniform(0.3, 0.8)
        y = cy + amp * np.sin(2 * math.pi * waves * (x / width + 0.5) + rng.uniform(-0.4, 0.4)) \
            + droop * (np.abs(2 * x / width) ** 3) - droop / 2
        pen.stroke(_rotate(np.stack([x + cx, y], axis=1), tilt, (cx, cy)), width_factor=rng.uniform(0.7, 1.2))
    else:  # "down_turned": a flat middle, the corners bent down
        x = np.linspace(-width / 2, width / 2, 32)
        flat = rng.uniform(0.3, 0.6)
        bend = np.clip((np.abs(2 * x / width) - flat) / (1 - flat), 0, 1) ** 1.5
        y = cy - depth / 2 + depth * bend
        pen.stroke(_rotate(np.stack([x + cx, y], axis=1), tilt, (cx, cy)), width_factor=rng.uniform(0.7, 1.3))


def _tears(pen: _Pen, rng, ey: float, dx: float, size: float):
    sides = [(-1,), (1,), (-1, 1)][int(rng.integers(3))]
    for side in sides:
        cx = side * (dx + rng.uniform(-0.05, 0.1))
        top = ey + size + rng.uniform(0.05, 0.12)
        length = rng.uniform(0.12, 0.3)
        r = length * rng.uniform(0.3, 0.45)
        t = np.linspace(-0.15 * math.pi, 1.15 * math.pi, 20)
        drop = np.concatenate([[[cx, top]], np.stack([cx + r * np.cos(t), top + length - r + r * np.sin(t)], axis=1)[::-1],
                               [[cx, top]]])
        if rng.random() < 0.5:
            pen.fill(drop)
        else:
            pen.stroke(drop, width_factor=0.6)
        if rng.random() < 0.25:  # a second drop further down
            pen.dot(cx + rng.uniform(-0.05, 0.05), top + length + 0.1, r * 0.5, r * 0.7)


def _extras(pen: _Pen, rng, has_outline: bool, ey: float, dx: float):
    """Things on both kinds of face: a nose, cheeks, hair, ears."""
    if rng.random() < 0.3:
        ny = rng.uniform(ey + 0.2, 0.15)
        kind = rng.integers(4)
        if kind == 0:
            pen.dot(0, ny, 0.04, 0.04)
        elif kind == 1:
            pen.stroke(np.array([[0, ny - 0.1], [0, ny + 0.06]]), width_factor=0.7)
        elif kind == 2:
            pen.stroke(np.array([[0.02, ny - 0.12], [-0.06, ny + 0.05], [0.04, ny + 0.06]]), width_factor=0.7)
        else:
            pen.stroke(_ellipse(0, ny, 0.06, 0.05, 16), width_factor=0.6)
    if rng.random() < 0.12:  # cheeks: small circles or hatching
        cy = rng.uniform(0.0, 0.25)
        for side in (-1, 1):
            cx = side * rng.uniform(0.5, 0.7)
            if rng.random() < 0.5:
                pen.stroke(_ellipse(cx, cy, 0.1, 0.07, 16), width_factor=0.5)
            else:
                for k in range(3):
                    pen.stroke(np.array([[cx - 0.08 + k * 0.07, cy + 0.04], [cx - 0.04 + k * 0.07, cy - 0.04]]),
                               width_factor=0.45)
    if has_outline and rng.random() < 0.15:  # hair strands on top
        for k in range(int(rng.integers(1, 6))):
            a = -math.pi / 2 + rng.uniform(-0.6, 0.6)
            base = np.array([math.cos(a), math.sin(a)])
            tip = base * rng.uniform(1.15, 1.35) + [rng.uniform(-0.1, 0.1), 0]
            pen.stroke(np.array([base, tip]), width_factor=0.7)
    if has_outline and rng.random() < 0.08:  # ears
        for side in (-1, 1):
            pen.stroke(_ellipse(side * 1.0, 0.0, 0.14, 0.22, 20, -math.pi / 2, math.pi / 2)
                       if side > 0 else _ellipse(-1.0, 0.0, 0.14, 0.22, 20, math.pi / 2, 3 * math.pi / 2), width_factor=0.8)


# --- a whole card ------------------------------------------------------------------------------

def draw_smiley(label: str, rng: np.random.Generator, size: int = CARD_SIZE) -> np.ndarray:
    """One smiley card (uint8, size x size, dark on light) for label "happy" or "sad"."""
    if label not in LABELS:
        raise ValueError(f"unknown smiley label {label!r} (choose from {', '.join(LABELS)})")
    big = size * SUPERSAMPLE
    # Near white: jitter fills a turned card's corners with white, and a step there would look
    # like a card's edge to preprocessing. The camera simulation varies the paper.
    paper = int(rng.uniform(242, 256))
    im = Image.new("L", (big, big), paper)
    draw = ImageDraw.Draw(im)
    radius = rng.uniform(0.24, 0.44) * big  # a wide margin or a face filling the card
    aspect = rng.uniform(0.82, 1.2)
    rx, ry = radius * min(1.0, 1 / aspect), radius * min(1.0, aspect)
    angle = math.radians(rng.uniform(-15, 15))
    centre = np.array([big / 2, big / 2]) + rng.uniform(-0.04, 0.04, 2) * big
    c, s = math.cos(angle), math.sin(angle)

    def to_px(points):
        p = np.asarray(points, float) * [rx, ry]
        return np.stack([c * p[:, 0] - s * p[:, 1], s * p[:, 0] + c * p[:, 1]], axis=1) + centre

    ink = int(rng.uniform(0, 70))
    pen = _Pen(draw, to_px, radius, width=rng.uniform(0.035, 0.09), ink=ink,
               wobble=rng.choice([0.0, rng.uniform(0.005, 0.035)]), rng=rng)
    outline = rng.choice(["circle", "ellipse", "wobbly", "filled", "none"], p=[0.25, 0.12, 0.28, 0.15, 0.20])
    _outline(pen, rng, outline, paper)
    ey, dx, eye_size = _eyes(pen, rng, label, paper)
    if rng.random() < 0.3:
        _brows(pen, rng, label, ey, dx, eye_size)
    _mouth(pen, rng, label, paper, below=ey + eye_size * 1.3 if outline == "none" else None)
    if label == "sad" and rng.random() < 0.3:
        _tears(pen, rng, ey, dx, eye_size)
    _extras(pen, rng, outline != "none", ey, dx)
    return np.asarray(im.resize((size, size), Image.Resampling.BOX), np.uint8)


def make_smileys(per_class: int = DEFAULT_PER_CLASS, seed: int = 0, size: int = CARD_SIZE) -> CardSet:
    """``per_class`` happy and as many sad cards; card i of a class depends only on (seed, i)."""
    cards, labels = [], []
    for c, label in enumerate(LABELS):
        for i in range(per_class):
            cards.append(draw_smiley(label, np.random.default_rng([seed, c, i]), size))
            labels.append(c)
    return CardSet(cards, np.array(labels, np.int64), list(LABELS), ["smiley"] * len(cards))


def describe(per_class: int, seed: int) -> str:
    return (f"{per_class} happy and {per_class} sad procedural smiley cards (training/smileys.py, "
            f"generator version {GENERATOR_VERSION}, seed {seed}), drawn by the project")


def classic_smiley(label: str, size: int = 400) -> np.ndarray:
    """The plain, printed smiley of a label (for printable cards): circle, oval eyes, an arc."""
    if label not in LABELS:
        raise ValueError(f"unknown smiley label {label!r} (choose from {', '.join(LABELS)})")
    big = size * SUPERSAMPLE
    im = Image.new("L", (big, big), 255)
    radius = 0.42 * big

    def to_px(points):
        return np.asarray(points, float) * radius + big / 2

    pen = _Pen(ImageDraw.Draw(im), to_px, radius, width=0.07, ink=0, wobble=0.0, rng=np.random.default_rng(0))
    pen.stroke(_ellipse(0, 0, 1, 1, 120), wobble=False)
    for side in (-1, 1):
        pen.dot(side * 0.33, -0.3, 0.09, 0.15)
    sag = 0.32 if label == "happy" else -0.3
    pen.stroke(_mouth_curve(1.0, sag, 0.38, None, 48, power=2.0), wobble=False)
    return np.asarray(im.resize((size, size), Image.Resampling.BOX), np.uint8)
