"""Preprocessing on the pictures real cards make (issue 19): close-ups that are all paper, cards
held up in a room, bold markers and thin ballpoints in black or blue, white to yellow and squared
paper, shadows and gradients, turned, blurred and JPEG-compressed. Each picture is drawn here with
a known glyph; preprocessing must find that glyph and give the same input as for the glyph drawn
cleanly, and must find nothing where there is nothing."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from device.preprocess import PreprocessSettings, preprocess

SETTINGS = PreprocessSettings()
SHAPE = (32, 32, 1)
PAPERS = {"white": (248, 248, 245), "grey": (200, 200, 195), "beige": (238, 226, 200), "yellow": (250, 238, 160)}
INKS = {"black": (20, 20, 25), "blue": (35, 50, 160)}


def glyph_strokes(digit: str, box, width: float):
    """The strokes of a few digits as polylines in ``box`` (left, top, right, bottom)."""
    l, t, r, b = box
    w, h = r - l, b - t
    if digit == "7":
        return [[(l, t), (r, t), (l + 0.35 * w, b)]]
    if digit == "4":
        return [[(l + 0.65 * w, b), (l + 0.65 * w, t), (l, t + 0.65 * h), (r, t + 0.65 * h)]]
    if digit == "0":
        return [[(l + w / 2 + w / 2 * math.cos(a), t + h / 2 + h / 2 * math.sin(a))
                 for a in np.linspace(0, 2 * math.pi, 49)]]
    raise ValueError(digit)


def draw(digit: str, size, box, width: float, paper=(248, 248, 245), ink=(20, 20, 25), angle=0.0,
         squared=False) -> Image.Image:
    """Paper of ``size`` with the digit drawn in ``box`` with a pen ``width`` pixels wide, the
    whole sheet turned by ``angle`` degrees about the glyph's centre."""
    sheet = Image.new("RGB", size, paper)
    pen = ImageDraw.Draw(sheet)
    if squared:
        step = max(size) // 16
        for x in range(step // 2, size[0], step):
            pen.line([(x, 0), (x, size[1])], fill=(160, 185, 230), width=max(1, max(size) // 400))
        for y in range(step // 2, size[1], step):
            pen.line([(0, y), (size[0], y)], fill=(160, 185, 230), width=max(1, max(size) // 400))
    glyph = Image.new("L", size, 0)
    for line in glyph_strokes(digit, box, width) if digit else []:  # None: blank paper
        ImageDraw.Draw(glyph).line(line, fill=255, width=round(width), joint="curve")
    if angle:
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        glyph = glyph.rotate(angle, Image.Resampling.BILINEAR, center=centre)
    sheet.paste(Image.new("RGB", size, ink), mask=glyph)
    return sheet


def camera(picture: Image.Image, *, gradient=0.0, shadow=0.0, blur=0.0, noise=0.0, jpeg=None, seed=0) -> Image.Image:
    """Light across the picture (a gradient, a soft shadow), lens blur, sensor noise, JPEG."""
    if blur:
        picture = picture.filter(ImageFilter.GaussianBlur(blur))
    a = np.asarray(picture, np.float32) / 255.0
    h, w = a.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = 1.0 - gradient * xx / w
    if shadow:
        light = light * (1.0 - shadow * np.exp(-((xx - 0.25 * w) ** 2 + (yy - 0.3 * h) ** 2) / (2 * (0.2 * w) ** 2)))
    a = a * light[:, :, None] + np.random.default_rng(seed).normal(0, noise, a.shape[:2])[:, :, None]
    out = Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8), "RGB")
    if jpeg:
        buf = io.BytesIO()
        out.save(buf, "JPEG", quality=jpeg)
        out = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return out


def close_up(digit="4", width=24.0, size=(640, 480), **kw):
    """A close-up: the glyph fills 70 % of the picture's height; the paper is all there is."""
    w, h = size
    return draw(digit, size, (w / 2 - 0.27 * h, 0.15 * h, w / 2 + 0.27 * h, 0.85 * h), width, **kw)


def reference(digit="4", width=24.0, angle=0.0):
    """The same glyph and pen, black on white, as the input preprocessing should give."""
    p = preprocess(close_up(digit, width, angle=angle), SETTINGS, SHAPE)
    assert p.found
    return p.input


def assert_reads(picture, expected, least=0.8):
    p = preprocess(picture, SETTINGS, SHAPE)
    assert p.found, p.reason
    assert p.input.shape == SHAPE and p.input.max() == 1.0
    # Compared a little blurred: a thin stroke one pixel off is the same glyph.
    soft = [np.asarray(Image.fromarray((x[:, :, 0] * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.0)), np.float32)
            for x in (p.input, expected)]
    r = float(np.corrcoef(soft[0].ravel(), soft[1].ravel())[0, 1])
    assert r > least, f"correlation {r:.2f} with the clean glyph"
    return p


# --- close-ups: the whole picture is paper ----------------------------------------------------

@pytest.mark.parametrize("paper", sorted(PAPERS))
@pytest.mark.parametrize("ink", sorted(INKS))
@pytest.mark.parametrize("digit", ["4", "0", "7"])
def test_close_up_on_any_paper_in_any_ink(paper, ink, digit):
    assert_reads(camera(close_up(digit, paper=PAPERS[paper], ink=INKS[ink]), gradient=0.2, noise=0.01, jpeg=80),
                 reference(digit))


@pytest.mark.parametrize("digit", ["4", "0", "7"])
@pytest.mark.parametrize("width", [6, 12, 48, 84])  # 1.5 and 3 px at the working size; a marker up to 1/4 of the glyph
def test_thin_ballpoint_and_bold_marker(digit, width):
    for ink in INKS.values():
        assert_reads(camera(close_up(digit, width, ink=ink), blur=1.0, noise=0.01, jpeg=85), reference(digit, width))


@pytest.mark.parametrize("digit", ["4", "0"])
def test_squared_paper(digit):
    for width in (12, 30):
        assert_reads(camera(close_up(digit, width, squared=True), noise=0.01), reference(digit, width))


@pytest.mark.parametrize("angle", [-20, -10, 10, 20])
def test_turned_up_to_20_degrees(angle):
    assert_reads(camera(close_up("7", angle=angle), blur=1.5, jpeg=60), reference("7", angle=angle))


@pytest.mark.parametrize("light", [dict(gradient=0.5), dict(shadow=0.5), dict(gradient=0.3, shadow=0.4),
                                   dict(blur=2.5, noise=0.03, jpeg=35)])
def test_shadows_gradients_blur_and_a_noisy_jpeg(light):
    for digit in ("4", "0"):
        assert_reads(camera(close_up(digit), **light), reference(digit))


def test_a_glyph_cut_by_the_picture_border_is_read_whole():
    """A close-up so tight that the strokes run off the picture: the border is not a card edge."""
    w, h = 640, 480
    tight = draw("4", (w, h), (w / 2 - 0.4 * h, -0.05 * h, w / 2 + 0.4 * h, 1.05 * h), 40)
    p = assert_reads(camera(tight, noise=0.01), reference("4", 40), least=0.6)
    assert p.box[1] <= 5 and p.box[3] >= h - 5


# --- a card held up in a room --------------------------------------------------------------------

def room_with_card(digit="4", width=10.0, wall=(90, 95, 100), card_paper=(245, 245, 240), hand=True, seed=0,
                   clutter=True, angle=12.0):
    """A 640 x 480 room: a wall with clutter, a card turned by ``angle`` near the middle, a hand
    holding its corner."""
    rng = np.random.default_rng(seed)
    room = Image.new("RGB", (640, 480), wall)
    pen = ImageDraw.Draw(room)
    if clutter:
        for _ in range(6):
            x, y = rng.uniform(0, 640), rng.uniform(0, 480)
            grey = int(rng.uniform(20, 230))
            pen.rectangle((x, y, x + rng.uniform(30, 160), y + rng.uniform(30, 160)), fill=(grey, grey, grey + 5))
        pen.line((20, 460, 300, 380), fill=(30, 30, 30), width=6)  # a cable
    card = draw(digit, (240, 300), (50, 60, 190, 240), width, paper=card_paper)
    mask = Image.new("L", card.size, 255)
    card, mask = card.rotate(angle, expand=True), mask.rotate(angle, expand=True)
    room.paste(card, (320 - card.width // 2, 240 - card.height // 2), mask)
    if hand:  # skin, holding the card's lower right corner
        pen.ellipse((400, 330, 520, 470), fill=(205, 160, 130))
    return room


@pytest.mark.parametrize("seed", range(4))
def test_card_in_a_room_with_a_hand_and_clutter(seed):
    expected = preprocess(draw("4", (240, 300), (50, 60, 190, 240), 10).rotate(12, expand=True, fillcolor=(245, 245, 240)),
                          SETTINGS, SHAPE).input
    picture = camera(room_with_card(seed=seed), gradient=0.3, blur=1.0, noise=0.01, jpeg=70, seed=seed)
    p = assert_reads(picture, expected)
    left, top, right, bottom = p.box
    assert 200 < left and right < 440 and 90 < top and bottom < 390, p.box  # on the card


def test_card_in_a_room_as_light_as_the_card():
    """A white card on a white wall: the card's edge (a step in brightness) still parts them."""
    picture = camera(room_with_card("7", wall=(225, 225, 225), card_paper=(250, 250, 250), hand=False), noise=0.01)
    expected = preprocess(draw("7", (240, 300), (50, 60, 190, 240), 10).rotate(12, expand=True, fillcolor=(245, 245, 240)),
                          SETTINGS, SHAPE).input
    assert_reads(picture, expected)


def room_with_card_beside_a_white_sheet(digit="4", card_paper=(175, 175, 170)):
    """A grey card with a glyph, and beside it, nearer the middle, a blank white sheet brighter
    than the card: the brightest paper near the centre is blank."""
    room = Image.new("RGB", (640, 480), (70, 72, 75))
    ImageDraw.Draw(room).rectangle((150, 120, 330, 330), fill=(250, 250, 250))  # the white sheet
    card = draw(digit, (200, 250), (40, 50, 160, 200), 10, paper=card_paper)
    room.paste(card, (350, 130))
    return room


def test_a_card_beside_a_brighter_blank_sheet_is_read():
    """The white sheet is the first candidate and blank; the glyph's ink near the centre, off
    it, makes preprocessing look on, and the grey card is read (before: "no ink")."""
    expected = preprocess(draw("4", (200, 250), (40, 50, 160, 200), 10), SETTINGS, SHAPE).input
    p = assert_reads(camera(room_with_card_beside_a_white_sheet(), noise=0.01), expected)
    assert p.box[0] > 340, p.box  # on the card, not the sheet
    # Without the glyph both are blank: nothing to read, whichever is taken.
    blank = preprocess(camera(room_with_card_beside_a_white_sheet(None), noise=0.01), SETTINGS, SHAPE)
    assert not blank.found and blank.reason == "no ink"


def test_a_cable_across_the_cards_edge_is_not_part_of_the_glyph():
    """A dark cable lies across the card's lower edge, onto the card, short of the glyph: ink that
    runs into the card's edge is not the glyph's (before: the crop took the cable's end in)."""
    room = room_with_card("4", hand=False, clutter=False, angle=0)  # the card: (200, 90)-(440, 390)
    ImageDraw.Draw(room).line((330, 470, 420, 350), fill=(40, 40, 45), width=5)
    expected = preprocess(draw("4", (240, 300), (50, 60, 190, 240), 10), SETTINGS, SHAPE).input
    p = assert_reads(camera(room, noise=0.01), expected)
    left, top, right, bottom = p.box
    assert right < 400 and bottom < 340, p.box  # the glyph's strokes end at x 390, y 330


# --- nothing to read ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,picture", [
    ("blank close-up with a shadow", camera(Image.new("RGB", (640, 480), PAPERS["white"]), shadow=0.5, noise=0.01)),
    ("blank yellow paper, a gradient", camera(Image.new("RGB", (640, 480), PAPERS["yellow"]), gradient=0.4, jpeg=50)),
    ("blank squared paper", camera(close_up(None, squared=True), noise=0.01)),
    ("a blank card in a room", camera(room_with_card(None, hand=False, clutter=False), noise=0.01)),
    ("all black", Image.new("RGB", (640, 480), (0, 0, 0))),
    ("all white", Image.new("RGB", (640, 480), (255, 255, 255))),
    ("one colour", Image.new("RGB", (640, 480), (40, 120, 200))),
])
def test_nothing_to_read(name, picture):
    p = preprocess(picture, SETTINGS, SHAPE)
    assert not p.found and p.reason in ("no card", "no ink", "too dark"), (name, p.reason, p.box)
