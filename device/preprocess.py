"""From any picture or camera frame to the network's input: the one preprocessing function (v2).

A card is dark ink on light paper: a card held up in a room, or (the commonest photo of a
drawing) a close-up in which the paper fills the picture. The steps:

1. the picture, small: grey levels at ``work_size`` pixels on the longer side. The Pi camera's
   ISP delivers frames at that size; a larger frame or photo is reduced once (JPEGs are decoded
   small in the first place, see open_image), a smaller card enlarged;
2. the paper's own brightness at every pixel: a grey closing (a max filter then a min filter wider
   than any stroke) at coarse resolution, so shadows and light gradients are followed and strokes,
   however bold, are not;
3. ink strength = how much darker a pixel is than its paper, relative to that paper, so a dim
   corner and a lit corner give the same stroke. Ink is what stands out: above
   ``ink_threshold`` and above ``ink_relative`` of the strongest ink on the card, so faint
   texture (squared paper, grain, JPEG noise) drops out next to a real stroke;
4. the card is paper grown from the brightest open paper near the centre (at least
   ``card_contrast`` of it, and not across a step in brightness), with the strokes on it, shaved
   at its edges where the room's darkness and the card's shadow bleed in (_card). The picture's
   own border is not an edge: a close-up keeps its ink;
5. ink that runs into the card's outer edge (a cable or pen lying across the card, the shadow
   along its edge) is not the glyph's, unless it is most of the ink; the rest's main cluster
   (projections along rows and columns, nearest the centre when stray marks compete) gives the
   crop; too little ink there is the outcome "no ink", not a guess;
6. the crop is scaled to fit ``fit`` of the input keeping its aspect ratio, ink normalised to
   1.0 on a 0.0 background, and centred by its centre of mass, like MNIST.

The network sees light ink on black. Training data that is already light-on-dark (MNIST) is
inverted into a card before it gets here, so training and the Pi share this path. The settings,
and the version of this algorithm (VERSION), travel inside the model bundle.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# The preprocessing algorithm's version, recorded in every bundle. A model is only right with the
# preprocessing it was trained with, so a bundle of another version is refused (bundle.py).
VERSION = 2
VERSIONS = (2,)

MIN_SIDE = 8
# Phone cameras make 12, 48, 50 and up to 200 megapixel photos (16320 x 12240). A file that
# declares more is refused before anything is decoded (a decompression bomb is small on disk).
MAX_PIXELS = 200_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Pictures are reduced on load to this longer side: preprocessing works far below it, and a
# 200 MP JPEG decodes at 1/8 scale straight away.
LOAD_SIDE = 1024
# A picture whose grey levels all lie within this of each other is one flat colour.
FLAT = 2 / 255


class ImageError(ValueError):
    """A picture that cannot be used (unreadable, unsupported, too small or too large)."""


@dataclass(frozen=True)
class PreprocessSettings:
    ink: str = "dark"               # "dark": dark ink on light paper; "light": light ink on dark
    work_size: int = 160            # longer side of the picture preprocessing works at (pixels)
    paper_window: float = 0.25      # closing window, as a fraction of work_size (> stroke width)
    ink_threshold: float = 0.22     # relative darkness that always counts as ink
    ink_relative: float = 0.4       # ... and the fraction of the card's strongest ink it must reach
    min_ink: float = 0.002          # ink area below this fraction of the card means "no ink"
    max_ink: float = 0.5            # above this, it is not a card with a glyph
    min_paper: float = 0.06         # paper darker than this: too dark to see anything
    card_contrast: float = 0.5      # paper at least this fraction of the card's brightest is card
    min_card: float = 0.03          # card smaller than this fraction of the picture is no card
    fit: float = 0.75               # the glyph's longer side as a fraction of the input side

    # Every value in these ranges is safe (tested at both ends); they are the documented ranges.
    _RANGES = {
        "work_size": (32, 640), "paper_window": (0.05, 0.6), "ink_threshold": (0.05, 0.95),
        "ink_relative": (0.0, 0.95), "min_ink": (0.0, 0.5), "max_ink": (0.01, 1.0),
        "min_paper": (0.0, 0.9), "card_contrast": (0.05, 1.0), "min_card": (0.0, 1.0), "fit": (0.2, 1.0),
    }

    def __post_init__(self):
        if not isinstance(self.ink, str) or self.ink not in ("dark", "light"):
            raise ValueError(f"'ink' must be 'dark' or 'light', got {self.ink!r}")
        for name, (lo, hi) in self._RANGES.items():
            v = getattr(self, name)
            kind = int if name == "work_size" else (int, float)
            if isinstance(v, bool) or not isinstance(v, kind) or not lo <= v <= hi:
                raise ValueError(f"'{name}' must be a number in [{lo}, {hi}], got {v!r}")

    def to_dict(self) -> dict:
        """The settings as a bundle keeps them, with the algorithm's version."""
        return {"version": VERSION, **asdict(self)}

    @classmethod
    def from_bundle(cls, d) -> "PreprocessSettings":
        """Settings as a bundle keeps them. A bundle made for another version of this algorithm
        (one with no version is from version 1) is refused, saying what to do."""
        if not isinstance(d, dict):
            raise ValueError("settings must be a JSON object")
        d = dict(d)
        version = d.pop("version", 1)
        if isinstance(version, bool) or not isinstance(version, int):
            raise ValueError(f"'version' must be a whole number, got {version!r}")
        if version not in VERSIONS:
            raise ValueError(f"the model was made for preprocessing version {version}, and this cardcam has "
                             f"version {', '.join(map(str, VERSIONS))}: retrain it with this cardcam's "
                             f"cardcam-train (models/README.md gives each shipped model's command)")
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d) -> "PreprocessSettings":
        """Settings from a dict of field values (a user's overrides; no version)."""
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

def load_image(path, longest: int = LOAD_SIDE) -> np.ndarray:
    """Grey levels in [0, 1] (float32, H x W) from an image file, reduced to ``longest`` pixels
    on its longer side; ImageError names the file. A picture of one flat colour (all black, all
    white) is refused: no camera makes one, and it has nothing to read."""
    path = Path(path)
    gray = to_gray(open_image(path, path, longest=longest))
    low, high = float(gray.min()), float(gray.max())
    if high - low < FLAT:
        raise ImageError(f"{path}: the picture is one flat colour (grey level {low:.0%}), with nothing in it to read")
    return gray


def load_frame(path, longest: int = LOAD_SIDE) -> np.ndarray:
    """An image file as a camera frame: 8-bit grey (uint8, H x W), reduced to ``longest``
    pixels on its longer side; ImageError names the file."""
    path = Path(path)
    return to_frame(open_image(path, path, longest=longest))


def to_frame(image) -> np.ndarray:
    """8-bit grey (uint8, H x W) from a Pillow image of any mode or an array: to_gray's grey
    levels rounded to 8 bits (an 8-bit picture as it is)."""
    picture = to_picture(image)
    if picture.mode == "L":
        return np.array(picture)
    return np.round(_pixels(picture) * 255).astype(np.uint8)


def open_image(source, where, formats=None, longest: int | None = LOAD_SIDE,
               max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A picture (a path or a file object): its declared size checked before anything is
    decoded, decoded small (a JPEG at 1/2 to 1/8 scale by draft(), any other format reduced
    once) to at most ``longest`` pixels on its longer side (None: as it is), and turned upright
    as its EXIF orientation says. ``formats``: Pillow's format names to accept (default any).
    Anything wrong is an ImageError naming ``where``."""
    try:
        with warnings.catch_warnings():
            # Between MAX_PIXELS and twice that, Pillow only warns: _check_size refuses those.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source, formats=formats) as im:
                _check_size(im.size, where, max_pixels)
                orientation = im.getexif().get(0x0112, 1)  # before draft(): EXIF is read from the header
                w, h = im.size
                if longest and max(w, h) > longest and im.format == "JPEG":
                    k = longest / max(w, h)
                    im.draft("L" if im.mode in ("L", "RGB", "YCbCr") else None,
                             (math.ceil(w * k), math.ceil(h * k)))
                im.load()
                if longest and max(im.size) > longest:
                    k = longest / max(im.size)
                    size = (max(1, round(im.width * k)), max(1, round(im.height * k)))
                    if im.mode not in ("1", "L", "RGB", "RGBA", "F", "I"):
                        im = to_picture(im)
                    im = im.resize(size, Image.Resampling.BOX)
                else:
                    im = im.copy()  # detached from the file, which closes here
                if orientation != 1:
                    im.getexif()[0x0112] = orientation
                    im.info["exif"] = im.getexif().tobytes()
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
    except Image.DecompressionBombError:  # Pillow's own guard, at twice MAX_PIXELS
        raise ImageError(f"{where}: image is over {2 * MAX_PIXELS / 1e6:.0f} megapixels; the most accepted is "
                         f"{max_pixels / 1e6:.0f} megapixels") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        raise ImageError(f"{where}: cannot decode image ({e})") from None


def _check_size(size, where, max_pixels: int = MAX_PIXELS) -> None:
    w, h = size
    if w * h > max_pixels:
        raise ImageError(f"{where}: image is {w}x{h} ({w * h / 1e6:.0f} megapixels); the most accepted is "
                         f"{max_pixels / 1e6:.0f} megapixels")
    if w < MIN_SIDE or h < MIN_SIDE:
        raise ImageError(f"{where}: image is {w}x{h}; the smallest accepted is {MIN_SIDE}x{MIN_SIDE}")


def to_picture(image) -> Image.Image:
    """A grey Pillow image ("L", or "F" in [0, 1] where 8 bits would lose detail) from a Pillow
    image of any mode or a 2-D/3-D array. Alpha is composited on white paper. Camera frames
    (uint8) stay 8-bit."""
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim == 3 and a.shape[2] in (3, 4):  # RGB(A) frame
            return Image.fromarray(np.ascontiguousarray(a[..., :3], dtype=np.uint8), "RGB").convert("L")
        if a.ndim != 2:
            raise ImageError(f"frame must be 2-D grey or H x W x 3 colour, got shape {a.shape}")
        if a.dtype == np.uint8:
            return Image.fromarray(a, "L")
        scale = 65535.0 if a.dtype == np.uint16 else 1.0
        return Image.fromarray(np.clip(np.nan_to_num(a.astype(np.float32) / np.float32(scale)), 0.0, 1.0), "F")
    im = image
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        paper = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(paper, im)
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.nan_to_num(np.asarray(im, dtype=np.float32))
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


# --- morphology --------------------------------------------------------------------------------

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
    picture are filtered as the rows of its transpose."""
    lo = (k - 1) // 2
    out = a[_edge_index(a.shape[0], lo, k - 1 - lo)]
    span = 1
    while span * 2 <= k:
        out = op(out[:-span], out[span:])
        span *= 2
    if span < k:
        out = op(out[: len(out) - (k - span)], out[k - span:])
    return out


def _filter(a: np.ndarray, k: int, op) -> np.ndarray:
    """max/min filter with a k x k square, edges replicated (a dilation / an erosion)."""
    return _extreme_rows(_extreme_rows(a, k, op).T, k, op).T


def paper_brightness(gray: np.ndarray, window: int) -> np.ndarray:
    """Grey closing (dilate then erode) with a square window: the picture without its strokes."""
    return _filter(_filter(gray, window, np.maximum), window, np.minimum)


# --- finding the ink -------------------------------------------------------------------------

def work_picture(image, settings: PreprocessSettings) -> np.ndarray:
    """The picture preprocessing works on, dark ink, ``work_size`` pixels on its longer side: a
    camera frame at that size as it is (8-bit), anything else grey levels in [0, 1] (float32).
    _grey gives the grey levels of either, or of any part of it: of a frame's cell maxima and
    its card only, not of every pixel (a frame's maximum is the maximum of its grey levels, as
    the grey levels only scale its bytes)."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 2 \
            and max(image.shape) == settings.work_size and min(image.shape) >= MIN_SIDE:
        return 1.0 - _grey(image) if settings.ink == "light" else image
    picture = to_picture(image)
    w, h = picture.size
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ImageError(f"image is {w}x{h}; the smallest accepted is {MIN_SIDE}x{MIN_SIDE}")
    if max(w, h) != settings.work_size:  # a small card is enlarged: windows are in pixels
        k = settings.work_size / max(w, h)
        size = (max(1, round(w * k)), max(1, round(h * k)))
        picture = picture.resize(size, Image.Resampling.BOX if k < 1 else Image.Resampling.BILINEAR)
    gray = _pixels(picture)
    if settings.ink == "light":
        gray = 1.0 - gray
    return gray


def _grey(levels):
    """Grey levels in [0, 1] (float32) of (a part of) a work picture (see work_picture)."""
    return levels * np.float32(1 / 255) if levels.dtype == np.uint8 else levels


def _cells(a: np.ndarray, op=np.maximum) -> np.ndarray:
    """The maximum (``op``) of every 4 x 4 block, the picture's quarter-resolution cells (the
    last rows and columns short of a whole cell are dropped). Rows are paired before columns:
    pairing rows takes whole contiguous rows, and leaves the strided column pairing a quarter
    of the pixels."""
    h, w = a.shape[0] // 4 * 4, a.shape[1] // 4 * 4
    rows = op(a[0:h:2], a[1:h:2])
    rows = op(rows[0::2], rows[1::2])
    columns = op(rows[:, 0:w:2], rows[:, 1:w:2])
    return op(columns[:, 0::2], columns[:, 1::2])


def _paper_level(coarse: np.ndarray, window: int) -> np.ndarray:
    """The paper's brightness in the cells ``coarse`` (4 x 4 block maxima: noise and thin
    strokes are gone): a grey closing of them with a window wider than any stroke."""
    return paper_brightness(coarse, max(2, round(window / 4)))


class _Grid(NamedTuple):
    """How an h x w mask of cells is held as one Python integer, a bit a cell: rows of
    ``stride`` bits, the last of them a guard that stays 0 (so a shift along a row never carries
    into the next). For a card's thousand-odd cells, a shift or an "and" of two such masks is
    cheaper than the overhead of one NumPy call."""

    h: int
    w: int
    stride: int
    row_steps: int      # doubling jumps that cross a row
    column_steps: int   # ... a column
    cells: int          # every cell
    border: int         # the cells on the picture's border
    left: int           # the cells of its first column
    right: int          # ... its last column
    top: int            # ... its first row
    bottom: int         # ... its last row


@lru_cache(maxsize=16)
def _grid(h: int, w: int) -> _Grid:
    stride = w + 1
    left = sum(1 << (row * stride) for row in range(h))
    cells = left * ((1 << w) - 1)  # (a row's pattern times one bit a row: the pattern in every row)
    top = (1 << w) - 1
    right, bottom = left << (w - 1), top << ((h - 1) * stride)
    return _Grid(h, w, stride, max(1, (w - 1).bit_length()), max(1, (h - 1).bit_length()), cells,
                 left | right | top | bottom, left, right, top, bottom)


def _pack(mask: np.ndarray, grid: _Grid) -> int:
    padded = np.zeros((grid.h, grid.stride), bool)
    padded[:, :grid.w] = mask
    return int.from_bytes(np.packbits(padded, bitorder="little").tobytes(), "little")


def _unpack(bits: int, grid: _Grid) -> np.ndarray:
    h, stride = grid.h, grid.stride
    raw = np.frombuffer(bits.to_bytes((h * stride + 7) // 8, "little"), np.uint8)
    return np.unpackbits(raw, bitorder="little")[:h * stride].view(bool).reshape(h, stride)[:, :grid.w]


def _erode(bits: int, grid: _Grid, radius: int) -> int:
    """The cells whose every cell within ``radius`` rows and columns is set (a min filter with a
    (2 radius + 1) square, edges replicated, as _filter), masks as in _Grid: ``radius`` erosions
    by a 3 x 3 square, each a cell's neighbours along its row, then along its column. A
    neighbour off the picture counts as set."""
    for _ in range(radius):
        bits &= ((bits >> 1) | grid.right) & ((bits << 1) | grid.left)
        bits &= ((bits >> grid.stride) | grid.bottom) & ((bits << grid.stride) | grid.top)
    return bits


def _dilate(bits: int, grid: _Grid, radius: int) -> int:
    """The cells within ``radius`` rows and columns of a set cell (a max filter with a
    (2 radius + 1) square, as _filter), masks as in _Grid. Each pass reaches ``step`` further
    each way, steps doubling (1, 2, 4, ... then what is left): a shift along a row takes only the
    cells it keeps in their row."""
    reach, step = 0, 1
    while reach < radius:
        step = min(step, radius - reach)
        kept = grid.left * ((1 << max(0, grid.w - step)) - 1)  # columns a step rightwards keeps in the row
        bits |= ((bits & kept) << step) | ((bits >> step) & kept)
        bits |= ((bits << step * grid.stride) & grid.cells) | (bits >> step * grid.stride)
        reach, step = reach + step, step * 2
    return bits


def _bounds(bits: int, grid: _Grid) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)): the [top, bottom) rows and [left, right) columns of the
    set cells (not none) of a mask as in _Grid. Its columns: its rows folded onto the first,
    halves at a time."""
    folded, rows = bits, grid.h
    while rows > 1:
        half = (rows + 1) // 2
        folded = (folded | (folded >> half * grid.stride)) & ((1 << half * grid.stride) - 1)
        rows = half
    return ((_lowest(bits) // grid.stride, (bits.bit_length() - 1) // grid.stride + 1),
            (_lowest(folded), folded.bit_length()))


def _lowest(bits: int) -> int:
    """The number of the lowest set bit."""
    return (bits & -bits).bit_length() - 1


def _fill(region: int, free: int, grid: _Grid) -> int:
    """The cells of ``free`` 4-connected to ``region`` (masks as in _Grid).

    A fill runs along whole rows at once (rightwards by an addition: the carry runs through a
    row's run of free cells and stops at the first that is not), and the other three ways by
    doubling jumps over free cells; it repeats until nothing joins, so it takes as many passes
    as the path has turns."""
    region &= free
    if not region:
        return 0
    lower, higher = [], []  # (jump, the cells it may land on) towards lower and higher bits
    for step, steps, up in ((1, grid.row_steps, False), (grid.stride, grid.column_steps, False),
                            (grid.stride, grid.column_steps, True)):
        through = free
        for i in range(steps):
            (higher if up else lower).append((step << i, through))
            through &= (through << (step << i)) if up else (through >> (step << i))
    while True:
        region = (((free + region) ^ free) | region) & free
        for jump, through in lower:
            region |= through & (region >> jump)
        for jump, through in higher:
            region |= through & (region << jump)
        # Done when no free cell beside the region is outside it: a check cheaper than a pass.
        beside = (region << 1) | (region >> 1) | (region << grid.stride) | (region >> grid.stride)
        if not beside & free & ~region:
            return region


@lru_cache(maxsize=16)
def _near_centre(h: int, w: int) -> np.ndarray:
    """Weights that fall from 1 at the picture's centre to ~0.1 at its edges' middles."""
    yy, xx = np.ogrid[:h, :w]
    weight = np.exp(-(((yy - h / 2) / (0.35 * h)) ** 2 + ((xx - w / 2) / (0.35 * w)) ** 2))
    weight.flags.writeable = False
    return weight


def _steps(level: np.ndarray, plain: np.ndarray, rise: float) -> np.ndarray:
    """The cells on the darker side of a step: a difference in ``level`` (log brightness) of
    more than ``rise`` between two ``plain`` cells one or two apart, down a column or along a
    row, that stands out from the differences just before and after it (a light gradient,
    however steep, does not). A cell with ink in it is darker than its paper, not a border, so
    differences with it do not count: strokes never split a card, and the margin around a glyph
    stays open.

    The columns of ``level`` and of its transpose (its rows) are done at once, side by side in
    one zero-padded array: a dozen array operations a frame instead of forty."""
    h, w = level.shape
    n = max(h, w)
    levels, plains = np.zeros((2, n, n), np.float32), np.zeros((2, n, n), bool)
    levels[0, :h, :w], levels[1, :w, :h] = level, level.T
    plains[0, :h, :w], plains[1, :w, :h] = plain, plain.T
    step = np.zeros((2, n, n), bool)
    for d in (1, 2):  # an edge that falls inside a cell is spread over two
        difference = levels[:, d:] - levels[:, :-d]
        difference *= plains[:, d:] & plains[:, :-d]
        around = np.zeros((2, n + d, n), np.float32)  # the differences d before and d after, 0 off the ends
        size = np.abs(difference, out=around[:, d:-d])
        threshold = np.minimum(around[:, :-2 * d], around[:, 2 * d:])
        threshold *= 2.0
        sharp = size > np.maximum(threshold, rise, out=threshold)
        falls = sharp & (difference < 0)  # the cell d further is the darker
        step[:, d:] |= falls
        step[:, :-d] |= sharp ^ falls  # ... or this one (a sharp difference is not 0)
    return step[0, :h, :w] | step[1, :w, :h].T


def _card(coarse: np.ndarray, darkest: np.ndarray, closed: np.ndarray, contrast: float, ink_threshold: float,
          edge_step: float = 0.08, candidates: int = 3) -> tuple[int | None, float]:
    """(card, reference) in quarter-resolution cells: the card (a _Grid mask), its paper's brightness.

    A candidate is an area of paper grown from the brightest open paper near the centre: at
    least ``contrast`` of its seed's brightness, and not across a step in brightness (a card's
    border is a step even against a wall as light as the card, while shadows and light
    gradients are gentle). A large candidate near the centre, blank or with a glyph's worth of
    ink, is the card, unless it is ringed by ink (the loop of a "0"). Otherwise the next
    candidate grows outside the ones found, and the card is the one with the most ink next to
    its paper, weighted towards the centre: clutter is blank, cards are not. The card comes
    with the strokes and loops on it (_with_strokes).

    ``coarse`` and ``darkest``: the brightest and darkest pixel of each cell; ``closed``: the
    paper (see _paper_level)."""
    near_centre, grid = _near_centre(*closed.shape), _grid(*closed.shape)
    plain = coarse >= (1.0 - ink_threshold) * closed
    step = _steps(np.log(np.maximum(coarse, np.float32(1e-3))), plain, -math.log(1.0 - edge_step))
    plain_open = plain & ~step
    score_map, ink_floor = closed * near_centre, ink_threshold * closed
    ink = _pack((closed - darkest) > ink_floor, grid)
    free = grid.cells
    best, best_score, best_reference, blank = None, -1.0, 0.0, None
    for candidate in range(candidates):
        # (every cell is free for the first candidate)
        seed = divmod(int(np.argmax(score_map * _unpack(free, grid) if candidate else score_map)), coarse.shape[1])
        reference = float(closed[seed])
        if reference <= 0.0:
            break
        allowed = _pack((coarse >= contrast * reference) & plain_open, grid) & free
        seed, paper, region, like = _candidate(seed, allowed, reference, coarse, plain, plain_open, score_map, grid)
        # Its ink: inside it, two cells off its border (the room darkens the border cells; the
        # loop of a "0" holds no ink so counted).
        own_ink = ink & _erode(region, grid, 2)
        count = own_ink.bit_count()
        centrality = float((near_centre * _unpack(own_ink, grid)).sum()) / count if count else 0.0
        # A glyph's worth of ink around the centre: the card (beside a blank one, not around it:
        # a wall that has the blank card as its "stroke" has the card's edges as its ink).
        if centrality > 0.5 and count >= 0.01 * region.bit_count() and (blank is None or not region & blank[0]):
            return region, reference
        if not _enclosed(region, like, grid):
            # Large blank paper at the centre, first found: a blank card, not something to look
            # past. Unless a glyph's worth of ink lies near the centre off it (a white box or
            # sheet beside the card held up): then a later candidate is taken only if it is a
            # card with a glyph, and otherwise this one.
            if candidate == 0 and count == 0 and near_centre[seed] > 0.5 and paper.bit_count() >= 0.05 * closed.size:
                blank = region, reference
                # (ink with an edge inside its cell, as a stroke has: the wall's shading next to
                # a bright card can read as ink, but it is smooth)
                edged = (coarse - darkest) > ink_floor
                elsewhere = (ink & _pack(edged & (near_centre > 0.5), grid) & ~region).bit_count()
                if elsewhere < max(3, 0.01 * region.bit_count()):
                    return blank
            score = count * (0.05 + centrality) ** 2
            if score > best_score:
                best, best_score, best_reference = region, score, reference
        free &= ~region
        if free.bit_count() < 0.03 * closed.size:
            break
    return blank or (best, best_reference)


def _candidate(seed, allowed: int, reference: float, coarse: np.ndarray, plain: np.ndarray,
               plain_open: np.ndarray, score_map: np.ndarray, grid: _Grid) -> tuple:
    """One candidate card grown near ``seed`` through the ``allowed`` cells: (its seed, its paper,
    the card with its strokes, the plain cells ``like`` its paper), masks as in _Grid but the
    seed. ``plain_open``: the plain cells not on the darker side of a step."""
    open_paper = _erode(allowed, grid, 1)  # seed in open paper, not between strokes
    if open_paper:
        seed = divmod(int(np.argmax(score_map * _unpack(open_paper, grid))), coarse.shape[1])
    seed_cell = 1 << (seed[0] * grid.stride + seed[1])
    paper = _fill(seed_cell, allowed | seed_cell, grid)
    # The same sheet: plain paper as bright as this (close-ups cut into pieces by strokes).
    like = _pack(plain & (np.abs(coarse - reference) <= 0.15 * reference), grid)
    return seed, paper, _with_strokes(paper, _pack(plain_open, grid) & ~like, grid), like


def _enclosed(region: int, like: int, grid: _Grid) -> bool:
    """Whether the region is the loop of a "0": not on the picture's border, and beyond its
    ring of ink (two to eight cells out) mostly paper ``like`` its own, where a card has the
    room around it (masks as in _Grid)."""
    if region & grid.border:
        return False
    ring = _dilate(region, grid, 2)
    around = _dilate(ring, grid, 6) & ~ring
    return (around & like).bit_count() >= 0.4 * around.bit_count()


def _with_strokes(paper: int, surface: int, grid: _Grid) -> int:
    """A card (masks as in _Grid): its paper and everything the room does not reach: its strokes
    and loops, and the strokes that run off a close-up's border. The room starts from the
    ``surface`` cells at the picture's border that are not this paper (plain, not the darker
    side of a step, and not paper like this: the same sheet, cut by strokes)."""
    outside = grid.cells & ~paper
    return grid.cells & ~_fill(grid.border & outside & surface, outside, grid)


def _kth_largest(values: np.ndarray, k: int) -> float:
    k = min(max(1, k), values.size)
    return float(np.partition(values, values.size - k)[values.size - k])


def preprocess(image, settings: PreprocessSettings, input_shape) -> Prepared:
    """Turn a picture (Pillow image, grey array or camera frame) into the network's input."""
    picture = work_picture(image, settings)
    h, w = picture.shape
    scale = max(h, w) / max(to_picture_size(image))  # work pixels per picture pixel
    if float(_grey(picture.max())) < settings.min_paper:
        return Prepared(None, "too dark")
    window = max(4, round(settings.paper_window * max(h, w)))
    coarse, darkest = _grey(_cells(picture)), _grey(_cells(picture, np.minimum))
    closed = _paper_level(coarse, window)
    card, reference = _card(coarse, darkest, closed, settings.card_contrast, settings.ink_threshold)
    if card is None:
        return Prepared(None, "no card")
    if reference < settings.min_paper:
        return Prepared(None, "too dark")
    if card.bit_count() < max(1.0, settings.min_card * closed.size):
        return Prepared(None, "no card")
    # The card shaved by two cells where the room's darkness bleeds into its paper estimate and
    # a card's edge casts its shadow, or things held against it overlap it. The picture's border
    # is replicated, so a close-up is not shaved.
    grid = _grid(*closed.shape)
    shaved_cells = _erode(card, grid, 2)
    if not shaved_cells:
        return Prepared(None, "no card")
    shaved = _unpack(shaved_cells, grid)
    # Each cell's strongest ink: its darkest pixel against its paper. The strongest on the card
    # is its third darkest cell (a thin pen's whole glyph is many times that).
    cell_strength = (closed - darkest) / np.maximum(closed, np.float32(1e-3))
    cell_ink = cell_strength[shaved]
    cut = max(settings.ink_threshold, settings.ink_relative * _kth_largest(cell_ink, 3))
    if h % 4 == 0 and w % 4 == 0 and float(cell_ink.max()) <= cut:
        return Prepared(None, "no ink", ink_fraction=0.0)  # no pixel either (cells hold all pixels)
    # The room is darker than the card's paper; a drawing's region on a larger sheet (a face's
    # filled disc) has paper as bright around it, and its strokes may cross its edge.
    room = _pack(closed < np.float32(0.95 * reference), grid)
    intruding = _ink_from_the_edge(_pack(cell_strength > cut, grid), card, shaved_cells, room, grid)
    if intruding:
        shaved_cells &= ~intruding
        shaved = _unpack(shaved_cells, grid)
    return _read_ink(picture, closed, (shaved, _bounds(shaved_cells, grid)), cut, max(2, window // 2), scale,
                     settings, input_shape)


def _read_ink(picture: np.ndarray, closed: np.ndarray, card: tuple, cut: float, gap: int, scale: float,
              settings: PreprocessSettings, input_shape) -> Prepared:
    """The ink on the card from its pixels: ``card`` is its cells (a mask) and their bounds (see
    _bounds), ``cut`` the least ink strength that is ink, ``gap`` the widest gap inside a glyph,
    ``scale`` work pixels per picture pixel. Pixels only in the card's bounding box: the paper
    under every pixel (its cell's, never darker than the pixel itself), how much darker each
    pixel is, and which of them are ink on the card."""
    (cell_mask, (rows, columns)), (h, w) = card, picture.shape
    (y0, y1), (x0, x1) = _cell_span(*rows, h, cell_mask.shape[0]), _cell_span(*columns, w, cell_mask.shape[1])
    cells = np.s_[rows[0]:rows[1], columns[0]:columns[1]]
    gray_box = _grey(picture[y0:y1, x0:x1])
    paper = np.maximum(_to_pixels(closed[cells], y1 - y0, x1 - x0), gray_box)
    on_card = _to_pixels(cell_mask[cells], y1 - y0, x1 - x0)
    card_count = np.count_nonzero(on_card)
    strength = (paper - gray_box) / np.maximum(paper, np.float32(1e-3))
    ink = (strength > cut) & on_card
    ink_count = np.count_nonzero(ink)
    if ink_count == 0 or ink_count < settings.min_ink * card_count:
        return Prepared(None, "no ink", ink_fraction=ink_count / card_count)
    top, bottom, left, right = _main_cluster(ink, strength, (y0, x0), (h, w), gap)
    fraction = np.count_nonzero(ink[top:bottom, left:right]) / card_count
    if fraction < settings.min_ink or fraction == 0 or not _has_edges(strength[top:bottom, left:right], cut):
        return Prepared(None, "no ink", ink_fraction=fraction)
    if fraction > settings.max_ink:
        return Prepared(None, "too much ink", ink_fraction=fraction)
    return Prepared(_render(strength, (left, top, right, bottom), cut, settings, input_shape),
                    box=tuple(round(v / scale, 1) for v in (x0 + left, y0 + top, x0 + right, y0 + bottom)),
                    ink_fraction=fraction)


def _ink_from_the_edge(ink: int, card: int, shaved: int, room: int, grid: _Grid) -> int:
    """The ``ink`` cells of the ``shaved`` card joined by ink to the ``card``'s outer edge where
    the ``room`` lies beyond it (a picture's border is not an edge), or 0 if they are most of the
    shaved card's ink (masks as in _Grid). A glyph sits inside its card, with paper around it; ink
    that runs into the edge is something else: a cable or a pen lying across the card, the shadow
    along its edge, the room seen past a corner. A glyph drawn up to the edge is most of the ink,
    and stays. Cells touching only at a corner count as joined."""
    outside = grid.cells & ~card
    off = _fill(grid.border & outside, outside, grid) & room  # a hole in the card is not its edge
    edge = card & ((off << 1) | (off >> 1) | (off << grid.stride) | (off >> grid.stride))
    ink &= card
    if not ink & edge:
        return 0
    kept = ink & shaved
    joined = _fill(ink & edge, ink | ((ink << 1) & grid.cells), grid) & kept
    return 0 if 2 * joined.bit_count() > kept.bit_count() else joined


def _has_edges(strength: np.ndarray, cut: float) -> bool:
    """Whether the ink rises from the paper by half the cut within 4 pixels somewhere (measured
    on 2 x 2 means, so sensor noise does not count): a pen's stroke has an edge, however
    blurred; a soft shadow, darker than the paper around it and as wide as a marker's blob, has
    none."""
    h, w = strength.shape[0] // 2 * 2, strength.shape[1] // 2 * 2
    if min(h, w) < 6:
        return True
    s = strength[:h, :w]
    means = (s[0::2, 0::2] + s[1::2, 0::2] + s[0::2, 1::2] + s[1::2, 1::2]) * np.float32(0.25)
    return float(np.abs(means[2:, :] - means[:-2, :]).max()) >= 0.5 * cut \
        or float(np.abs(means[:, 2:] - means[:, :-2]).max()) >= 0.5 * cut


def to_picture_size(image) -> tuple[int, int]:
    """(width, height) of a Pillow image or an array, as given to preprocess."""
    if isinstance(image, np.ndarray):
        return int(image.shape[1]), int(image.shape[0])
    return image.size


def _render(strength, box, cut, settings, input_shape) -> np.ndarray:
    """The ink ``strength`` in ``box`` (work pixels) drawn on the input: fitted keeping its
    aspect ratio, normalised to 1.0 on 0.0, centred by its centre of mass."""
    height, width = int(input_shape[0]), int(input_shape[1])
    left, top, right, bottom = box
    side = settings.fit * min(height, width)
    k = side / max(right - left, bottom - top)
    gw, gh = max(1, round((right - left) * k)), max(1, round((bottom - top) * k))
    glyph = _resize(strength[top:bottom, left:right], (gw, gh))
    kept = glyph >= cut * 0.5
    glyph *= kept
    inked = glyph[kept]  # (all of them > 0, as the cut is)
    peak = _kth_largest(inked, inked.size // 10 + 1) if inked.size else 1.0
    glyph = np.minimum(glyph / np.float32(max(peak, 1e-3)), np.float32(1.0))  # (np.clip: slower)
    canvas = np.zeros((height, width), np.float32)
    total = float(glyph.sum())
    if total > 0:
        cy = float((glyph.sum(axis=1) * np.arange(gh)).sum() / total)
        cx = float((glyph.sum(axis=0) * np.arange(gw)).sum() / total)
    else:
        cy, cx = (gh - 1) / 2.0, (gw - 1) / 2.0
    y0 = min(max(round((height - 1) / 2.0 - cy), 0), height - gh)
    x0 = min(max(round((width - 1) / 2.0 - cx), 0), width - gw)
    canvas[y0:y0 + gh, x0:x0 + gw] = glyph
    return canvas[:, :, None]


def _resize(a: np.ndarray, size: tuple) -> np.ndarray:
    """Values in [0, 1] (ink strength: never outside) resized to (width, height) in 8 bits (what
    an input keeps): area averaging down, bilinear up. Pillow's 8-bit resize is several times its
    float one. (The bytes go in and out by frombuffer and tobytes: fromarray and asarray take
    longer than the resize.)"""
    levels = np.rint(a * np.float32(255)).astype(np.uint8)  # rint: np.round's halves to even, sooner
    im = Image.frombuffer("L", (a.shape[1], a.shape[0]), levels, "raw", "L", 0, 1)
    resized = im.resize(size, Image.Resampling.BOX if size[0] < im.width else Image.Resampling.BILINEAR)
    return np.frombuffer(resized.tobytes(), np.uint8).reshape(size[1], size[0]) * np.float32(1 / 255)


@lru_cache(maxsize=32)
def _cell_index(n: int, cells: int) -> np.ndarray:
    """For each of n pixels, its 4-pixel cell (the last cells hold the remainder)."""
    index = np.minimum(np.arange(n) // 4, cells - 1)
    index.flags.writeable = False
    return index


def _to_pixels(cells: np.ndarray, h: int, w: int) -> np.ndarray:
    """A quarter-resolution array brought to h x w pixels, each 4 x 4 block its cell's value."""
    if cells.shape == (h // 4, w // 4) and h % 4 == 0 and w % 4 == 0:
        return cells.repeat(4, axis=0).repeat(4, axis=1)
    return cells[_cell_index(h, cells.shape[0])][:, _cell_index(w, cells.shape[1])]


def _cell_span(start: int, end: int, n: int, count: int) -> tuple[int, int]:
    """The [start, end) pixels of the cells [start, end) (of ``count`` along ``n`` pixels; the
    last cell holds the remainder, see _to_pixels)."""
    return 4 * start, n if end == count else 4 * end


def _main_cluster(mask: np.ndarray, strength: np.ndarray, origin: tuple, shape: tuple,
                  gap: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the ink's main cluster: row, column, then row projections of
    the picture's ink again, each within the last, so stray marks drop out. The ink is ``mask``
    (its ``strength``) in the card's box at ``origin`` (top, left) of a picture of ``shape``;
    the cluster is in the box's coordinates."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if _one_run(rows, gap) and _one_run(columns, gap):
        # (the common case) Each projection below then finds all the ink: its bounding box.
        return int(rows[0]), int(rows[-1]) + 1, int(columns[0]), int(columns[-1]) + 1
    (y0, x0), (h, w) = origin, shape
    ink = np.zeros((h, w), np.float32)
    ink[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]] = np.where(mask, strength, np.float32(0.0))
    top, bottom, left, right = 0, h, 0, w
    for axis in (1, 0, 1):
        if axis == 1:
            top_, bottom_ = _main_run(ink[top:bottom, left:right].sum(axis=1), gap)
            top, bottom = top + top_, top + bottom_
        else:
            left_, right_ = _main_run(ink[top:bottom, left:right].sum(axis=0), gap)
            left, right = left + left_, left + right_
    return top - y0, bottom - y0, left - x0, right - x0


def _one_run(idx: np.ndarray, gap: int) -> bool:
    """Whether the sorted positions ``idx`` (not none) are surely one run once gaps up to ``gap``
    are bridged: all their gaps together are no wider. (Several narrow gaps can be one run too:
    _main_run looks at each.)"""
    return idx[-1] + 1 - idx[0] - idx.size <= gap


def _main_run(profile: np.ndarray, gap: int) -> tuple[int, int]:
    """The [start, end) run of non-zero profile (gaps up to ``gap`` bridged) that holds the most
    ink, discounted by its distance from the centre so clutter at the edge loses to the card."""
    idx = np.flatnonzero(profile)
    if idx.size == 0:
        return 0, len(profile)
    if _one_run(idx, gap):  # (the common case)
        return int(idx[0]), int(idx[-1]) + 1
    breaks = np.flatnonzero(np.diff(idx) > gap + 1)
    starts = np.concatenate((idx[:1], idx[breaks + 1]))
    ends = np.concatenate((idx[breaks] + 1, idx[-1:] + 1))
    if starts.size == 1:
        return int(starts[0]), int(ends[0])
    csum = np.concatenate(([0.0], np.cumsum(profile, dtype=np.float64)))
    centre = len(profile) / 2.0
    score = (csum[ends] - csum[starts]) * (1.0 - 0.5 * np.abs((starts + ends) / 2.0 - centre) / centre)
    best = int(np.argmax(score))
    return int(starts[best]), int(ends[best])
