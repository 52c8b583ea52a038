"""Template sheets: made as a PDF, filled with drawings, photographed at an angle in uneven light,
cut back into DATA_DIR/<label>/<sheet>-<cell>.png, every drawn cell under its own label and
number, empty cells skipped; a photo that cannot be cut is named and the others still go through."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from PIL import Image, ImageFilter

from device.preprocess import paper_brightness
from training import sheets
from training.augment import _perspective_coeffs
from training.cli import main
from training.data import load_folder
from training.smileys import draw_smiley

from conftest import blank_paper, require

pytestmark = pytest.mark.laptop  # cardcam-train on the laptop, not the Pi

cv2 = require("cv2")  # skipped without OpenCV; a failure under CI

ROWS, COLS = 6, 4
EMPTY = {"happy": {4, 11, 24}, "sad": {1, 13}}  # cells left blank (numbered from 1)


def fill_page(label: str) -> Image.Image:
    """A printed sheet with a smiley of its label drawn into every cell but the EMPTY ones."""
    page = sheets.render_page(label, ROWS, COLS)
    k = sheets.DPI / 25.4
    a = np.asarray(page).copy()
    for number, (l, t, r, b) in enumerate(sheets.cell_boxes(ROWS, COLS), start=1):
        if number in EMPTY[label]:
            continue
        glyph = draw_smiley(label, np.random.default_rng([7, number, label == "sad"]))
        side = int((b - t) * k * 0.8)
        g = np.asarray(Image.fromarray(glyph).resize((side, side), Image.Resampling.BILINEAR))
        x0, y0 = int((l + r) / 2 * k - side / 2), int((t + b) / 2 * k - side / 2)
        a[y0:y0 + side, x0:x0 + side] = np.minimum(a[y0:y0 + side, x0:x0 + side], g)  # ink on paper
    return Image.fromarray(a)


def photograph(page: Image.Image, angle: float, seed: int, size=(1500, 1150)) -> Image.Image:
    """The page lying on a desk, photographed: turned by ``angle`` degrees, in perspective, a light
    gradient and a soft shadow, a little blur, sensor noise, JPEG."""
    rng = np.random.default_rng(seed)
    w, h = size
    pw, ph = page.size
    scale = 0.9 * min(w, h) / math.hypot(pw, ph) * 1.2
    theta = math.radians(angle)
    corners = np.array([[-pw / 2, -ph / 2], [pw / 2, -ph / 2], [pw / 2, ph / 2], [-pw / 2, ph / 2]]) * scale
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    dst = corners @ rot.T + [w / 2, h / 2]
    dst = dst + rng.uniform(-0.06, 0.06, (4, 2)) * [pw * scale, ph * scale]  # perspective
    coeffs = _perspective_coeffs(dst.tolist(), [(0, 0), (pw, 0), (pw, ph), (0, ph)])
    desk = Image.new("L", size, int(rng.uniform(60, 120)))
    warped = page.transform(size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
    mask = Image.new("L", page.size, 255).transform(size, Image.Transform.PERSPECTIVE, coeffs)
    photo = Image.composite(warped, desk, mask).filter(ImageFilter.GaussianBlur(0.8))
    f = np.asarray(photo, np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = 0.65 + 0.35 * (xx * math.cos(seed) + yy * math.sin(seed)) / max(w, h)
    sx, sy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    light *= 1 - 0.45 * np.exp(-((xx - sx) ** 2 + (yy - sy) ** 2) / (2 * (0.18 * w) ** 2))  # a hand's shadow
    f = f * light + rng.normal(0, 3.0, f.shape)
    return Image.fromarray(np.clip(f, 0, 255).astype(np.uint8))


def ink_map(gray_u8: np.ndarray, size=(60, 45)) -> np.ndarray:
    """How much darker than its paper each pixel is, at a small fixed size (shadows removed)."""
    g = np.asarray(Image.fromarray(gray_u8).resize(size, Image.Resampling.BOX), np.float32) / 255
    paper = paper_brightness(g, 9)
    return np.clip((paper - g) / np.maximum(paper, 1e-3), 0, 1)


def printed_cell(page: np.ndarray, number: int) -> np.ndarray:
    """The same part of a cell that cutting keeps, from the printed page."""
    k = sheets.DPI / 25.4
    l, t, r, b = sheets.cell_boxes(ROWS, COLS)[number - 1]
    dx, dy = (r - l) * sheets.CELL_INSET, (b - t) * sheets.CELL_INSET
    return page[round((t + dy) * k):round((b - dy) * k), round((l + dx) * k):round((r - dx) * k)]


def _corr(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    pages = {"happy": fill_page("happy"), "sad": fill_page("sad")}
    paths = {}
    for label, angle, seed, name in (("happy", 24, 1, "IMG_0001.jpg"), ("sad", 183, 2, "IMG_0002.jpg")):
        paths[label] = d / name
        photograph(pages[label], angle, seed).save(paths[label], quality=85)
    return pages, paths


def test_markers_are_opencvs_dictionary():
    dictionary = cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_4X4_50)
    for marker_id, rows in sheets.MARKER_BITS.items():
        image = cv2.aruco.generateImageMarker(dictionary, marker_id, 6)
        assert ["".join("1" if v > 127 else "0" for v in row) for row in image[1:5, 1:5]] == list(rows)


@pytest.mark.parametrize("label", ["happy", "sad", "thumbs_up", "Ünïcødé", "x" * 16])
def test_label_code_round_trip(label):
    squares = sheets.encode(sheets.SheetCode(label, 5, 3))
    assert sheets.decode(squares) == sheets.SheetCode(label, 5, 3)
    broken = squares.copy()
    broken[1, 5] ^= 1
    assert sheets.decode(broken) is None


def test_sheet_make_writes_one_a4_page_per_label(tmp_path, capsys):
    out = tmp_path / "sheet.pdf"
    assert main(["sheet", "make", "--labels", "happy,sad", "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert len(re.findall(rb"/Type\s*/Page\b", data)) == 2
    media = re.findall(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", data)
    assert media and all(abs(float(w) - 595.3) < 2 and abs(float(h) - 841.9) < 2 for w, h in media)  # A4 in points
    assert "2 page(s)" in capsys.readouterr().out


@pytest.mark.parametrize("labels, message", [
    ("happy,happy", "repeated"), ("a/b", "plain folder name"), ("x" * 17, "at most 16 bytes"), (",", "at least one"),
])
def test_sheet_make_refuses_bad_labels(tmp_path, capsys, labels, message):
    assert main(["sheet", "make", "--labels", labels, "--out", str(tmp_path / "s.pdf")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "s.pdf").exists()


def test_photographed_sheets_come_back_cell_by_cell(tmp_path, photos, capsys):
    pages, paths = photos
    out = tmp_path / "data"
    assert main(["sheet", "cut", str(paths["happy"]), str(paths["sad"]), "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "'happy', 21 cells written" in report and "'sad', 22 cells written" in report
    for label, photo in paths.items():
        expected = {f"{photo.stem}-{n:02d}.png" for n in range(1, ROWS * COLS + 1) if n not in EMPTY[label]}
        assert {p.name for p in (out / label).iterdir()} == expected
        # Each cut cell shows what was drawn in that cell of the printed page, in place, not
        # another cell's drawing.
        printed = np.asarray(pages[label])
        truth = {n: ink_map(printed_cell(printed, n)) for n in range(1, ROWS * COLS + 1) if n not in EMPTY[label]}
        for n in truth:
            got = ink_map(np.asarray(Image.open(out / label / f"{photo.stem}-{n:02d}.png")))
            scores = {m: _corr(got, v) for m, v in truth.items()}
            assert max(scores, key=scores.get) == n and scores[n] > 0.6, (label, n, scores[n])
    # The folder is a training set as it is (`cardcam-train train --task folder:DATA_DIR`).
    data = load_folder(out)
    assert data.names == ["happy", "sad"] and np.bincount(data.labels).tolist() == [21, 22]


def test_a_photo_that_cannot_be_cut_is_named_and_the_others_go_through(tmp_path, photos, capsys):
    _, paths = photos
    blank = tmp_path / "desk.jpg"
    blank_paper((800, 600), level=128).save(blank)  # a desk with no sheet on it
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture")
    out = tmp_path / "data"
    rc = main(["sheet", "cut", str(blank), str(paths["sad"]), str(broken), "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 1
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2
    assert str(blank) in lines[0] and "corner markers" in lines[0]
    assert str(broken) in lines[1]
    assert len(list((out / "sad").iterdir())) == 22


def test_cutting_again_never_overwrites_other_data(tmp_path, photos):
    _, paths = photos
    out = tmp_path / "data"
    first = sheets.cut_photo(paths["happy"], out)
    again = sheets.cut_photo(paths["happy"], out)
    assert again.written == first.written and len(list((out / "happy").iterdir())) == 21
    mine = first.written[0]
    mine.write_bytes(b"a pupil's own file")
    third = sheets.cut_photo(paths["happy"], out)
    assert mine.read_bytes() == b"a pupil's own file"
    assert third.written[0].name == mine.stem + "-2.png"
