"""Augmentation: small glyph jitter, and a camera simulation that photographs a card in a room.

Both take a *card*: a uint8 grey image, dark ink on light paper (MNIST is inverted first), and
return pictures that then go through the real preprocessing (device.preprocess), so the network
learns from exactly what the Pi will hand it.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

FRAME_SIZE = (640, 480)


def _perspective_coeffs(dst, src):
    """Coefficients for Image.transform(PERSPECTIVE): maps output points dst to input points src."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return np.linalg.solve(np.array(rows, float), np.array(rhs, float)).tolist()


def jitter_glyph(card: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A handwriting-like variation of a card: rotation, shear, uneven scale, thicker or thinner
    strokes. Works at twice the size so thin strokes survive the resampling."""
    h, w = card.shape
    im = Image.fromarray(card).resize((w * 2, h * 2), Image.Resampling.BILINEAR)
    angle = math.radians(rng.uniform(-12, 12))
    shear = rng.uniform(-0.25, 0.25)
    sx, sy = rng.uniform(0.85, 1.15, size=2)
    c, s = math.cos(angle), math.sin(angle)
    # Inverse affine (output -> input) about the centre.
    a, b = c / sx, (s + shear * c) / sx
    d, e = -s / sy, (c - shear * s) / sy
    cx, cy = im.width / 2, im.height / 2
    coeffs = (a, b, cx - a * cx - b * cy, d, e, cy - d * cx - e * cy)
    im = im.transform(im.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=255)
    stroke = rng.random()
    if stroke < 0.2:
        im = im.filter(ImageFilter.MinFilter(3))  # dark ink spreads: thicker pen
    elif stroke < 0.35:
        im = im.filter(ImageFilter.MaxFilter(3))  # thinner pen
    return np.asarray(im, dtype=np.uint8)


def camera_frame(card: np.ndarray, rng: np.random.Generator, size=FRAME_SIZE) -> np.ndarray:
    """A grey camera frame (H x W uint8) of ``card`` held up in a room: clutter around it, the
    card rotated up to 15 degrees with mild perspective, uneven light and a soft shadow, lens blur,
    sensor noise and JPEG compression."""
    width, height = size
    # Background: a wall or desk with a light gradient and clutter.
    base = rng.uniform(0.1, 0.65)
    bg = Image.new("L", size, int(base * 255))
    draw = ImageDraw.Draw(bg)
    for _ in range(rng.integers(2, 9)):
        x0, y0 = rng.uniform(-0.1, 1.0) * width, rng.uniform(-0.1, 1.0) * height
        x1, y1 = x0 + rng.uniform(20, 250), y0 + rng.uniform(20, 250)
        grey = int(rng.uniform(0, 255))
        shape = rng.integers(3)
        if shape == 0:
            draw.rectangle((x0, y0, x1, y1), fill=grey)
        elif shape == 1:
            draw.ellipse((x0, y0, x1, y1), fill=grey)
        else:
            draw.line((x0, y0, x1, y1), fill=grey, width=int(rng.integers(1, 8)))
    # The card: paper, with the glyph printed in ink of some darkness.
    card_h = rng.uniform(0.4, 0.75) * height
    card_w = card_h * rng.uniform(0.75, 1.05)
    paper = rng.uniform(0.75, 1.0)
    ink = rng.uniform(0.03, 0.4)  # ink brightness relative to the paper
    glyph_side = min(card_w, card_h) * rng.uniform(0.55, 0.85)
    gh, gw = card.shape
    k = glyph_side / max(gh, gw)
    glyph = Image.fromarray(card).resize((max(1, round(gw * k)), max(1, round(gh * k))), Image.Resampling.BILINEAR)
    g = np.asarray(glyph, np.float32) / 255.0
    cw, ch = round(card_w), round(card_h)
    sheet = np.full((ch, cw), paper, np.float32)
    ox = int((cw - g.shape[1]) / 2 + rng.uniform(-0.08, 0.08) * cw)
    oy = int((ch - g.shape[0]) / 2 + rng.uniform(-0.08, 0.08) * ch)
    ox, oy = int(np.clip(ox, 0, cw - g.shape[1])), int(np.clip(oy, 0, ch - g.shape[0]))
    sheet[oy:oy + g.shape[0], ox:ox + g.shape[1]] = paper * (g + (1.0 - g) * ink)
    card_im = Image.fromarray((sheet * 255).astype(np.uint8))
    # Where the card's corners land in the frame: rotation, offset, perspective jitter.
    theta = math.radians(rng.uniform(-15, 15))
    centre = np.array([width / 2 + rng.uniform(-0.12, 0.12) * width, height / 2 + rng.uniform(-0.1, 0.1) * height])
    corners = np.array([[-cw / 2, -ch / 2], [cw / 2, -ch / 2], [cw / 2, ch / 2], [-cw / 2, ch / 2]])
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    dst = corners @ rot.T + centre + rng.uniform(-0.06, 0.06, size=(4, 2)) * [cw, ch]
    src = [(0, 0), (cw, 0), (cw, ch), (0, ch)]
    coeffs = _perspective_coeffs(dst.tolist(), src)
    warped = card_im.transform(size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
    mask = Image.new("L", card_im.size, 255).transform(size, Image.Transform.PERSPECTIVE, coeffs,
                                                     Image.Resampling.BILINEAR)
    frame = Image.composite(warped, bg, mask)
    if rng.random() < 0.7:
        frame = frame.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    # Light: a gradient across the room and, sometimes, a soft shadow (a hand, a head).
    f = np.asarray(frame, np.float32) / 255.0
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (xx * math.cos(angle) + yy * math.sin(angle)) / max(width, height)
    light = rng.uniform(0.6, 1.0) + rng.uniform(-0.35, 0.35) * ramp
    if rng.random() < 0.4:
        sx, sy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(80, 300)
        light = light * (1.0 - rng.uniform(0.2, 0.5) * np.exp(-((xx - sx) ** 2 + (yy - sy) ** 2) / (2 * radius ** 2)))
    f = f * light + rng.standard_normal(f.shape, dtype=np.float32) * rng.uniform(0.003, 0.025)
    out = Image.fromarray((np.clip(f, 0, 1) * 255).astype(np.uint8))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=int(rng.integers(35, 92)))
    buf.seek(0)
    return np.asarray(Image.open(buf), dtype=np.uint8)
