#!/bin/sh
# docs/web.png: the web page as the browser test leaves it (live "1" card, a drawn "1" classified).
# Needs Debian's chromium and Playwright (the test extra). Run from anywhere: tools/web_screenshot.sh
set -e
cd "$(dirname "$0")/.."
CARDCAM_WEB_SCREENSHOT=docs/web.png CARDCAM_REQUIRE_BROWSER=1 PYTHONPATH="$PWD" \
    "${PYTHON:-python3}" -m pytest -q tests/test_web_browser.py
echo "wrote docs/web.png"
