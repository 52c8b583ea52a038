"""The web page end to end in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright):
the real daemon serves it, the page updates by itself, a "1" drawn with the mouse (and with a
finger, on a phone-sized page) is read as 1.

    CARDCAM_WEB_SCREENSHOT=docs/web.png python -m pytest tests/test_web_browser.py

also writes the screenshot in the docs (tools/web_screenshot.sh does just that).
"""

from __future__ import annotations

import math
import os
import shutil

import pytest

from browser_fixtures import browser_or_skip, draw, page_at, serving_daemon
from daemon_fixtures import REPO, write_config
from device.camera import SAMPLES_DIR

@pytest.fixture
def daemon(tmp_path):
    browser_or_skip()  # before the daemon starts: a skip would SIGTERM it while it is still importing
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, name in enumerate(["c-1-1.png", "c-1-2.png"]):
        shutil.copyfile(SAMPLES_DIR / name, frames / f"{i}.png")
    config = write_config(tmp_path / "config.toml",
                          camera={"source": "replay", "replay": str(frames), "fps": 15},
                          model={"path": str(REPO / "models" / "digits01.npz"), "watch": False},
                          daemon={"state_file": str(tmp_path / "state.json"), "status_interval": 0.25},
                          web={"enabled": True, "port": 0})
    with serving_daemon(config, tmp_path / "state.json") as d:
        yield d


def touch(page, box, points):
    """One stroke with a finger, through the DevTools protocol (Playwright's touchscreen only taps)."""
    cdp = page.context.new_cdp_session(page)
    xy = [{"x": box["x"] + x * box["width"], "y": box["y"] + y * box["height"]} for x, y in points]
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [xy[0]]})
    for (a, b) in zip(xy, xy[1:]):
        for i in range(1, 9):
            point = {"x": a["x"] + (b["x"] - a["x"]) * i / 8, "y": a["y"] + (b["y"] - a["y"]) * i / 8}
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [point]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def test_page_shows_the_live_appliance_and_reads_a_drawn_one(daemon, tmp_path):
    url = daemon.web_url()
    with page_at(url, viewport={"width": 1100, "height": 760}) as (browser, page, errors):
        # Live: the frame counter moves without a reload; the card in front of the camera is a 1.
        page.wait_for_function("Number(document.getElementById('frames').textContent) > 0")
        first = int(page.text_content("#frames"))
        page.wait_for_function(f"Number(document.getElementById('frames').textContent) > {first + 3}")
        page.wait_for_function("document.getElementById('live-label').textContent === '1'")
        page.wait_for_function("document.getElementById('input-img').naturalWidth === 32")
        page.wait_for_function("document.getElementById('frame-img').naturalWidth === 240")
        assert page.text_content("#state") == "running"
        page.wait_for_function("document.getElementById('model-name').textContent === 'digits01'")
        assert "lenet5" in page.text_content("#model-arch") and page.text_content("#runtime") != "–"
        assert page.locator("#live-bars .track").count() == 2

        # Draw a 1 (a slightly slanted stroke), classify it.
        draw(page, [(0.53, 0.18), (0.5, 0.5), (0.47, 0.82)])
        page.click("#classify")
        page.wait_for_function("document.getElementById('draw-label').textContent === '1'", timeout=10000)
        assert "digits01" in page.text_content("#draw-detail")
        assert page.locator("#draw-bars .track").count() == 2
        shot = tmp_path / "web.png"
        page.screenshot(path=str(shot))
        if os.environ.get("CARDCAM_WEB_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["CARDCAM_WEB_SCREENSHOT"])

        # Clear, then a 0: the answer follows the drawing.
        page.click("#clear")
        assert page.text_content("#draw-label") == "–"
        steps = 24
        draw(page, [(0.5 + 0.2 * math.sin(2 * math.pi * i / steps), 0.5 - 0.3 * math.cos(2 * math.pi * i / steps))
                    for i in range(steps + 1)])
        page.click("#classify")
        page.wait_for_function("document.getElementById('draw-label').textContent === '0'", timeout=10000)

        # A phone: one column, nothing wider than the screen, the canvas fully in view across.
        phone = browser.new_page(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
        phone.goto(url)
        phone.wait_for_function("document.getElementById('live-label').textContent === '1'")
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        box = phone.locator("#canvas").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390 and box["width"] >= 250
        # A finger: real touch events (Chromium's input pipeline turns them into pointer events).
        touch(phone, box, [(0.5, 0.2), (0.5, 0.5), (0.49, 0.8)])
        phone.click("#classify")
        phone.wait_for_function("document.getElementById('draw-label').textContent === '1'", timeout=10000)
        assert not errors, errors
    with open(shot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
