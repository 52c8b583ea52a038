"""What the browser tests share (tests/test_web_browser.py, tests/test_teach_browser.py): Debian's
headless Chromium driven by Playwright, the daemon that serves the page, and strokes on the canvas."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from daemon_fixtures import Daemon

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def browser_or_skip():
    """Playwright's sync API (the test extra). Skipped only when Debian's chromium is missing and
    CARDCAM_REQUIRE_BROWSER is unset; with chromium there, a missing Playwright is a failure."""
    if not CHROMIUM.exists():
        if os.environ.get("CARDCAM_REQUIRE_BROWSER"):
            pytest.fail(f"CARDCAM_REQUIRE_BROWSER is set but {CHROMIUM} is missing (apt install chromium)", pytrace=False)
        pytest.skip(f"no {CHROMIUM} (apt install chromium)")
    try:
        from playwright import sync_api
    except ImportError:
        pytest.fail("chromium is installed but Playwright is not: pip install -e '.[test]'", pytrace=False)
    return sync_api


@contextlib.contextmanager
def serving_daemon(config: Path, state: Path):
    """`cardcam run` with this config (its [web] on) for the block; then SIGTERM, and it must exit 0
    within 5 s. Call browser_or_skip() first: a skip would SIGTERM it while it is still importing."""
    d = Daemon(config, state)
    yield d
    d.signal(signal.SIGTERM)
    try:
        assert d.wait(timeout=5) == 0, d.output
    finally:
        d.stop()


@contextlib.contextmanager
def page_at(url: str, **page_options):
    """(browser, page, errors): headless Chromium with ``url`` loaded in a page made with
    ``page_options``; ``errors`` collects the page's uncaught JavaScript errors."""
    sync_api = browser_or_skip()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(**page_options)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            yield browser, page, errors
        finally:
            browser.close()


def draw(page, points):
    """One stroke with the mouse across the canvas; points in 0..1 of its size."""
    box = page.locator("#canvas").bounding_box()
    xy = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=8)
    page.mouse.up()
