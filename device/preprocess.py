"""From any picture or camera frame to the network's input: the one preprocessing function.

A card is dark ink on light paper, photographed in a room. The steps:

1. grey levels in [0, 1] from any Pillow mode (alpha is composited on white paper); camera
   frames stay 8-bit until they are small;
2. at a small working size, find the card (card_region): candidate areas of paper grown from
   bright seeds near the centre, stopped by brightness steps (a card's edge), on the picture with
   its strokes closed (a grey closing: a max filter then a min filter wider than any stroke); the
   candidate whose paper borders the most ink is the card;
3. at a resolution tied to the card, ink strength = how much darker a pixel is than its paper,
   relative to that paper, so a dim corner and a lit corner give the same stroke;
4. the ink's main cluster (projections along rows and columns, nearest the centre when stray
   marks compete) gives the crop; too little ink there is the outcome "no ink", not a guess;
5. the crop is scaled to fit ``fit`` of the input keeping its aspect ratio, ink normalised to
   1.0 on a 0.0 background, and centred by its centre of mass, like MNIST.

The network sees light ink on black (``ink=1``). Training data that is already light-on-dark
(MNIST) is inverted into a card before it gets here, so training and the Pi share this path.
The settings travel inside the model bundle.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

MIN_SIDE = 8
MAX_SIDE = 4000
# Pillow refuses to open images above this many pixels (decompression bombs) before decoding.
Image.MAX_IMAGE_PIXELS = MAX_SIDE * MAX_SIDE


class ImageError(ValueError):
    """A picture that cannot be used (unreadable, unsupported, too small or too large)."""


@dataclass(frozen=True)
class PreprocessSettings:
    ink: str = "dark"               # "dark": dark ink on light paper; "light": light ink on dark
    work_size: int = 96             # longer side of the image used to find the ink
    paper_window: float = 0.2       # closing window, as a fraction of work_size (> stroke width)
    ink_threshold: float = 0.25     # relative darkness that counts as ink
    min_ink: float = 0.002          # ink area below this fraction of the picture means "no ink"
    max_ink: float = 0.5            # above this, it is not a card with a glyph
    min_paper: float = 0.06         # paper darker than this: too dark to see anything
    card_contrast: float = 0.6      # paper at least this fraction of the card's brightest is card
    min_card: float = 0.03          # paper smaller than this fraction of the picture is no card
    fit: float = 0.75               # the glyph's longer side as a fraction of the input side

    _RANGES = {
        "work_size": (16, 1024), "paper_window": (0.02, 0.9), "ink_threshold": (0.01, 0.95),
        "min_ink": (0.0, 0.5), "max_ink": (0.01, 1.0), "min_paper": (0.0, 0.9),
        "card_contrast": (0.05, 1.0), "min_card": (0.0, 1.0), "fit": (0.2, 1.0),
    }

    def __post_init__(self):
        if self.ink not in ("dark", "light"):
            raise ValueError(f"'ink' must be 'dark' or 'light', got {self.ink!r}")
        for name, (lo, hi) in self._RANGES.items():
            v = getattr(self, name)
            kind = int if name == "work_size" else (int, float)
            if isinstance(v, bool) or not isinstance(v, kind) or not lo <= v <= hi:
                raise ValueError(f"'{name}' must be a number in [{lo}, {hi}], got {v!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d) -> "PreprocessSettings":
        if not isinstance(d, dict):
            raise ValueError("settings must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown setting {unknown[0]!r}")
        return cls(**d)


@dataclass
class Prepared:
    """What preprocessing found. ``input`` is None when there is no card / no ink to classify."""

    input: np.ndarray | None          # (H, W, 1) float32, ink 1.0 on 0.0
    reason: str = ""                  # why there is no input ("no ink", "too dark", ...)
    box: tuple | None = None          # (left, top, right, bottom) of the ink in the picture
    ink_fraction: float = 0.0

    @property
    def found(self) -> bool:
        return self.input is not None

    def input_bytes(self) -> np.ndarray:
        """The input as 8-bit greys (H, W uint8, ink 255), rounded half to even: what the
        trainer keeps of a training picture, and what capture and the web page show."""
        return (self.input[:, :, 0] * 255).round().astype(np.uint8)


# --- reading pictures ------------------------------------------------------------------------

def load_image(path) -> np.ndarray:
    """Grey levels in [0, 1] (float32, H x W) from an image file; ImageError names the file."""
    return _read_image(path, to_gray)


def load_frame(path) -> np.ndarray:
    """An image file as a camera frame: 8-bit grey (uint8, H x W), the grey levels of
    load_image rounded to 8 bits; ImageError names the file. An 8-bit file is never converted
    to float on the way, so replaying a folder holds its frames and nothing else."""
    return _read_image(path, to_frame)


def to_frame(image) -> np.ndarray:
    """8-bit grey (uint8, H x W) from a Pillow image of any mode or an array: to_gray's grey
    levels rounded to 8 bits (an 8-bit picture as it is)."""
    picture = to_picture(image)
    if picture.mode == "L":
        return np.array(picture)
    return np.round(_pixels(picture) * 255).astype(np.uint8)


def _read_image(path, convert) -> np.ndarray:
    path = Path(path)
    return convert(open_image(path, path))


def open_image(source, where, formats=None) -> Image.Image:
    """A picture (a path or a file object), its size checked before it is decoded, loaded and
    turned upright as its EXIF orientation says. ``formats``: Pillow's format names to accept
    (default any). Anything wrong is an ImageError naming ``where``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=formats) as im:
                _check_size(im.size, where)
                im.load()
                return ImageOps.exif_transpose(im)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{where}: is a directory, not an image") from None
    except UnidentifiedImageError:
        what = f"a {' or '.join(formats)} picture" if formats else "an image Pillow can read"
        raise ImageError(f"{where}: not {what}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{where}: image is larger than {MAX_SIDE}x{MAX_SIDE} pixels") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(f"{where}: cannot decode image ({e})") from None


def _check_size(size, where) -> None:
    w, h = size
    if w > MAX_SIDE or h > MAX_SIDE:
        raise ImageError(f"{where}: image is {w}x{h}; the largest accepted is {MAX_SIDE}x{MAX_SIDE}")
    if w < MIN_SIDE or h < MIN_SIDE:
        raise ImageError(f"{where}: image is {w}x{h}; the smallest accepted is {MIN_SIDE}x{MIN_SIDE}")


def to_picture(image) -> Image.Image:
    """A grey Pillow image ("L", or "F" in [0, 1] where 8 bits would lose detail) from a Pillow
    image of any mode or a 2-D/3-D array. Alpha is composited on white paper. Camera frames
    (uint8) stay 8-bit, so nothing full-size is ever converted to float."""
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim == 3 and a.shape[2] in (3, 4):  # RGB(A) frame
            return Image.fromarray(np.ascontiguousarray(a[..., :3], dtype=np.uint8), "RGB").convert("L")
        if a.ndim != 2:
            raise ImageError(f"frame must be 2-D grey or H x W x 3 colour, got shape {a.shape}")
        if a.dtype == np.uint8:
            return Image.fromarray(a, "L")
        scale = 65535.0 if a.dtype == np.uint16 else 1.0
        return Image.fromarray(np.clip(a.astype(np.float32) / np.float32(scale), 0.0, 1.0), "F")
    im = image
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        paper = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(paper, im)
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float32)
        top = float(a.max()) if a.size else 1.0
        if im.mode.startswith("I;16"):
            scale = 65535.0
        else:
            scale = 1.0 if (im.mode == "F" and top <= 1.0) else 255.0 if top <= 255 else 65535.0
        return Image.fromarray(np.clip(a / np.float32(scale), 0.0, 1.0).astype(np.float32), "F")
    return im if im.mode == "L" else im.convert("L")


def to_gray(image) -> np.ndarray:
    """Grey levels in [0, 1] (float32, H x W) from a Pillow image of any mode or an array."""
    return _pixels(to_picture(image))


def _pixels(im: Image.Image) -> np.ndarray:
    a = np.asarray(im, dtype=np.float32)
    return a / np.float32(255.0) if im.mode == "L" else a


# --- finding the ink -------------------------------------------------------------------------

@lru_cache(maxsize=64)
def _edge_index(n: int, before: int, after: int) -> np.ndarray:
    """Row numbers -before .. n-1+after, clipped into 0 .. n-1: indexing with it replicates edges."""
    index = np.clip(np.arange(-before, n + after), 0, n - 1)
    index.flags.writeable = False
    return index


def _extreme_rows(a: np.ndarray, k: int, op) -> np.ndarray:
    """max/min (``op``) over every window of k rows, centred, edges replicated.

    Doubling trick: log2(k) array operations instead of k, whatever the window. Indexing the
    rows also copies, so a transposed view in gives a contiguous array out: the columns of a
    picture are filtered as the rows of its transpose, with no slow strided passes."""
    lo = (k - 1) // 2
    out = a[_edge_index(a.shape[0], lo, k - 1 - lo)]
    span = 1
    while span * 2 <= k:
        out = op(out[:-span], out[span:])
        span *= 2
    if span < k:
        out = op(out[: len(out) - (k - span)], out[k - span:])
    return out


def paper_brightness(gray: np.ndarray, window: int) -> np.ndarray:
    """Grey closing (dilate then erode) with a square window: the picture without its strokes."""
    # max over rows, then over columns (as rows of the transpose); min over both, back again.
    dilated = _extreme_rows(_extreme_rows(gray, window, np.maximum).T, window, np.maximum)
    return _extreme_rows(_extreme_rows(dilated, window, np.minimum).T, window, np.minimum)


class _Grid:
    """Boolean masks of one h x w grid as Python integers, one bit a pixel.

    Row r starts at bit r * stride; the ``stride - w`` bits after each row are guard bits that
    stay 0, so shifting by a few bits never carries a pixel into the next row. The card search
    does hundreds of mask operations on a ~96 x 72 working image per frame: as big-integer
    shifts, ands and ors they cost ~0.1 us each, against ~2 us for a NumPy call.

    Windows are clipped at the picture's border, which for max/min is the same as replicating
    the edge (the replicated pixel is inside the window anyway).
    """

    def __init__(self, h: int, w: int, guard: int):
        self.h, self.w, self.size = h, w, h * w
        self.stride = -(-(w + max(guard, 1)) // 8) * 8
        self.nbytes = h * self.stride // 8
        self.valid = self.pack(np.ones((h, w), bool))
        # Doubling steps that carry a fill across a whole row / column: 2**n - 1 >= length - 1.
        self.row_steps = max(1, (w - 1).bit_length())
        self.column_steps = max(1, (h - 1).bit_length())

    # Only the working image's grid needs these (a card's crop gets a grid of its own size).
    @cached_property
    def border(self) -> int:
        border = np.zeros((self.h, self.w), bool)
        border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
        return self.pack(border)

    @cached_property
    def near_centre(self) -> np.ndarray:
        h, w = self.h, self.w
        yy, xx = np.ogrid[:h, :w]
        weight = np.exp(-(((yy - h / 2) / (0.35 * h)) ** 2 + ((xx - w / 2) / (0.35 * w)) ** 2))
        weight.flags.writeable = False
        return weight

    @cached_property
    def rows(self) -> np.ndarray:
        return np.arange(self.h)

    @cached_property
    def columns(self) -> np.ndarray:
        return np.arange(self.w)

    def pack(self, mask: np.ndarray) -> int:
        padded = np.zeros((self.h, self.stride), bool)
        padded[:, :self.w] = mask
        return _bits(padded)

    def unpack(self, bits: int) -> np.ndarray:
        flat = np.unpackbits(np.frombuffer(bits.to_bytes(self.nbytes, "little"), np.uint8), bitorder="little")
        return flat.view(bool).reshape(self.h, self.stride)[:, :self.w]

    def bit(self, flat_index: int) -> int:
        """The mask with one pixel set, from its index in the (h, w) array's flat order."""
        r, c = divmod(flat_index, self.w)
        return 1 << (r * self.stride + c)

    def grow(self, bits: int, k: int) -> int:
        """Dilation with a k x k square (k - 1 <= the guard)."""
        hi = k - 1 - (k - 1) // 2  # the window reaches hi pixels after its centre, k - 1 - hi before
        for step in (1, self.stride):  # along rows, then along columns
            span = 1
            while span * 2 <= k:
                bits |= bits << (span * step)
                span *= 2
            if span < k:
                bits |= bits << ((k - span) * step)
            bits >>= hi * step
        return bits & self.valid

    def shrink(self, bits: int, k: int) -> int:
        """Erosion with a k x k square: the pixels whose window holds no unset pixel."""
        return self.valid ^ self.grow(self.valid ^ bits, k)

    def convex_hull(self, bits: int) -> int:
        """The mask with its convex hull filled (a card is a convex quadrilateral in any
        perspective)."""
        vertices = _hull_vertices(self.unpack(bits))
        if len(vertices) < 3:  # a line or a dot: nothing to fill
            return bits
        # Pillow fills the polygon on an 8-bit canvas as wide as a row with its guard bits: the
        # canvas's bytes are this grid's layout, one byte a bit. The picture's right border is
        # not the canvas's, so whatever Pillow draws past it is cut off here (on ARM, its float
        # edge arithmetic can reach one pixel past a vertex on that border).
        canvas = Image.new("L", (self.stride, self.h))
        ImageDraw.Draw(canvas).polygon(vertices, fill=1, outline=1)
        return bits | (_bits(np.frombuffer(canvas.tobytes(), np.uint8)) & self.valid)

    def fill(self, seed: int, allowed: int) -> int:
        """Every pixel of ``allowed`` 4-connected to ``seed``.

        Whole runs join at once: rightwards by an addition (the carry runs along a row's run of
        allowed pixels and stops at the first unset one), the other three ways by doubling
        ("Kogge-Stone") fills; repeated until nothing more joins, so as many passes as the path
        has turns."""
        region = seed & allowed
        if not region:
            return 0
        # The doubling fills' masks depend on ``allowed`` only: the pixels from which a jump of
        # d, 2d, 4d ... stays on allowed pixels all the way.
        fills = []
        for step, steps, towards_higher in ((1, self.row_steps, False), (self.stride, self.column_steps, True),
                                            (self.stride, self.column_steps, False)):
            through, jumps = allowed, []
            for i in range(steps):
                jumps.append((step << i, through))
                if i + 1 < steps:
                    through &= (through << (step << i)) if towards_higher else (through >> (step << i))
            fills.append((towards_higher, jumps))
        while True:
            before = region
            region = (((allowed + region) ^ allowed) | region) & allowed
            for towards_higher, jumps in fills:
                if towards_higher:
                    for jump, through in jumps:
                        region |= through & (region << jump)
                else:
                    for jump, through in jumps:
                        region |= through & (region >> jump)
            if region == before:
                return region

    def fill_holes(self, bits: int) -> int:
        """The mask with every hole (unset area not connected to the border) set."""
        return self.valid ^ self.fill(self.border, self.valid ^ bits)


def _bits(pixels: np.ndarray) -> int:
    """A Python integer with bit i set where the i-th element (in C order) is non-zero."""
    return int.from_bytes(np.packbits(pixels, bitorder="little").tobytes(), "little")


@lru_cache(maxsize=32)
def _grid(h: int, w: int, guard: int) -> _Grid:
    return _Grid(h, w, guard)


def _half_hull(points: list) -> list:
    out = []
    for p in points:
        x, y = p
        while len(out) >= 2:
            (ax, ay), (bx, by) = out[-2], out[-1]
            if (bx - ax) * (y - ay) - (by - ay) * (x - ax) > 0:
                break
            out.pop()
        out.append(p)
    return out


def _hull(points: list) -> list:
    """Monotone chain on sorted distinct points: the strict vertices, from the smallest point."""
    return _half_hull(points)[:-1] + _half_hull(points[::-1])[:-1]


# Directions whose extreme points outline a mask's hull well enough to rule out most others.
_DIRECTIONS = np.array([[1, 0], [0, 1], [1, 1], [1, -1], [1, 2], [2, 1], [1, -2], [2, -1]])


def _hull_vertices(mask: np.ndarray) -> list:
    """The strict vertices of a mask's convex hull, from its smallest (x, y) point; fewer than
    three for a line, a dot or nothing."""
    # Only the left- and right-most pixel of each row can be hull vertices.
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) == 0:
        return []
    inside = mask[rows]
    xs = np.concatenate((inside.argmax(axis=1), mask.shape[1] - 1 - inside[:, ::-1].argmax(axis=1)))
    ys = np.concatenate((rows, rows))
    # The points inside or on the polygon of the extreme points in 8 directions are not hull
    # vertices (a vertex is on no segment between other points): the Python loop below then
    # sees a dozen points instead of two per row, and gives the same hull.
    projections = _DIRECTIONS @ np.stack((xs, ys))
    chosen = np.concatenate((projections.argmin(axis=1), projections.argmax(axis=1)))
    extremes = set(zip(xs[chosen].tolist(), ys[chosen].tolist()))
    polygon = _hull(sorted(extremes))
    if len(polygon) >= 3:
        a = np.array(polygon)[:, :, None]  # edges a -> b of the polygon
        d = np.array(polygon[1:] + polygon[:1])[:, :, None] - a
        outside = (d[:, 0] * (ys - a[:, 1]) < d[:, 1] * (xs - a[:, 0])).any(axis=0)
        xs, ys = xs[outside], ys[outside]
    return _hull(sorted(set(zip(xs.tolist(), ys.tolist())) | extremes))


def card_region(gray: np.ndarray, contrast: float, window: int, ink_threshold: float, min_card: float = 0.03,
                edge_step: float = 0.08, candidates: int = 4) -> np.ndarray:
    """The card: a connected area of paper with ink on it, preferring the centre.

    Candidates grow from the brightest paper near the centre, then the next brightest outside
    the ones already found. They are found on the picture with its strokes closed
    (paper_brightness), so ink never splits one. Paper at least ``contrast`` times the seed's
    brightness belongs to it (shadows across a card are tolerated); where the picture has a
    clearly darker room, the cut moves up to Otsu's threshold. A card's border is a step in
    brightness even against a wall as light as the card, while shadows and light gradients are
    gentle: steps are walls a region does not grow through. Of the candidates, the one whose
    own paper borders the most ink (weighted towards the centre) is the card: clutter is blank,
    cards are not. The card is returned as the convex hull of its paper (a card is a convex
    quadrilateral), so ink and shadows on it are inside.
    """
    paper = paper_brightness(gray, window)
    h, w = paper.shape
    shave = max(3, window // 4) | 1
    grid = _grid(h, w, max(shave, 5) - 1)
    near_centre = grid.near_centre
    paper_score = paper * near_centre
    # Unclipped (~5 us a frame): above any threshold in [0, 1), the same pixels as _ink_strength's.
    ink = grid.pack(_darkness(gray, paper) > ink_threshold)
    # Steps are taken where only noise is closed, so a dark sliver between the card and the
    # picture's border (which the wide closing fills) still parts the two.
    fine = paper_brightness(gray, 3)
    step = np.zeros(paper.shape, bool)
    step[1:, :] = np.abs(fine[1:, :] - fine[:-1, :]) > edge_step * fine[1:, :]
    step[:, 1:] |= np.abs(fine[:, 1:] - fine[:, :-1]) > edge_step * fine[:, 1:]
    open_ground = grid.valid ^ grid.grow(grid.pack(step), 3)  # not a wall
    darker = grid.pack(fine < 0.75 * paper)
    otsu, separation = _otsu(paper.ravel())
    # Ink that reaches the picture's border is mostly a dark sliver between a card and the
    # border (the wide closing fills it): it counts only if no candidate has ink of its own.
    inner_ink = ink ^ grid.fill(grid.border, ink)
    if not inner_ink:
        inner_ink = ink
    free = grid.valid
    tight_crop = None
    best, best_score = 0, 0.0
    for _ in range(candidates):
        score_map = paper_score if free == grid.valid else paper_score * grid.unpack(free)  # x * 1.0 == x
        top_at = int(np.argmax(score_map))
        if score_map.flat[top_at] <= 0:
            break
        top = float(paper.flat[top_at])
        threshold = contrast * top
        if separation > 0.08:
            threshold = min(max(threshold, otsu), 0.85 * top)
        allowed = grid.pack(fine >= threshold) & open_ground & free
        # Seed in open paper, not in a pocket between strokes (the crossing of a "4").
        open_paper = grid.shrink(allowed, 5)
        seed = grid.bit(int(np.argmax(paper_score * grid.unpack(open_paper or allowed))))
        paper_found = grid.fill(seed, allowed)
        ring = grid.grow(paper_found, 5) ^ paper_found
        ringed_by_ink = ring != 0 and (ring & darker).bit_count() / ring.bit_count() > 0.6
        if paper_found.bit_count() / grid.size < min_card or ringed_by_ink:  # a scrap, or the hole of a bold "0"
            free &= grid.valid ^ grid.grow(paper_found | seed, 3)
            continue
        # Convex: shadows, a thumb or ink near the card's edge notch the region, not the card.
        region = grid.convex_hull(paper_found)
        if region.bit_count() / grid.size > 0.5:  # a tight crop of a card: strokes may run off its border
            region = grid.fill_holes(region | grid.fill(grid.grow(region, 5), ink))
            tight_crop = tight_crop if tight_crop is not None else region
        # Its ink is the ink next to its own paper: a wall around the card (whose hull holds
        # the card) does not get the card's ink.
        own_ink = grid.grow(paper_found, shave) & inner_ink
        count = own_ink.bit_count()
        if count:
            pixels = grid.unpack(own_ink)
            y = int(np.count_nonzero(pixels, axis=1) @ grid.rows) / count  # mean row, as ys.mean()
            x = int(np.count_nonzero(pixels, axis=0) @ grid.columns) / count
            centrality = float(near_centre[int(y), int(x)])
            score = count * (0.05 + centrality)
            # A region around the best so far, with ink of its own: the best was a loop of a "0"
            # on this card. A wall around a card has (next to) no ink of its own.
            surrounds = best != 0 and (region & best).bit_count() >= 0.9 * best.bit_count()
            if score > best_score or (surrounds and score >= 0.5 * best_score):
                best, best_score = region, max(score, best_score)
        free &= grid.valid ^ grid.grow(region | seed, 3)
        if free.bit_count() / grid.size < 0.03:
            break
    if not best and tight_crop is not None:
        best = tight_crop  # strokes bolder than the window: the paper filling the picture is the card
    return np.ascontiguousarray(grid.unpack(best))


def _darkness(gray: np.ndarray, paper: np.ndarray) -> np.ndarray:
    """How much darker than its paper each pixel is, relative to that paper."""
    return (paper - gray) / np.maximum(paper, 1e-3)


def _ink_strength(gray: np.ndarray, paper: np.ndarray) -> np.ndarray:
    return np.clip(_darkness(gray, paper), 0.0, 1.0)


def _main_run(profile: np.ndarray, gap: int) -> tuple[int, int]:
    """The [start, end) run of non-zero profile (gaps up to ``gap`` bridged) that holds the most
    ink, discounted by its distance from the centre so clutter at the edge loses to the card."""
    # A profile is ~100 values: Python lists beat a handful of NumPy calls on them.
    idx = [i for i, v in enumerate(profile.tolist()) if v > 0]
    breaks = [i for i in range(len(idx) - 1) if idx[i + 1] - idx[i] > gap + 1]
    starts = [idx[0]] + [idx[i + 1] for i in breaks]
    ends = [idx[i] + 1 for i in breaks] + [idx[-1] + 1]
    centre = len(profile) / 2.0
    best, best_score = 0, -1.0
    csum = [0.0] + np.cumsum(profile).tolist()  # float32 sums, as float64 like the mass below
    for j, (s, e) in enumerate(zip(starts, ends)):
        mass = csum[e] - csum[s]
        distance = abs((s + e) / 2.0 - centre) / centre
        score = mass * (1.0 - 0.5 * distance)
        if score > best_score:
            best, best_score = j, score
    return starts[best], ends[best]


def _resize(picture, size: tuple, box=None, frame=None) -> np.ndarray:
    """Resize a picture (Pillow image, or float array) to (width, height) as floats in [0, 1];
    area averaging down, bilinear up. ``frame``: the picture's pixels, when they are at hand as
    a 2-D uint8 array (a camera frame)."""
    im = picture if isinstance(picture, Image.Image) else \
        Image.fromarray(np.ascontiguousarray(picture, dtype=np.float32), mode="F")
    if box is not None:  # float rounding can step a hair outside the picture
        box = (max(0.0, box[0]), max(0.0, box[1]), min(float(im.width), box[2]), min(float(im.height), box[3]))
    src_w = (box[2] - box[0]) if box else im.width
    if src_w <= size[0]:
        return _pixels(im.resize(size, Image.Resampling.BILINEAR, box=box))
    if box is None and im.mode == "L":  # the same BOX resize, faster (see _shrink_frame)
        small = _shrink_frame(np.asarray(im) if frame is None else frame, size)
        if small is not None:
            return small.astype(np.float32) / np.float32(255.0)
    return _pixels(im.resize(size, Image.Resampling.BOX, box=box))


# --- shrinking camera frames: Pillow's BOX resize along rows, in NumPy --------------------------
# Shrinking a 640x480 frame to the working size is the one full-size pass of every frame, and
# Pillow spends most of its ~0.3 ms on the pass along rows (480 rows x 96 outputs x 7 taps, one
# multiply-add each). For 8-bit pictures that pass is integer arithmetic NumPy can reproduce
# exactly: each output is the plain sum of a run of pixels times a 22-bit fixed-point 1/n,
# rounded to 8 bits. Frames shrink by a rational factor, so the runs repeat every few outputs
# (640 -> 96: 7, 6, 7 pixels in every 20), and the sums are whole-array additions. Pillow then
# does the (6x cheaper) pass along columns on that result, exactly as it would have.
_PRECISION_BITS = 32 - 8 - 2  # Pillow's Resample.c


def _box_taps(in_size: int, out_size: int):
    """Pillow's BOX taps for in_size -> out_size samples: per output, (first, stop, coefficient),
    or None when an output's taps are not one run.

    Follows precompute_coeffs() and normalize_coeffs_8bpc() in Pillow's Resample.c step by step
    (same double arithmetic), so the runs and coefficients are Pillow's own."""
    scale = in_size / out_size
    support = 0.5 * scale  # the box filter's support times the filter scale (>= 1: shrinking)
    inverse = 1.0 / scale
    taps = []
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        first = max(0, int(center - support + 0.5))
        count = min(in_size, int(center + support + 0.5)) - first
        run = [first + x for x in range(count) if -0.5 < (first + x - center + 0.5) * inverse <= 0.5]
        if not run or run[-1] - run[0] + 1 != len(run):
            return None
        taps.append((run[0], run[-1] + 1, int(0.5 + (1.0 / len(run)) * (1 << _PRECISION_BITS))))
    return taps


@lru_cache(maxsize=16)
def _row_plan(w: int, out_w: int):
    """How _shrink_rows shrinks rows of w pixels to out_w: (words per group, per output the
    words' byte masks and the coefficient), or None (Pillow does it)."""
    if not 1 <= out_w < w:
        return None
    taps = _box_taps(w, out_w)
    if taps is None:
        return None
    for period in range(1, out_w + 1):  # the shortest repeating pattern of runs
        span, rest = divmod(w * period, out_w)
        if out_w % period or rest or taps[period - 1][1] > span:
            continue
        if all((a - span, b - span, c) == taps[i - period] for i, (a, b, c) in enumerate(taps[period:], period)):
            break
    else:
        return None
    group = span * (4 // math.gcd(span, 4))  # whole periods, whole 4-pixel words
    if group > 256 or w % group:
        return None
    outputs = []
    for a, b, coefficient in taps[:group * out_w // w]:
        parts = []
        for j in range(a // 4, (b + 3) // 4):
            keep = [byte for byte in range(4) if a <= 4 * j + byte < b]
            parts.append((j, np.uint32(sum(0xFF << (8 * byte) for byte in keep if byte % 2 == 0)),
                          np.uint32(sum(0xFF << (8 * (byte - 1)) for byte in keep if byte % 2 == 1))))
        outputs.append((parts, np.uint32(coefficient)))
    return group // 4, outputs


def _shrink_rows(frame: np.ndarray, out_w: int) -> np.ndarray | None:
    """``Image.fromarray(frame).resize((out_w, h), BOX)`` for a 2-D uint8 frame (uint8 array),
    or None where the runs do not repeat in a short period."""
    h, w = frame.shape
    plan = _row_plan(w, out_w)
    if plan is None:
        return None
    group, outputs = plan
    # The frame as 32-bit words of 4 pixels, transposed so that row j holds word j of every
    # group of periods: the sums are additions of whole contiguous rows. A word's bytes are
    # summed in two 16-bit lanes (bytes 0 + 2 and 1 + 3) until the end.
    words = np.ascontiguousarray(frame).view("<u4").reshape(-1, group).T.copy()
    out = np.empty((words.shape[1], len(outputs)), np.uint8)
    eight = np.uint32(8)
    for i, (parts, coefficient) in enumerate(outputs):
        lanes = None
        for j, even, odd in parts:
            if not odd:  # only even bytes of this word are in the run
                part = words[j] & even
            else:
                part = words[j] >> eight
                part &= odd
                if even:
                    part += words[j] & even
            if lanes is None:
                lanes = part
            else:
                lanes += part
        # The run's sum is the two 16-bit lanes' sum (< 2**16, a group is at most 256 pixels):
        # lanes * 0x10001 = low + ((low + high) << 16) (mod 2**32) puts it in the upper lane.
        lanes *= np.uint32(0x10001)
        sums = lanes
        sums >>= np.uint32(16)
        # Pillow's fixed-point normalisation: (sum * coefficient + 2**21) >> 22, at most 255
        # (the coefficient is 2**22 / n rounded, the sum at most 255 n).
        sums *= coefficient
        sums += np.uint32(1 << (_PRECISION_BITS - 1))
        sums >>= np.uint32(_PRECISION_BITS)
        out[:, i] = sums
    return out.reshape(h, out_w)


def _shrink_frame(frame: np.ndarray, size: tuple) -> np.ndarray | None:
    """``Image.fromarray(frame).resize(size, BOX)`` for a 2-D uint8 frame, as a uint8 array, or
    None (then Pillow does it all)."""
    if size[1] >= frame.shape[0]:
        return None
    along_rows = _shrink_rows(frame, size[0])
    if along_rows is None:
        return None
    return np.asarray(Image.fromarray(along_rows).resize(size, Image.Resampling.BOX))


# np.histogram's bin edges for 64 bins over [0, 1] (float32, as it returns them for float32 values).
_OTSU_EDGES = np.histogram(np.zeros(1, np.float32), bins=64, range=(0.0, 1.0))[1]
_OTSU_CENTRES = (_OTSU_EDGES[:-1] + _OTSU_EDGES[1:]) / 2


def _otsu(values: np.ndarray) -> tuple[float, float]:
    """Otsu's threshold on values in [0, 1], and the gap between the two class means."""
    if values.dtype == np.float32 and values.min() >= 0.0 and values.max() <= 1.0:
        # np.histogram's bins, without its generality: v * 64 is exact in float32, so its
        # integer part is the bin (1.0 goes in the last), as np.histogram decides after its
        # edge corrections.
        bins = (values * np.float32(64.0)).astype(np.intp)
        hist = np.bincount(np.minimum(bins, 63, out=bins), minlength=64)
        edges, centres = _OTSU_EDGES, _OTSU_CENTRES
    else:
        hist, edges = np.histogram(values, bins=64, range=(0.0, 1.0))
        centres = (edges[:-1] + edges[1:]) / 2
    p = hist / max(1, hist.sum())
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        mean0, mean1 = m0 / w0, (m0[-1] - m0) / w1
        between = w0 * w1 * (mean0 - mean1) ** 2
    if not np.isfinite(between).any():  # one grey level only: nothing to separate
        return 1.0, 0.0
    between[np.isnan(between)] = -np.inf  # np.nanargmax, without its overhead
    i = int(np.argmax(between))
    return float(edges[i + 1]), float(mean1[i] - mean0[i])


def _percentile(values: np.ndarray, q: float):
    """np.percentile(values, q) for a 1-D float array, without its ~50 us of argument handling:
    its index, its order statistics and its interpolation. The weight is a Python float, so the
    interpolation runs where np.percentile's does: in the values' dtype on NumPy 2, in float64
    on NumPy 1.x."""
    n = values.size
    index = (n - 1) * (q / 100)  # the "linear" method's virtual index, as NumPy >= 1.22 computes it
    if index >= n - 1:
        return values.max()
    lo = math.floor(index)
    part = np.partition(values, (lo, lo + 1))
    a, b = part[lo], part[lo + 1]
    weight = index - lo
    diff = b - a
    return b - diff * (1 - weight) if weight >= 0.5 else a + diff * weight


def _box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def preprocess(image, settings: PreprocessSettings, input_shape) -> Prepared:
    """Turn a picture (Pillow image, grey array or camera frame) into the network's input."""
    picture = to_picture(image)
    w, h = picture.size
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ImageError(f"image is {w}x{h}; the smallest accepted is {MIN_SIDE}x{MIN_SIDE}")
    if settings.ink == "light":
        picture = ImageOps.invert(picture) if picture.mode == "L" else \
            Image.fromarray(1.0 - np.asarray(picture, np.float32), "F")
    window = max(3, round(settings.paper_window * settings.work_size))
    # Stage 1, coarse: where is the card?
    scale = settings.work_size / max(h, w)
    frame = image if isinstance(image, np.ndarray) and image.ndim == 2 and image.dtype == np.uint8 \
        and settings.ink == "dark" else None
    work = _resize(picture, (max(1, round(w * scale)), max(1, round(h * scale))), frame=frame)
    if float(work.max()) < settings.min_paper:
        return Prepared(None, "too dark")
    card = card_region(work, settings.card_contrast, window, settings.ink_threshold, settings.min_card)
    if np.count_nonzero(card) / card.size < settings.min_card:  # card.mean(), without its overhead
        return Prepared(None, "no card")
    # Stage 2, at a resolution tied to the card: where is the ink on it?
    cl, ct, cr, cb = _box_of(card)
    card_box = (cl / scale, ct / scale, cr / scale, cb / scale)
    k2 = settings.work_size * scale / max(cr - cl, cb - ct)  # crop pixels per picture pixel
    cw, ch = max(1, round((cr - cl) / scale * k2)), max(1, round((cb - ct) / scale * k2))
    crop = _resize(picture, (cw, ch), box=card_box)
    on_card = np.asarray(Image.frombuffer("L", (card.shape[1], card.shape[0]), card.view(np.uint8), "raw", "L", 0, 1)
                         .resize((cw, ch), Image.Resampling.NEAREST, box=(cl, ct, cr, cb))) > 0  # 0/1 bytes
    # Shave the card's edge: blur, JPEG and the room in the corners of its box make dark fringes
    # there. The picture's own border is not shaved (edge padding), so a tight crop keeps its ink.
    shave = max(3, round(settings.work_size * 0.05)) | 1
    grid = _grid(ch, cw, shave - 1)
    on_card = grid.unpack(grid.shrink(grid.pack(on_card), shave))
    paper = paper_brightness(crop, window)
    strength = _ink_strength(crop, paper)
    mask = (strength > settings.ink_threshold) & on_card
    ink = np.where(mask, strength, 0.0)
    on_card_count = np.count_nonzero(on_card)
    if np.count_nonzero(mask) < settings.min_ink * on_card_count:
        return Prepared(None, "no ink", ink_fraction=np.count_nonzero(mask) / mask.size)
    # The main cluster: alternate row and column projections so stray marks drop out.
    gap = max(2, window // 2)
    top, bottom, left, right = 0, ch, 0, cw
    for _ in range(2):
        top_, bottom_ = _main_run(ink[top:bottom, left:right].sum(axis=1), gap)
        top, bottom = top + top_, top + bottom_
        left_, right_ = _main_run(ink[top:bottom, left:right].sum(axis=0), gap)
        left, right = left + left_, left + right_
    fraction = np.count_nonzero(mask[top:bottom, left:right]) / max(1, on_card_count)
    if fraction < settings.min_ink:
        return Prepared(None, "no ink", ink_fraction=fraction)
    if fraction > settings.max_ink:
        return Prepared(None, "too much ink", ink_fraction=fraction)
    # Crop box in picture coordinates, then render the glyph straight at its final size.
    box = (max(0.0, card_box[0] + left / k2), max(0.0, card_box[1] + top / k2),
           min(float(w), card_box[0] + right / k2), min(float(h), card_box[1] + bottom / k2))
    height, width = int(input_shape[0]), int(input_shape[1])
    side = settings.fit * min(height, width)
    bw, bh = box[2] - box[0], box[3] - box[1]
    k = side / max(bw, bh)
    gw, gh = max(1, round(bw * k)), max(1, round(bh * k))
    glyph_gray = _resize(picture, (gw, gh), box=box)
    glyph_paper = _resize(paper, (gw, gh), box=(left, top, right, bottom))
    glyph = _ink_strength(glyph_gray, np.maximum(glyph_paper, glyph_gray))
    glyph[glyph < settings.ink_threshold * 0.5] = 0.0
    inked = glyph[glyph > 0]
    peak = float(_percentile(inked, 90)) if inked.size else 0.0
    if peak <= 0.0:
        return Prepared(None, "no ink", ink_fraction=fraction)
    glyph = np.clip(glyph / peak, 0.0, 1.0)
    canvas = np.zeros((height, width), np.float32)
    total = glyph.sum()
    cy = float((glyph.sum(axis=1) * np.arange(gh)).sum() / total)
    cx = float((glyph.sum(axis=0) * np.arange(gw)).sum() / total)
    y0 = min(max(round((height - 1) / 2.0 - cy), 0), height - gh)  # np.clip, on Python ints
    x0 = min(max(round((width - 1) / 2.0 - cx), 0), width - gw)
    canvas[y0:y0 + gh, x0:x0 + gw] = glyph
    return Prepared(canvas[:, :, None], box=tuple(round(v, 1) for v in box), ink_fraction=fraction)
