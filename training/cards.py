"""Printable cards to hold in front of the camera: 0, 1, happy, sad, and your own labels.

Four cards (90 x 125 mm, about a postcard) on each A4 page, each inside a dashed cut line with
its label printed *outside* the card, so the camera sees only the glyph. Your own labels come
from a folder of examples (``DIR/<label>/*.png``, as for ``--task folder:DIR``): the first
example in which preprocessing finds ink is cropped to its ink, its contrast stretched, and
printed large.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from device.preprocess import ImageError, PreprocessSettings, load_image, preprocess
from training.data import DataError, label_folders, label_pictures
from training.options import output_file
from training.sheets import DPI, PAGE_MM, save_pdf
from training.smileys import classic_smiley

BUILTIN = ("0", "1", "happy", "sad")
CARD_MM = (90.0, 125.0)
SLOTS_MM = [(10.0, 12.0), (110.0, 12.0), (10.0, 157.0), (110.0, 157.0)]  # top-left of each card
GLYPH_FILL = 0.7  # the glyph's longer side, as a fraction of the card's width


def _font(px: float):
    return ImageFont.load_default(size=max(8, int(px)))


def builtin_glyph(label: str, px: int) -> Image.Image:
    """A built-in card's glyph, px x px, black on white."""
    if label in ("happy", "sad"):
        return Image.fromarray(classic_smiley(label, px))
    im = Image.new("L", (px, px), 255)
    ImageDraw.Draw(im).text((px / 2, px / 2), label, fill=0, font=_font(px * 0.95), anchor="mm",
                            stroke_width=max(1, px // 40), stroke_fill=0)
    return im


def example_glyph(folder: Path) -> Image.Image:
    """The first usable example in a label folder, cropped to its ink, contrast stretched."""
    settings = PreprocessSettings()
    files = label_pictures(folder)
    unreadable = []
    for f in files:
        try:
            gray = load_image(f)
        except ImageError as e:
            unreadable.append(str(e))
            continue
        prepared = preprocess(gray, settings, (32, 32))
        if not prepared.found:
            continue
        l, t, r, b = prepared.box
        pad = 0.08 * max(r - l, b - t)
        h, w = gray.shape
        crop = gray[int(max(0, t - pad)):int(min(h, b + pad)), int(max(0, l - pad)):int(min(w, r + pad))]
        lo, hi = np.percentile(crop, 1), np.percentile(crop, 90)  # ink -> black, paper -> white
        stretched = np.clip((crop - lo) / max(hi - lo, 1e-3), 0, 1)
        return Image.fromarray((stretched * 255).astype(np.uint8))
    why = f" ({len(unreadable)} of {len(files)} unreadable, first {unreadable[0]})" if unreadable else ""
    raise DataError(f"{folder}: no example in which ink can be found, for label '{folder.name}'{why}")


def card_glyphs(examples=None) -> list[tuple[str, Image.Image]]:
    """(label, glyph) for 0, 1, happy, sad and, with ``examples``, each label folder in it."""
    glyphs = [(label, builtin_glyph(label, 600)) for label in BUILTIN]
    if examples is not None:
        root = Path(examples)
        folders = label_folders(root)
        if not folders:
            raise DataError(f"{root}: no label folders in it (expected {root}/<label>/*.png)")
        for folder in folders:
            if folder.name not in BUILTIN:
                glyphs.append((folder.name, example_glyph(folder)))
    return glyphs


def render_pages(glyphs, dpi: int = DPI) -> list[Image.Image]:
    k = dpi / 25.4
    pages = []
    for start in range(0, len(glyphs), len(SLOTS_MM)):
        page = Image.new("L", (round(PAGE_MM[0] * k), round(PAGE_MM[1] * k)), 255)
        draw = ImageDraw.Draw(page)
        for (label, glyph), (x, y) in zip(glyphs[start:start + len(SLOTS_MM)], SLOTS_MM):
            w, h = CARD_MM
            _dashed_rect(draw, x * k, y * k, (x + w) * k, (y + h) * k, grey=200, width=max(1, round(0.25 * k)), dash=3 * k)
            side = GLYPH_FILL * w * k
            scale = side / max(glyph.size)
            g = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))),
                             Image.Resampling.LANCZOS)
            page.paste(g, (round((x + w / 2) * k - g.width / 2), round((y + h / 2) * k - g.height / 2)))
            draw.text(((x + w / 2) * k, (y + h + 5) * k), f"{label}  (cut along the dashed line)", fill=110,
                      font=_font(4 * k), anchor="mm")
        pages.append(page)
    return pages


def _dashed_rect(draw, l, t, r, b, grey, width, dash):
    for (x0, y0, x1, y1) in ((l, t, r, t), (r, t, r, b), (r, b, l, b), (l, b, l, t)):
        length = float(np.hypot(x1 - x0, y1 - y0))
        for s in np.arange(0, length, 2 * dash):
            e = min(length, s + dash)
            draw.line((x0 + (x1 - x0) * s / length, y0 + (y1 - y0) * s / length,
                       x0 + (x1 - x0) * e / length, y0 + (y1 - y0) * e / length), fill=grey, width=width)


def make_cards(out, examples=None) -> tuple[Path, list[str]]:
    glyphs = card_glyphs(examples)
    return save_pdf(render_pages(glyphs), out), [label for label, _ in glyphs]


def cmd_cards(args) -> int:
    output_file(args.out, ".pdf")
    out, labels = make_cards(args.out, args.examples)
    print(f"wrote {out}: {len(labels)} cards ({', '.join(labels)}), {-(-len(labels) // len(SLOTS_MM))} A4 page(s)")
    return 0


def add_command(sub) -> None:
    """`cardcam-train cards` (called from training.cli.build_parser)."""
    p = sub.add_parser("cards", help="printable cards for 0, 1, happy, sad and your own labels")
    p.add_argument("--out", required=True, help="PDF to write")
    p.add_argument("--examples", metavar="DIR", help="a folder DIR/<label>/*.png: one card per label in it")
    p.set_defaults(func=cmd_cards)
