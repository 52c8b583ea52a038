"""Printable cards: a valid A4 PDF with 0, 1, happy, sad and the user's own labels; each card,
cut out, shows the camera one glyph (its label is printed outside the cut line)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image, ImageDraw

from device.preprocess import PreprocessSettings, preprocess
from training import cards
from training.cli import main

from conftest import blank_paper

pytestmark = pytest.mark.laptop  # cardcam-train on the laptop, not the Pi


def _pdf_pages(path) -> int:
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    return len(re.findall(rb"/Type\s*/Page\b", data))


@pytest.fixture
def examples(tmp_path):
    """A folder of the user's own examples: two labels, one with an unreadable first file."""
    root = tmp_path / "mine"
    for label, shape in (("star", "star"), ("cross", "cross")):
        (root / label).mkdir(parents=True)
        im = Image.new("L", (120, 120), 235)
        d = ImageDraw.Draw(im)
        if shape == "star":
            d.polygon([(60, 10), (75, 50), (110, 50), (80, 72), (92, 110), (60, 86), (28, 110), (40, 72), (10, 50), (45, 50)],
                      outline=20, width=5)
        else:
            d.line((20, 20, 100, 100), fill=20, width=8)
            d.line((100, 20, 20, 100), fill=20, width=8)
        im.save(root / label / "b.png")
    (root / "cross" / "a.png").write_bytes(b"broken")  # skipped: the next example is used
    (root / "happy").mkdir()  # a built-in label: not printed twice
    Image.new("L", (50, 50), 255).save(root / "happy" / "x.png")
    return root


def test_cards_pdf_has_the_builtin_and_the_users_cards(tmp_path, examples, capsys):
    out = tmp_path / "cards.pdf"
    assert main(["cards", "--out", str(out), "--examples", str(examples)]) == 0
    assert "6 cards (0, 1, happy, sad, cross, star), 2 A4 page(s)" in capsys.readouterr().out
    assert _pdf_pages(out) == 2
    assert main(["cards", "--out", str(tmp_path / "builtin.pdf")]) == 0
    assert _pdf_pages(tmp_path / "builtin.pdf") == 1


def test_each_cut_out_card_shows_the_camera_its_glyph_only(examples):
    glyphs = cards.card_glyphs(examples)
    pages = cards.render_pages(glyphs)
    k = cards.DPI / 25.4
    settings = PreprocessSettings()
    for n, (label, glyph) in enumerate(glyphs):
        page = np.asarray(pages[n // 4])
        x, y = cards.SLOTS_MM[n % 4]
        w, h = cards.CARD_MM
        card = page[round(y * k) + 3:round((y + h) * k) - 3, round(x * k) + 3:round((x + w) * k) - 3]  # cut inside the line
        p = preprocess(card, settings, (32, 32))
        assert p.found, label
        l, t, r, b = p.box
        # The ink found is the glyph in the middle of the card, about as large as printed.
        assert abs((l + r) / 2 - card.shape[1] / 2) < 0.1 * card.shape[1], label
        assert abs((t + b) / 2 - card.shape[0] / 2) < 0.1 * card.shape[0], label
        assert max(r - l, b - t) > 0.5 * card.shape[1], label


def test_cards_reads_the_users_examples_or_names_the_folder(tmp_path, capsys):
    root = tmp_path / "mine"
    (root / "blank").mkdir(parents=True)
    blank_paper((60, 60)).save(root / "blank" / "a.png")
    assert main(["cards", "--out", str(tmp_path / "c.pdf"), "--examples", str(root)]) == 2
    err = capsys.readouterr().err
    assert "blank" in err and "no example in which ink can be found" in err and err.count("\n") == 1
    assert not (tmp_path / "c.pdf").exists()
    assert main(["cards", "--out", str(tmp_path / "c.pdf"), "--examples", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err
    (root / "blank" / "b.png").write_bytes(b"not a picture")  # says so, not only "no ink"
    assert main(["cards", "--out", str(tmp_path / "c.pdf"), "--examples", str(root)]) == 2
    assert capsys.readouterr().err == (
        f"cardcam-train: {root / 'blank'}: no example in which ink can be found, for label 'blank' (1 of 2 "
        f"unreadable, first {root / 'blank' / 'b.png'}: not an image Pillow can read)\n")
    (root / "empty").mkdir()
    for picture in (root / "blank").iterdir():
        picture.unlink()
    assert main(["cards", "--out", str(tmp_path / "c.pdf"), "--examples", str(root)]) == 2
    assert capsys.readouterr().err == f"cardcam-train: {root / 'blank'}: no images (.png, .jpg, ...) for label 'blank'\n"


def test_shipped_smiley_model_reads_the_printed_smiley_cards(repo):
    path = repo / "models" / "smiley.npz"
    if not path.exists():
        pytest.skip("models/smiley.npz not built yet")
    from device.bundle import load_bundle
    from device.runtime import make_runtime

    bundle = load_bundle(path)
    runtime = make_runtime(bundle, "numpy")
    for label in ("happy", "sad"):
        page = Image.new("L", (900, 700), 200)
        page.paste(cards.builtin_glyph(label, 400), (250, 150))
        p = preprocess(page, bundle.preprocess, bundle.input_shape)
        assert p.found
        assert bundle.labels[int(runtime.predict(p.input[None]).argmax())] == label
