"""Augmentation: small glyph jitter, and a camera simulation that photographs a card.

Both take a *card*: a uint8 grey image, dark ink on light paper (MNIST is inverted first), and
return pictures that then go through the real preprocessing (device.preprocess), so the network
learns from exactly what the Pi, or a phone photo, hands it.

The camera simulation covers what real pictures of cards do (issue 19):

- the pen: stroke width from a 1-2 pixel ballpoint to a marker a quarter of the glyph wide, in
  black, grey, blue or another dark colour, pressed hard or lightly;
- the paper: white, grey, beige or yellow, with grain and sometimes squared lines;
- the shot: a close-up in which the paper fills the picture (the commonest photo of a drawing),
  or a card held up in a room with clutter around it; rotated up to 20 degrees, with perspective;
- the light and the sensor: gradients and soft shadows, blur, noise and JPEG compression.

Pictures are made in colour and handed over as colour (H x W x 3 uint8): the grey conversion is
preprocessing's, as for a phone photo. A frame from the Pi camera is the grey Y plane of the same.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

FRAME_SIZE = (320, 240)  # twice the size preprocessing works at: it reduces, as from a camera

PAPERS = {  # RGB of the paper in full light
    "white": (248, 248, 245), "grey": (205, 205, 200), "beige": (238, 228, 205), "yellow": (250, 240, 165),
}
INKS = {  # RGB of the ink where it covers the paper fully
    "black": (25, 25, 30), "grey": (90, 90, 95), "blue": (35, 50, 150), "light-blue": (70, 90, 190),
    "red": (150, 30, 35), "green": (30, 100, 50), "purple": (80, 40, 120),
}
INK_CHOICE = (["black"] * 5 + ["grey", "blue", "blue", "blue", "light-blue", "red", "green", "purple"])


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


# --- the pen ---------------------------------------------------------------------------------

def pen_stroke(card: np.ndarray, rng: np.random.Generator, side: int, angle: float = 0.0) -> np.ndarray:
    """How much ink covers each pixel (float32 in [0, 1], ``side`` pixels on the card's longer
    side before it is turned by ``angle`` degrees), redrawn with another pen: a thin ballpoint
    (the stroke's core only, 1-2 pixels at the working size), the card's own width, or a bold
    marker (up to a quarter of the glyph)."""
    h, w = card.shape
    base = min(side, 96)  # the pen works at this size, then the glyph is scaled up: cheap
    k = base / max(h, w)
    ink = Image.fromarray(255 - card).resize((max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.BILINEAR)
    kind = rng.random()
    if kind < 0.3:  # ballpoint: keep the middle of the stroke (of however strong the card's ink is)
        level = rng.uniform(0.55, 0.85) * max(1, ink.getextrema()[1])
        ink = ink.point(lambda v: 255 if v > level else int(v * 0.3))
    elif kind < 0.65:  # marker: spread the stroke, up to three times its width and a quarter of the glyph
        reach = max(1, round(min(base * 0.06, _stroke_width(np.asarray(ink)))))
        ink = ink.filter(ImageFilter.MaxFilter(int(rng.integers(1, reach + 1)) * 2 + 1))
    k = side / base
    ink = ink.resize((max(1, round(ink.width * k)), max(1, round(ink.height * k))), Image.Resampling.BILINEAR)
    if angle:
        ink = ink.rotate(angle, Image.Resampling.BILINEAR, expand=True)
    return np.asarray(ink, np.float32) / 255.0


def _stroke_width(ink: np.ndarray) -> float:
    """The mean width of the strokes in a coverage picture (ink bright): twice their area over
    their outline's length, in pixels."""
    mask = ink > 127
    inner = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    edge = np.count_nonzero(mask) - np.count_nonzero(inner)
    return 2.0 * np.count_nonzero(mask) / max(1, edge)


# --- the paper -------------------------------------------------------------------------------

@lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _paper(size, rng: np.random.Generator, angle: float = 0.0) -> np.ndarray:
    """A sheet (H x W x 3 float32, 0..1) of paper: a colour, grain, and sometimes squared lines
    (turned by ``angle`` degrees)."""
    w, h = size
    name = rng.choice(list(PAPERS), p=[0.55, 0.2, 0.15, 0.1])
    rgb = np.array(PAPERS[name], np.float32) / 255.0 * rng.uniform(0.92, 1.02)
    grain = rng.standard_normal((h // 4 + 1, w // 4 + 1)).astype(np.float32)
    grain = np.asarray(Image.fromarray(grain, "F").resize((w, h), Image.Resampling.BILINEAR))
    sheet = np.clip(rgb, 0, 1) * (1.0 + grain[:, :, None] * rng.uniform(0.0, 0.02))
    if rng.random() < 0.15:  # squared paper: faint lines every few millimetres
        step = rng.uniform(0.04, 0.08) * max(w, h)
        line = np.array(rng.choice([(150, 180, 230), (170, 170, 170), (120, 160, 220)]), np.float32) / 255.0
        strength = rng.uniform(0.25, 0.6)
        width = max(1.0, max(w, h) / 300)
        yy, xx = _grid(h, w)
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        u, v = xx * c + yy * s + rng.uniform(0, step), yy * c - xx * s + rng.uniform(0, step)
        on = (u % step < width) | (v % step < width)
        sheet[on] = sheet[on] * (1 - strength) + line * strength
    return sheet.astype(np.float32)


def _ink_on(sheet: np.ndarray, cover: np.ndarray, at, rng: np.random.Generator) -> None:
    """Put the pen's ink (coverage ``cover``) on the sheet at (x, y), in place."""
    name = INK_CHOICE[int(rng.integers(len(INK_CHOICE)))]
    ink = np.array(INKS[name], np.float32) / 255.0 * rng.uniform(0.7, 1.3)
    pressure = rng.uniform(0.6, 1.0)
    x, y = at
    h, w = cover.shape
    region = sheet[y:y + h, x:x + w]
    a = (cover * pressure)[:, :, None]
    region *= 1.0 - a * (1.0 - np.minimum(ink, 1.0) / np.maximum(region, 1e-3)).clip(0, 1)


def _card_sheet(card: np.ndarray, rng: np.random.Generator, size, glyph_fraction, angle: float = 0.0) -> np.ndarray:
    """The paper of ``size`` (width, height) with the card's glyph drawn on it by some pen,
    its longer side ``glyph_fraction`` of the sheet's shorter side, near the middle, the whole
    sheet turned by ``angle`` degrees."""
    w, h = size
    sheet = _paper(size, rng, angle)
    side = max(4, round(min(w, h) * glyph_fraction))
    cover = pen_stroke(card, rng, side, angle)
    gh, gw = cover.shape
    x = int(np.clip((w - gw) / 2 + rng.uniform(-0.08, 0.08) * w, 0, max(0, w - gw)))
    y = int(np.clip((h - gh) / 2 + rng.uniform(-0.08, 0.08) * h, 0, max(0, h - gh)))
    _ink_on(sheet, cover[: h - y, : w - x], (x, y), rng)
    return sheet


# --- the shot --------------------------------------------------------------------------------

def _light(h: int, w: int, rng: np.random.Generator, shadow_chance: float = 0.4) -> np.ndarray:
    """Light falling on the scene (H x W float32): a gradient and, sometimes, a soft shadow."""
    yy, xx = _grid(h, w)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (xx * math.cos(angle) + yy * math.sin(angle)) / max(w, h)
    light = rng.uniform(0.6, 1.05) + rng.uniform(-0.35, 0.35) * ramp
    if rng.random() < shadow_chance:
        sx, sy = rng.uniform(0, w), rng.uniform(0, h)
        radius = rng.uniform(0.15, 0.5) * max(w, h)
        light = light * (1.0 - rng.uniform(0.2, 0.5) * np.exp(-((xx - sx) ** 2 + (yy - sy) ** 2) / (2 * radius ** 2)))
    return light.astype(np.float32)


def _sensor(picture: Image.Image, light: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lens blur, the light, sensor noise and JPEG compression: the picture as a camera gives it."""
    if rng.random() < 0.7:
        picture = picture.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5) * picture.width / 640))
    f = np.asarray(picture, np.float32) / 255.0
    f = f * light[:, :, None]
    f += rng.standard_normal(f.shape[:2], dtype=np.float32)[:, :, None] * rng.uniform(0.003, 0.025)
    out = Image.fromarray((np.clip(f, 0, 1) * 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=int(rng.integers(35, 92)))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.uint8)


def _rgb(sheet: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(sheet, 0, 1) * 255).astype(np.uint8), "RGB")


def close_up(card: np.ndarray, rng: np.random.Generator, size=FRAME_SIZE) -> np.ndarray:
    """A phone photo of a drawing (H x W x 3 uint8): the paper fills the picture, the glyph
    40-85 % of its height, turned up to 20 degrees, under uneven light."""
    w, h = size
    sheet = _card_sheet(card, rng, size, rng.uniform(0.4, 0.85), rng.uniform(-20, 20))
    return _sensor(_rgb(sheet), _light(h, w, rng, 0.5), rng)


def room(card: np.ndarray, rng: np.random.Generator, size=FRAME_SIZE) -> np.ndarray:
    """A card held up in a room (H x W x 3 uint8): clutter around it, the card turned up to 20
    degrees with mild perspective, uneven light and a soft shadow."""
    width, height = size
    base = rng.uniform(0.1, 0.65)
    tint = rng.uniform(0.85, 1.1, size=3)
    bg = Image.new("RGB", size, tuple(int(v) for v in np.clip(base * tint * 255, 0, 255)))
    draw = ImageDraw.Draw(bg)
    scale = width / 640
    for _ in range(rng.integers(2, 9)):
        x0, y0 = rng.uniform(-0.1, 1.0) * width, rng.uniform(-0.1, 1.0) * height
        x1, y1 = x0 + rng.uniform(20, 250) * scale, y0 + rng.uniform(20, 250) * scale
        grey = rng.uniform(0, 255)
        colour = tuple(int(min(255.0, grey * t)) for t in rng.uniform(0.8, 1.2, size=3))
        shape = rng.integers(3)
        if shape == 0:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=max(1, int(rng.integers(1, 8) * scale)))
    card_h = rng.uniform(0.4, 0.75) * height
    card_w = card_h * rng.uniform(0.75, 1.05)
    cw, ch = round(card_w), round(card_h)
    card_im = _rgb(_card_sheet(card, rng, (cw, ch), rng.uniform(0.55, 0.85)))
    theta = math.radians(rng.uniform(-20, 20))
    centre = np.array([width / 2 + rng.uniform(-0.12, 0.12) * width, height / 2 + rng.uniform(-0.1, 0.1) * height])
    corners = np.array([[-cw / 2, -ch / 2], [cw / 2, -ch / 2], [cw / 2, ch / 2], [-cw / 2, ch / 2]])
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    dst = corners @ rot.T + centre + rng.uniform(-0.06, 0.06, size=(4, 2)) * [cw, ch]
    coeffs = _perspective_coeffs(dst.tolist(), [(0, 0), (cw, 0), (cw, ch), (0, ch)])
    warped = card_im.transform(size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
    mask = Image.new("L", card_im.size, 255).transform(size, Image.Transform.PERSPECTIVE, coeffs,
                                                     Image.Resampling.BILINEAR)
    frame = Image.composite(warped, bg, mask)
    return _sensor(frame, _light(height, width, rng), rng)


def camera_frame(card: np.ndarray, rng: np.random.Generator, size=FRAME_SIZE) -> np.ndarray:
    """A picture of ``card`` as a camera takes it: half close-ups, half cards held up in a room."""
    return close_up(card, rng, size) if rng.random() < 0.5 else room(card, rng, size)
