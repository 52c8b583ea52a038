"""What .ci/run promises: with CI set (it exports CI=1), everything the laptop-side tests need is
installed, so none of them can pass by skipping. Off CI a missing one is a skip, as in the tests
that use it (conftest.require). The Pi-side runs (-m "not laptop") need none of these; their TFLite
runtime is checked by test_runtime_tflite.py (CARDCAM_REQUIRE_TFLITE)."""

from __future__ import annotations

import os
import shutil

import pytest

from conftest import missing, require

pytestmark = pytest.mark.laptop


@pytest.mark.parametrize("module", ["tensorflow", "keras", "ai_edge_litert", "cv2", "playwright", "matplotlib"])
def test_the_python_packages_the_tests_use(module):
    require(module)


@pytest.mark.parametrize("tool", ["sshd", "scp", "shellcheck", "systemd-analyze"])
def test_the_system_tools_the_tests_use(tool):
    if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
        missing(f"{tool} is not installed (.ci/run installs it with apt)")


def test_chromium_for_the_browser_tests():
    if not os.path.exists("/usr/bin/chromium"):
        missing("/usr/bin/chromium is not installed (apt install chromium)", require="CARDCAM_REQUIRE_BROWSER")
