"""The web page's teach panel in headless Chromium (like tests/test_web_browser.py): the real
daemon on replayed frames, examples added from drawings and from the camera with the mouse, learn,
and the drawing read with the new labels."""

from __future__ import annotations

import math
import shutil

import pytest
from PIL import Image

from browser_fixtures import browser_or_skip, draw, page_at, serving_daemon
from daemon_fixtures import write_config
from test_teach import paper


def ring(page, size=0.25):
    steps = 24
    draw(page, [(0.5 + size * math.sin(2 * math.pi * i / steps), 0.5 - 1.3 * size * math.cos(2 * math.pi * i / steps))
                for i in range(steps + 1)])


@pytest.fixture
def daemon(tmp_path, trained01):
    browser_or_skip()  # before the daemon starts: a skip would SIGTERM it while it is still importing
    frames = tmp_path / "frames"
    frames.mkdir()
    paper(frames / "0.png")  # the camera sees blank paper: "camera" presses are refused
    model = tmp_path / "models" / "current.npz"
    model.parent.mkdir()
    shutil.copyfile(trained01.path, model)
    config = write_config(tmp_path / "config.toml",
                          camera={"source": "replay", "replay": str(frames), "fps": 15},
                          model={"path": str(model), "watch": False},
                          outputs={"leds": {"line": 17, "ring": 27}},
                          teach={"enabled": True, "labels": ["line", "ring"], "examples": str(tmp_path / "examples")},
                          daemon={"state_file": str(tmp_path / "state.json"), "status_interval": 0.25},
                          web={"enabled": True, "port": 0})
    with serving_daemon(config, tmp_path / "state.json") as d:
        yield d


def test_teach_panel_adds_drawings_learns_and_reads_with_the_new_labels(daemon, tmp_path):
    with page_at(daemon.web_url(), viewport={"width": 1100, "height": 900}) as (_, page, errors):
        page.wait_for_selector("#teach:not([hidden]) .teach-row[data-label='ring']")
        assert page.text_content(".teach-row[data-label='line'] .count") == "0 examples"

        def message(text):
            page.wait_for_function(f"document.getElementById('teach-message').textContent.includes({text!r})",
                                   timeout=15000)

        # The camera sees no card: refused, in red, nothing stored.
        page.click(".teach-row[data-label='line'] button.camera")
        message("no card in view")
        assert "refused" in page.get_attribute("#teach-message", "class")
        # Three lines and three rings, drawn and added.
        for n, (slant, size) in enumerate([(0.03, 0.25), (-0.04, 0.3), (0.0, 0.22)], start=1):
            page.click("#clear")
            draw(page, [(0.5 + slant, 0.18), (0.5, 0.5), (0.5 - slant, 0.82)])
            page.click(".teach-row[data-label='line'] button.drawing")
            message(f"example {n} of 'line' stored")
            page.click("#clear")
            ring(page, size)
            page.click(".teach-row[data-label='ring'] button.drawing")
            message(f"example {n} of 'ring' stored")
        assert page.text_content(".teach-row[data-label='ring'] .count") == "3 examples"
        page.wait_for_function("document.querySelectorAll(\".teach-row[data-label='ring'] .thumbs img\").length"
                               " === 3 && [...document.querySelectorAll('.thumbs img')].every(i => i.naturalWidth"
                               " === 32)")
        # Learn: the model on the page is the taught one; a drawn ring now reads "ring".
        page.click("#learn")
        message("learned line, ring from 6 examples")
        page.wait_for_function("document.getElementById('model-name').textContent.endsWith('-taught')",
                               timeout=10000)
        page.click("#clear")
        ring(page, 0.27)
        page.click("#classify")
        page.wait_for_function("document.getElementById('draw-label').textContent === 'ring'", timeout=10000)
        page.click("#clear")
        draw(page, [(0.52, 0.2), (0.5, 0.5), (0.48, 0.8)])
        page.click("#classify")
        page.wait_for_function("document.getElementById('draw-label').textContent === 'line'", timeout=10000)
        # Undo: back to 0 and 1.
        page.click("#undo")
        message("undone")
        page.wait_for_function("!document.getElementById('model-name').textContent.endsWith('-taught')",
                               timeout=10000)
        assert not errors, errors
    seen = sorted((tmp_path / "examples" / "ring" / "seen").glob("*.png"))
    assert len(seen) == 3 and Image.open(seen[0]).size == (32, 32)
