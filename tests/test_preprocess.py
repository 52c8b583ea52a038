"""Preprocessing: any picture -> the network's input, or a clean "not found"; bad files are
refused with an ImageError naming the file."""

from __future__ import annotations

import re
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from device.preprocess import (LOAD_SIDE, MAX_PIXELS, VERSION, ImageError, PreprocessSettings, Prepared, load_image,
                               preprocess)

SETTINGS = PreprocessSettings()
SHAPE = (32, 32, 1)


def correlation(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def ink_centre(x: np.ndarray) -> tuple[float, float]:
    x = x[:, :, 0]
    total = x.sum()
    return float((x.sum(axis=1) * np.arange(x.shape[0])).sum() / total), \
        float((x.sum(axis=0) * np.arange(x.shape[1])).sum() / total)


def assert_valid_input(p: Prepared, picture_size=None):
    assert p.found and p.reason == ""
    assert p.input.shape == SHAPE and p.input.dtype == np.float32
    assert p.input.min() == 0.0 and p.input.max() == 1.0
    if picture_size is not None:
        w, h = picture_size
        left, top, right, bottom = p.box
        # Within the picture, give or take the rounding of the working sizes (the box is found
        # at work_size and may overshoot the edge by a fraction of a working pixel).
        slack = 1 + max(w, h) / SETTINGS.work_size
        assert -slack <= left < right <= w + slack and -slack <= top < bottom <= h + slack, (p.box, picture_size)


# --- every Pillow mode -----------------------------------------------------------------------

def _mode_variants(draw):
    """The same drawn "7" in every Pillow mode a file can come in. Where a mode has alpha, the
    paper is transparent *black*: read without compositing on white, the card would be black."""
    base = draw("7")
    grey = np.asarray(base)
    ink_mask = Image.fromarray(((grey < 128) * 255).astype(np.uint8))
    paletted = Image.new("P", base.size, 0)
    paletted.putpalette([0, 0, 0, 10, 10, 10] + [0] * (254 * 3))
    paletted.paste(1, mask=ink_mask)
    paletted.info["transparency"] = 0
    return base, {
        "L": base,
        "RGB": draw("7", paper=(250, 240, 200), ink=(20, 30, 90), mode="RGB"),
        "RGBA": draw("7", paper=(0, 0, 0, 0), ink=(0, 0, 0, 255), mode="RGBA"),
        "LA": draw("7", paper=(0, 0), ink=(0, 255), mode="LA"),
        "P": base.convert("P"),
        "P-transparency": paletted,
        "I;16": Image.fromarray(grey.astype(np.uint16) * 257),
        "I-8bit": Image.fromarray(grey.astype(np.int32)),
        "I-16bit": Image.fromarray(grey.astype(np.int32) * 257),
        "F": Image.fromarray(grey.astype(np.float32) / 255.0),
        "CMYK": base.convert("CMYK"),
        "1": base.convert("1", dither=Image.Dither.NONE),
    }


MODES = ["L", "RGB", "RGBA", "LA", "P", "P-transparency", "I;16", "I-8bit", "I-16bit", "F", "CMYK", "1"]


@pytest.mark.parametrize("variant", MODES)
def test_every_pillow_mode_finds_the_ink_in_the_same_place(variant, card_drawer, tmp_path):
    base, variants = _mode_variants(card_drawer)
    im = variants[variant]
    assert im.mode == variant.split("-")[0]
    reference = preprocess(base, SETTINGS, SHAPE)
    assert_valid_input(reference, base.size)
    direct = preprocess(im, SETTINGS, SHAPE)
    assert_valid_input(direct, im.size)
    assert correlation(direct.input, reference.input) > 0.9
    # And from a file, as `cardcam predict` reads it.
    suffix = ".tif" if im.mode in ("I", "F", "CMYK") else ".png"
    path = tmp_path / f"card{suffix}"
    im.save(path)
    from_file = preprocess(load_image(path), SETTINGS, SHAPE)
    assert_valid_input(from_file, im.size)
    assert correlation(from_file.input, reference.input) > 0.9


def test_grey_levels_from_a_file(tmp_path, card_drawer):
    im = card_drawer("7", paper=200, ink=40)
    path = tmp_path / "card.png"
    im.save(path)
    gray = load_image(path)
    assert gray.dtype == np.float32 and gray.shape == (im.height, im.width)
    np.testing.assert_allclose(gray, np.asarray(im) / 255.0, atol=1e-6)


# --- sizes -----------------------------------------------------------------------------------

def test_tiny_8x8_card_is_read():
    card = np.full((8, 8), 230, np.uint8)
    card[2:6, 3:5] = 20
    assert_valid_input(preprocess(card, SETTINGS, SHAPE), (8, 8))


def test_7x7_is_refused(tmp_path):
    with pytest.raises(ImageError, match="7x7; the smallest accepted is 8x8"):
        preprocess(np.full((7, 7), 200, np.uint8), SETTINGS, SHAPE)
    path = tmp_path / "tiny.png"
    Image.new("L", (7, 7), 200).save(path)
    with pytest.raises(ImageError, match=re.escape(str(path)) + ".*7x7"):
        load_image(path)


@pytest.mark.parametrize("size", [(4032, 3024), (8000, 6000), (8160, 6120)])  # 12, 48 and 50 MP phone photos
def test_phone_photos_are_read_small(tmp_path, card_drawer, size):
    """A phone photo of any usual size is read (a JPEG decoded at 1/2 to 1/8 scale, reduced to
    LOAD_SIDE), and its glyph found as in the same picture at a small size."""
    small = card_drawer("4", size=(400, 300), font_size=200)
    path = tmp_path / "photo.jpg"
    small.resize(size, Image.Resampling.BILINEAR).save(path, quality=90)
    gray = load_image(path)
    assert max(gray.shape) == LOAD_SIDE and gray.shape[1] / gray.shape[0] == pytest.approx(size[0] / size[1], rel=0.01)
    p, reference = preprocess(gray, SETTINGS, SHAPE), preprocess(small, SETTINGS, SHAPE)
    assert_valid_input(p)
    assert correlation(p.input, reference.input) > 0.9


def test_a_png_is_reduced_once_on_load(tmp_path, card_drawer):
    path = tmp_path / "scan.png"
    card_drawer("4", size=(400, 300), font_size=200).resize((3000, 2250)).save(path)
    assert load_image(path).shape == (768, LOAD_SIDE)
    assert load_image(path, longest=None).shape == (2250, 3000)


def test_exif_orientation_is_honoured(tmp_path, card_drawer):
    """A phone held upright stores its picture sideways with EXIF orientation 6 (turn 90 degrees
    clockwise to view): the glyph is read upright."""
    upright = card_drawer("7", size=(300, 400), font_size=200)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the sensor wrote: turned left
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    stored.save(path, exif=exif, quality=95)
    gray = load_image(path)
    assert gray.shape == (400, 300)
    assert correlation(preprocess(gray, SETTINGS, SHAPE).input, preprocess(upright, SETTINGS, SHAPE).input) > 0.9


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims to be width x height (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [14200, 20000, 60000])  # 202, 400 and 3600 megapixels declared
def test_decompression_bomb_header_is_refused(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(side, side))
    assert path.stat().st_size < 100
    with pytest.raises(ImageError) as e:
        load_image(path)
    declared = f"{side}x{side} ({side * side / 1e6:.0f} megapixels)" if side * side <= 2 * MAX_PIXELS else \
        f"over {2 * MAX_PIXELS / 1e6:.0f} megapixels"  # Pillow's own guard refuses it first
    assert str(e.value) == f"{path}: image is {declared}; the most accepted is {MAX_PIXELS / 1e6:.0f} megapixels"


def test_a_header_within_the_limit_is_decoded_and_fails_cleanly(tmp_path):
    path = tmp_path / "liar.png"
    path.write_bytes(png_header_only(12000, 9000))  # 108 MP declared, no pixel data
    with pytest.raises(ImageError, match=re.escape(str(path)) + ": cannot decode image"):
        load_image(path)


# --- nothing to read -------------------------------------------------------------------------

@pytest.mark.parametrize("name,picture", [
    ("blank white", np.full((120, 160), 255, np.uint8)),
    ("blank paper", np.full((120, 160), 215, np.uint8)),
    ("blank black", np.zeros((120, 160), np.uint8)),
    ("uniform grey", np.full((120, 160), 128, np.uint8)),
    ("random noise", np.random.default_rng(0).integers(0, 256, (120, 160)).astype(np.uint8)),
    ("noisy paper", np.clip(np.random.default_rng(1).normal(220, 6, (120, 160)), 0, 255).astype(np.uint8)),
])
def test_nothing_to_read_is_not_found(name, picture):
    p = preprocess(picture, SETTINGS, SHAPE)
    assert not p.found and p.input is None and p.reason, name
    if name == "blank black":
        assert p.reason == "too dark"


@given(picture=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, min_side=8, max_side=48)),
       ink=st.sampled_from(["dark", "light"]))
def test_any_picture_gives_an_input_or_a_reason(picture, ink):
    """Whatever the pixels: no exception, and either a proper input or a reason."""
    p = preprocess(picture, PreprocessSettings(ink=ink), SHAPE)
    if p.found:
        assert_valid_input(p, (picture.shape[1], picture.shape[0]))
    else:
        assert p.reason in ("no ink", "no card", "too dark", "too much ink")


# --- MNIST cards and light ink ---------------------------------------------------------------

def _mnist_examples(mnist, per_digit=2):
    return [(int(d), mnist.images[np.flatnonzero(mnist.labels == d)[k]]) for d in range(10) for k in range(per_digit)]


def test_inverted_mnist_digits_are_found_and_centred(mnist):
    for digit, image in _mnist_examples(mnist):
        p = preprocess(255 - image, SETTINGS, SHAPE)  # MNIST is white on black: make it a card
        assert p.found, f"digit {digit}: {p.reason}"
        assert_valid_input(p, (28, 28))
        cy, cx = ink_centre(p.input)
        centre = (SHAPE[0] - 1) / 2
        assert abs(cy - centre) <= 1.5 and abs(cx - centre) <= 1.5, f"digit {digit}: ink centre ({cy:.1f}, {cx:.1f})"
        x = p.input[:, :, 0]
        assert (x == 0).mean() > 0.5, f"digit {digit}: the background is not zero"
        assert not x[0].any() and not x[-1].any() and not x[:, 0].any() and not x[:, -1].any()
        # The glyph fills `fit` of the input along its longer side, keeping its aspect ratio.
        rows, cols = np.flatnonzero(x.any(axis=1)), np.flatnonzero(x.any(axis=0))
        longer = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
        assert abs(longer - SETTINGS.fit * SHAPE[0]) <= 2, f"digit {digit}: glyph is {longer} px"


def test_light_ink_setting_reads_white_on_black(mnist):
    for digit, image in _mnist_examples(mnist, per_digit=1):
        light = preprocess(image, PreprocessSettings(ink="light"), SHAPE)
        dark = preprocess(255 - image, PreprocessSettings(ink="dark"), SHAPE)
        assert light.found and dark.found, digit
        np.testing.assert_allclose(light.input, dark.input, atol=1.5 / 255, err_msg=f"digit {digit}")  # 8-bit glyphs


def _glyph_centre(card, seed):
    """Where the glyph lands in a camera frame: the frame with the card minus the same frame
    (same seed: same room, pose, light and noise) with a blank card."""
    from training.augment import camera_frame

    frame = camera_frame(card, np.random.default_rng(seed))
    blank = camera_frame(np.full_like(card, 255), np.random.default_rng(seed))
    diff = (blank.astype(np.float32) - frame.astype(np.float32)).max(axis=2)  # colour pictures
    ys, xs = np.nonzero(diff > 0.5 * diff.max())
    return frame, (float(xs.mean()), float(ys.mean()))


def test_camera_frames_are_found_and_cropped_around_the_card(mnist):
    card = 255 - mnist.images[np.flatnonzero(mnist.labels == 0)[0]]  # a "0": its box holds its centre
    good, failures = 0, []
    for seed in range(40):
        frame, (x, y) = _glyph_centre(card, seed)
        p = preprocess(frame, SETTINGS, SHAPE)
        if p.found and p.box[0] <= x <= p.box[2] and p.box[1] <= y <= p.box[3]:
            assert_valid_input(p, (frame.shape[1], frame.shape[0]))
            good += 1
        else:
            failures.append((seed, p.reason or f"box {p.box} misses ({x:.0f}, {y:.0f})"))
    assert good >= 36, failures


# --- settings --------------------------------------------------------------------------------

def test_settings_round_trip_through_a_bundle_dict():
    s = PreprocessSettings(ink="light", work_size=128, fit=0.8)
    assert s.to_dict()["version"] == VERSION
    assert PreprocessSettings.from_bundle(s.to_dict()) == s
    assert PreprocessSettings.from_dict({}) == PreprocessSettings()


@pytest.mark.parametrize("version", [1, 3, None])
def test_settings_of_another_version_are_refused_saying_what_to_do(version):
    d = {k: v for k, v in PreprocessSettings().to_dict().items() if k != "version"}
    if version is not None:  # a bundle with no version is from version 1
        d["version"] = version
    with pytest.raises(ValueError) as e:
        PreprocessSettings.from_bundle(d)
    assert str(e.value) == (f"the model was made for preprocessing version {version or 1}, and this cardcam has version "
                            f"{VERSION}: retrain it with this cardcam's cardcam-train (models/README.md gives each "
                            f"shipped model's command)")


@given(key=st.text(min_size=1, max_size=12).filter(lambda k: k not in PreprocessSettings().to_dict()))
def test_settings_refuse_unknown_keys(key):
    with pytest.raises(ValueError, match=re.escape(repr(key))):
        PreprocessSettings.from_dict({key: 1})


_RANGES = PreprocessSettings._RANGES


@given(data=st.data(), key=st.sampled_from(sorted(_RANGES)))
def test_settings_refuse_out_of_range_values(data, key):
    lo, hi = _RANGES[key]
    value = data.draw(st.one_of(
        st.floats(max_value=lo, exclude_max=True, allow_nan=False),
        st.floats(min_value=hi, exclude_min=True, allow_nan=False),
        st.just(float("nan")),
        st.booleans(),
        st.just("0.5"),
        st.none(),
    ), label="value")
    with pytest.raises(ValueError, match=f"'{key}'"):
        PreprocessSettings.from_dict({key: value})


@given(data=st.data(), key=st.sampled_from(sorted(_RANGES)))
def test_settings_accept_values_in_range(data, key):
    lo, hi = _RANGES[key]
    value = data.draw(st.integers(lo, hi) if key == "work_size" else st.floats(lo, hi), label="value")
    assert getattr(PreprocessSettings.from_dict({key: value}), key) == value


def test_settings_refuse_bad_ink_and_non_objects():
    with pytest.raises(ValueError, match="'ink'"):
        PreprocessSettings.from_dict({"ink": "blue"})
    with pytest.raises(ValueError, match="JSON object"):
        PreprocessSettings.from_dict(["ink", "dark"])
    with pytest.raises(ValueError, match="'work_size'"):
        PreprocessSettings.from_dict({"work_size": 96.0})  # a size is a whole number


# --- unreadable files ------------------------------------------------------------------------

def test_unreadable_files_name_the_file(tmp_path, card_drawer):
    text = tmp_path / "notes.png"
    text.write_text("not a picture\n")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    good = tmp_path / "good.png"
    card_drawer("7").save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    corrupt = tmp_path / "corrupt.png"
    data = bytearray(good.read_bytes())
    data[60:90] = bytes(30)
    corrupt.write_bytes(bytes(data))
    for path in (text, empty, truncated, corrupt, tmp_path / "missing.png", tmp_path):
        with pytest.raises(ImageError) as e:
            load_image(path)
        message = str(e.value)
        assert message.startswith(f"{path}: ") and "\n" not in message, message


# --- every setting safe over its whole range -----------------------------------------------------

def _extreme_settings():
    for key, (lo, hi) in sorted(PreprocessSettings._RANGES.items()):
        for value in (lo, hi):
            yield pytest.param(key, value, id=f"{key}={value}")


@pytest.mark.parametrize("key,value", list(_extreme_settings()))
def test_every_setting_at_either_end_of_its_range_is_safe(key, value, card_drawer):
    """A bundle may carry any value in the documented ranges: every one gives an input or a
    reason on cards, blank and dark frames, a close-up and the sample frames, never an exception
    (min_card = 0 on a frame with no card crashed the daemon, issue 20)."""
    from device.camera import SAMPLES_DIR
    settings = PreprocessSettings.from_dict({key: value})
    pictures = [card_drawer("7"), card_drawer("0", size=(640, 480), font_size=400), np.full((120, 160), 230, np.uint8),
                np.zeros((120, 160), np.uint8), np.random.default_rng(0).integers(0, 256, (120, 160)).astype(np.uint8),
                np.full((8, 8), 200, np.uint8)]
    pictures += [load_image(p) for p in sorted(SAMPLES_DIR.glob("*.png"))]
    for shape in (SHAPE, (110, 110, 1), (8, 5, 1)):
        for picture in pictures:
            p = preprocess(picture, settings, shape)
            assert p.found or p.reason in ("no ink", "no card", "too dark", "too much ink")
            if p.found:
                assert p.input.shape == shape and np.isfinite(p.input).all()


def test_connected_cells_are_a_breadth_first_fill():
    """The bitset fill (_fill, as the card search uses it) against the plain one, on random masks
    of every shape up to the card search's grid."""
    from collections import deque

    from device.preprocess import _fill, _grid, _pack, _unpack

    def _connected(seed, allowed):
        grid = _grid(*allowed.shape)
        region = 1 << (seed[0] * grid.stride + seed[1]) if isinstance(seed, tuple) else _pack(seed, grid)
        return _unpack(_fill(region, _pack(allowed, grid), grid), grid)

    def plain_fill(seed, allowed):
        h, w = allowed.shape
        out = np.zeros_like(allowed)
        queue = deque([seed] if isinstance(seed, tuple) else zip(*np.nonzero(seed)))
        queue = deque(p for p in queue if allowed[p])
        for p in queue:
            out[p] = True
        while queue:
            r, c = queue.popleft()
            for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= rr < h and 0 <= cc < w and allowed[rr, cc] and not out[rr, cc]:
                    out[rr, cc] = True
                    queue.append((rr, cc))
        return out

    rng = np.random.default_rng(0)
    for case in range(600):
        h, w = (int(v) for v in rng.integers(1, 45, 2))
        allowed = rng.random((h, w)) < rng.uniform(0.3, 0.8)
        seed = (int(rng.integers(h)), int(rng.integers(w))) if case % 2 else rng.random((h, w)) < 0.02
        np.testing.assert_array_equal(_connected(seed, allowed), plain_fill(seed, allowed), err_msg=f"case {case}")


def test_bitset_erosion_dilation_and_bounds_are_the_numpy_ones():
    """The card search's bitset min and max filters (_erode, _dilate) against NumPy's (_filter,
    edges replicated), and _bounds against the mask's rows and columns, on random masks of
    every shape up to the card search's grid."""
    from device.preprocess import _bounds, _dilate, _erode, _filter, _grid, _pack, _unpack

    rng = np.random.default_rng(1)
    for case in range(300):
        h, w = (int(v) for v in rng.integers(1, 45, 2))
        mask = rng.random((h, w)) < rng.uniform(0.05, 0.95)
        grid = _grid(h, w)
        bits = _pack(mask, grid)
        for radius in (1, 2, 3, 6, 8):
            np.testing.assert_array_equal(_unpack(_erode(bits, grid, radius), grid),
                                          _filter(mask, 2 * radius + 1, np.minimum), err_msg=f"case {case}")
            np.testing.assert_array_equal(_unpack(_dilate(bits, grid, radius), grid),
                                          _filter(mask, 2 * radius + 1, np.maximum), err_msg=f"case {case}")
        if mask.any():
            rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            assert _bounds(bits, grid) == ((rows[0], rows[-1] + 1), (columns[0], columns[-1] + 1)), f"case {case}"


@pytest.mark.parametrize("colour", [0, 255, (40, 120, 200)])
def test_a_picture_of_one_flat_colour_is_refused_naming_the_file(tmp_path, colour):
    path = tmp_path / "flat.png"
    Image.new("L" if isinstance(colour, int) else "RGB", (640, 480), colour).save(path)
    with pytest.raises(ImageError) as e:
        load_image(path)
    assert str(e.value).startswith(f"{path}: the picture is one flat colour (grey level ") and "\n" not in str(e.value)
