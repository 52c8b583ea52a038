"""Template sheets: print one A4 page per label, pupils draw in its cells, a phone photo of each
filled page becomes a training folder ``DATA_DIR/<label>/<sheet>-<cell>.png``.

A page has an ArUco marker (4x4 bits, dictionary DICT_4X4_50, ids 0-3) in each corner, the label
printed large, a grid of cells, and the label and grid once more as a strip of small squares (a
code), so cutting needs no text recognition. Cutting finds the markers with OpenCV (the optional
``sheets`` extra), maps the photo onto the flat page with the homography of their corners, reads
the code, and cuts every cell; a cell with no ink (device.preprocess says "no ink") is skipped.

Making a sheet needs only Pillow: the four markers' bits are below (tests check them against
OpenCV's dictionary).
"""

from __future__ import annotations

import os
import shutil
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from device.preprocess import ImageError, PreprocessSettings, load_image, paper_brightness, preprocess
from training.data import DataError
from training.options import output_file, writable_folder

# --- the page, in millimetres -----------------------------------------------------------------
PAGE_MM = (210.0, 297.0)               # A4 portrait
DPI = 150                              # of the printed PDF
MARKER_MM = 18.0                       # a marker: 6 x 6 modules of 3 mm (black border + 4 x 4 bits)
MARKER_AT = {0: (10.0, 10.0), 1: (182.0, 10.0), 2: (182.0, 269.0), 3: (10.0, 269.0)}  # top-left corners
# Bits of DICT_4X4_50 ids 0..3, row by row, 1 = white.
MARKER_BITS = {
    0: ("1011", "0101", "0011", "0010"),
    1: ("0000", "1111", "1001", "1010"),
    2: ("0011", "0011", "0010", "1101"),
    3: ("1001", "1001", "0100", "0110"),
}
CODE_ROWS, CODE_COLS = 4, 39           # the label code: 156 squares
CODE_PITCH_MM, CODE_SQUARE_MM = 4.2, 2.6
CODE_ORIGIN_MM = (105.0 - CODE_COLS * CODE_PITCH_MM / 2, 31.0)
GRID_MM = (12.0, 51.0, 198.0, 265.0)   # left, top, right, bottom of the cells
MAX_LABEL_BYTES = 16
GRID_GREY = 200                        # lighter than ink (preprocessing's threshold is 25 % darker)
WARP_PX_PER_MM = 5.0                   # resolution of the flattened page when cutting
CELL_INSET = 0.07                      # of a cell's size, cut off each side (grid lines, warp error)


class SheetError(DataError):
    """A sheet that cannot be made or a photo that cannot be cut; the message names it."""


@dataclass(frozen=True)
class SheetCode:
    label: str
    rows: int
    cols: int


def check_label(label: str) -> str:
    raw = label.encode("utf-8")
    if not label or label != label.strip() or label.startswith(".") or any(c in label for c in "/\\:\0"):
        raise SheetError(f"label {label!r}: must be a plain folder name (no '/', '\\', ':', no leading '.' or spaces)")
    if len(raw) > MAX_LABEL_BYTES:
        raise SheetError(f"label {label!r}: at most {MAX_LABEL_BYTES} bytes (UTF-8) fit on a sheet")
    return label


def encode(code: SheetCode) -> np.ndarray:
    """The code's squares (CODE_ROWS x CODE_COLS, 1 = ink): grid size, label, checksum."""
    raw = check_label(code.label).encode("utf-8")
    if not (1 <= code.rows <= 15 and 1 <= code.cols <= 15):
        raise SheetError(f"grid {code.rows}x{code.cols}: rows and columns must be 1..15")
    payload = bytes([code.rows << 4 | code.cols, len(raw)]) + raw.ljust(MAX_LABEL_BYTES, b"\0")
    payload += bytes([zlib.crc32(payload) & 0xFF])
    bits = np.unpackbits(np.frombuffer(payload, np.uint8))
    squares = np.zeros(CODE_ROWS * CODE_COLS, np.uint8)
    squares[:len(bits)] = bits
    return squares.reshape(CODE_ROWS, CODE_COLS)


def decode(squares: np.ndarray) -> SheetCode | None:
    bits = squares.reshape(-1)[:(MAX_LABEL_BYTES + 3) * 8].astype(np.uint8)
    payload = np.packbits(bits).tobytes()
    if zlib.crc32(payload[:-1]) & 0xFF != payload[-1]:
        return None
    rows, cols, n = payload[0] >> 4, payload[0] & 15, payload[1]
    if n > MAX_LABEL_BYTES or rows < 1 or cols < 1:
        return None
    try:
        return SheetCode(payload[2:2 + n].decode("utf-8"), rows, cols)
    except UnicodeDecodeError:
        return None


def cell_boxes(rows: int, cols: int) -> list[tuple[float, float, float, float]]:
    """Each cell's (left, top, right, bottom) in mm, row by row from the top left."""
    l, t, r, b = GRID_MM
    w, h = (r - l) / cols, (b - t) / rows
    return [(l + c * w, t + k * h, l + (c + 1) * w, t + (k + 1) * h) for k in range(rows) for c in range(cols)]


def marker_corners_mm(marker_id: int) -> np.ndarray:
    """A marker's four corners in mm, in OpenCV's order (top-left, top-right, bottom-right, bottom-left)."""
    x, y = MARKER_AT[marker_id]
    s = MARKER_MM
    return np.array([[x, y], [x + s, y], [x + s, y + s], [x, y + s]], np.float64)


# --- making ------------------------------------------------------------------------------------

def _font(px: float):
    return ImageFont.load_default(size=max(8, int(px)))


def render_page(label: str, rows: int = 6, cols: int = 4, dpi: int = DPI) -> Image.Image:
    """One printable page (grey Pillow image at ``dpi``) for ``label``."""
    squares = encode(SheetCode(label, rows, cols))
    k = dpi / 25.4
    im = Image.new("L", (round(PAGE_MM[0] * k), round(PAGE_MM[1] * k)), 255)
    draw = ImageDraw.Draw(im)

    def box(l, t, r, b):
        return (round(l * k), round(t * k), round(r * k) - 1, round(b * k) - 1)

    module = MARKER_MM / 6
    for marker_id, (x, y) in MARKER_AT.items():
        draw.rectangle(box(x, y, x + MARKER_MM, y + MARKER_MM), fill=0)
        for r, row in enumerate(MARKER_BITS[marker_id]):
            for c, bit in enumerate(row):
                if bit == "1":
                    draw.rectangle(box(x + (c + 1) * module, y + (r + 1) * module,
                                       x + (c + 2) * module, y + (r + 2) * module), fill=255)
    draw.text((105 * k, 19 * k), label, fill=0, font=_font(11 * k), anchor="mm")
    draw.text((105 * k, 27.5 * k), f"cardcam: draw one '{label}' in each box, dark pen, inside the lines",
              fill=90, font=_font(3.2 * k), anchor="mm")
    ox, oy = CODE_ORIGIN_MM
    inset = (CODE_PITCH_MM - CODE_SQUARE_MM) / 2
    for r in range(CODE_ROWS):
        for c in range(CODE_COLS):
            if squares[r, c]:
                x, y = ox + c * CODE_PITCH_MM + inset, oy + r * CODE_PITCH_MM + inset
                draw.rectangle(box(x, y, x + CODE_SQUARE_MM, y + CODE_SQUARE_MM), fill=0)
    width = max(1, round(0.3 * k))
    for i, (l, t, r, b) in enumerate(cell_boxes(rows, cols)):
        draw.rectangle(box(l, t, r, b), outline=GRID_GREY, width=width)
        draw.text(((l + 1.5) * k, (t + 1.2) * k), str(i + 1), fill=225, font=_font(2.5 * k), anchor="lt")
    return im


def save_pdf(pages: list, out, dpi: int = DPI) -> Path:
    """Pages (Pillow images) as one PDF, written atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pages[0].save(tmp, "PDF", resolution=float(dpi), save_all=True, append_images=pages[1:])
    os.replace(tmp, out)
    return out


def make_sheets(labels: list[str], out, rows: int = 6, cols: int = 4) -> Path:
    if not labels:
        raise SheetError("--labels: give at least one label, e.g. --labels happy,sad")
    if len(set(labels)) != len(labels):
        raise SheetError(f"--labels: a label is repeated in {','.join(labels)}")
    return save_pdf([render_page(label, rows, cols) for label in labels], out)


# --- cutting -------------------------------------------------------------------------------------

def _cv2():
    try:
        import cv2
    except ImportError:
        raise SheetError("sheet cut needs OpenCV: pip install 'cardcam[sheets]' (opencv-python-headless)") from None
    return cv2


def detect_markers(gray_u8: np.ndarray) -> dict[int, np.ndarray]:
    """Our four corner markers found in a grey photo: {id: 4 x 2 corners in pixels}."""
    cv2 = _cv2()
    dictionary = cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_4X4_50)
    if hasattr(cv2.aruco, "ArucoDetector"):  # OpenCV >= 4.7
        params = cv2.aruco.DetectorParameters()
        corners, ids, _ = cv2.aruco.ArucoDetector(dictionary, params).detectMarkers(gray_u8)
    else:
        corners, ids, _ = cv2.aruco.detectMarkers(gray_u8, dictionary, parameters=cv2.aruco.DetectorParameters_create())
    found = {}
    for c, i in zip(corners, ids.ravel() if ids is not None else []):
        if int(i) in MARKER_AT and int(i) not in found:
            found[int(i)] = np.asarray(c, np.float64).reshape(4, 2)
    return found


def flatten(gray_u8: np.ndarray, markers: dict[int, np.ndarray]) -> np.ndarray:
    """The page seen straight on, WARP_PX_PER_MM pixels per mm (grey uint8)."""
    cv2 = _cv2()
    src = np.concatenate([markers[i] for i in sorted(markers)])
    dst = np.concatenate([marker_corners_mm(i) for i in sorted(markers)]) * WARP_PX_PER_MM
    homography, _ = cv2.findHomography(src, dst, 0)
    size = (round(PAGE_MM[0] * WARP_PX_PER_MM), round(PAGE_MM[1] * WARP_PX_PER_MM))
    return cv2.warpPerspective(gray_u8, homography, size, flags=cv2.INTER_AREA, borderValue=255)


def read_code(page: np.ndarray) -> SheetCode | None:
    """The label code off a flattened page: each square's darkness against the paper around it."""
    k = WARP_PX_PER_MM
    gray = page.astype(np.float32) / 255.0
    paper = paper_brightness(gray, int(round((CODE_SQUARE_MM + 1.0) * k)) | 1)
    ink = np.clip((paper - gray) / np.maximum(paper, 1e-3), 0, 1)
    squares = np.zeros((CODE_ROWS, CODE_COLS), np.uint8)
    ox, oy = CODE_ORIGIN_MM
    half = max(1, int(CODE_SQUARE_MM * 0.3 * k))
    for r in range(CODE_ROWS):
        for c in range(CODE_COLS):
            x = int(round((ox + (c + 0.5) * CODE_PITCH_MM) * k))
            y = int(round((oy + (r + 0.5) * CODE_PITCH_MM) * k))
            squares[r, c] = ink[y - half:y + half + 1, x - half:x + half + 1].mean() > 0.3
    return decode(squares)


@dataclass
class CutResult:
    photo: Path
    label: str
    written: list
    empty: list       # cell numbers with no ink
    unusable: list    # cell numbers preprocessing could not use (e.g. "too much ink")


def cut_photo(photo, out_dir) -> CutResult:
    """Cut one photographed sheet into ``out_dir/<label>/<photo stem>-<cell>.png``. Raises
    SheetError naming the photo when it cannot be read, its markers or its code not found.
    A cell file that exists with other content is never overwritten: the new one gets a suffix."""
    photo = Path(photo)
    try:
        gray = load_image(photo)
    except ImageError as e:
        raise SheetError(str(e)) from None
    gray_u8 = (gray * 255).round().astype(np.uint8)
    markers = detect_markers(gray_u8)
    if len(markers) < 3:
        missing = ", ".join(("top-left", "top-right", "bottom-right", "bottom-left")[i] for i in MARKER_AT if i not in markers)
        raise SheetError(f"{photo}: found {len(markers)} of the sheet's 4 corner markers (missing {missing}); "
                         "photograph the whole page, flat, with all four black corner squares visible")
    page = flatten(gray_u8, markers)
    code = read_code(page)
    if code is None:
        raise SheetError(f"{photo}: found the corner markers but could not read the label code under the title "
                         "(blurred, covered or in a shadow?)")
    # A cell is empty when preprocessing finds no ink in it, even at a quarter of the ink it
    # needs on a card: a small, light drawing is kept.
    settings = PreprocessSettings(min_ink=PreprocessSettings().min_ink / 4)
    folder = Path(out_dir) / code.label
    folder.mkdir(parents=True, exist_ok=True)
    result = CutResult(photo, code.label, [], [], [])
    k = WARP_PX_PER_MM
    for number, (l, t, r, b) in enumerate(cell_boxes(code.rows, code.cols), start=1):
        dx, dy = (r - l) * CELL_INSET, (b - t) * CELL_INSET
        cell = page[int(round((t + dy) * k)):int(round((b - dy) * k)), int(round((l + dx) * k)):int(round((r - dx) * k))]
        prepared = preprocess(cell, settings, (32, 32))
        if not prepared.found:
            (result.empty if prepared.reason in ("no ink", "no card") else result.unusable).append(number)
            continue
        result.written.append(_write_new(folder, f"{photo.stem}-{number:02d}", cell))
    return result


def _write_new(folder: Path, stem: str, cell: np.ndarray) -> Path:
    """Write a PNG atomically; the same content again is a no-op, other content gets -2, -3..."""
    import io

    buf = io.BytesIO()
    Image.fromarray(cell).save(buf, "PNG")
    data = buf.getvalue()
    n = 1
    while True:
        path = folder / (f"{stem}.png" if n == 1 else f"{stem}-{n}.png")
        if not path.exists():
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            return path
        if path.read_bytes() == data:
            return path
        n += 1


# --- CLI -------------------------------------------------------------------------------------------

def cmd_make(args) -> int:
    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    output_file(args.out, ".pdf")
    out = make_sheets(labels, args.out, args.rows, args.cols)
    print(f"wrote {out}: {len(labels)} page(s), {args.rows}x{args.cols} cells each, labels {', '.join(labels)}")
    return 0


def cmd_cut(args) -> int:
    from training import extras

    extras.require("sheets", "sheet cut")  # before the folder is made: none is left empty
    made = not Path(args.out).exists()
    writable_folder(args.out, folder=True)
    failed = 0
    try:
        for photo in args.photos:
            failed += not _cut_one(photo, args.out)
    finally:
        if made and not any(p.is_file() for p in Path(args.out).rglob("*")):
            shutil.rmtree(args.out)  # made by this run, and nothing came of it
    return 1 if failed else 0


def _cut_one(photo, out) -> bool:
    """Cut one photo into out, say what came of it; False when it could not be cut."""
    try:
        r = cut_photo(photo, out)
    except SheetError as e:
        print(f"cardcam-train: {e}", file=sys.stderr)
        return False
    extra = f", {len(r.unusable)} unusable (cells {', '.join(map(str, r.unusable))})" if r.unusable else ""
    print(f"{photo}: '{r.label}', {len(r.written)} cells written to {Path(out) / r.label}, "
          f"{len(r.empty)} empty{extra}")
    return True


def add_commands(sub) -> None:
    """`cardcam-train sheet make|cut` (called from training.cli.build_parser)."""
    p = sub.add_parser("sheet", help="template sheets: print them, cut photos of them into a training folder")
    sheet = p.add_subparsers(dest="sheet_command", required=True, metavar="make|cut")
    m = sheet.add_parser("make", help="a printable PDF, one A4 page per label")
    m.add_argument("--labels", required=True, help="comma-separated labels, e.g. happy,sad")
    m.add_argument("--out", required=True, help="PDF to write")
    m.add_argument("--rows", type=int, default=6)
    m.add_argument("--cols", type=int, default=4)
    m.set_defaults(func=cmd_make)
    c = sheet.add_parser("cut", help="photos of filled sheets -> DATA_DIR/<label>/<sheet>-<cell>.png")
    c.add_argument("photos", nargs="+", metavar="PHOTO")
    c.add_argument("--out", required=True, metavar="DATA_DIR")
    c.set_defaults(func=cmd_cut)
