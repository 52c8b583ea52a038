"""The fast preprocessing gives exactly what the shipped models were trained on.

tools/preprocess_reference.py is preprocessing frozen as it was before the speed work; every
shipped bundle was trained on its outputs. Here both run on the same pictures (the sample frames,
simulated camera frames and cards of every task, light ink) and must agree bit for bit.
tools/check_preprocess_equivalence.py runs the same check on many more frames.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image, ImageDraw

from device import preprocess

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import check_preprocess_equivalence as equivalence  # noqa: E402
import preprocess_reference as reference  # noqa: E402


def test_fast_preprocessing_gives_the_reference_results_bit_for_bit():
    failures = []
    stats = equivalence.check(camera=6, clean=4, seed=11, tolerance=0.0, out=failures.append)
    assert not failures, failures
    assert stats["comparisons"] == stats["identical"] > 100
    assert stats["found"] > 50  # glyphs found, not only "no card"


@pytest.mark.parametrize("size, work", [((640, 480), (96, 72)), ((320, 240), (96, 72)), ((1280, 720), (96, 54)),
                                        ((800, 600), (96, 72)), ((640, 480), (64, 48)), ((1920, 1080), (96, 54))])
def test_frame_shrink_is_pillows_box_resize(size, work):
    rng = np.random.default_rng(size[0] + work[0])
    w, h = size
    for frame in (rng.integers(0, 256, (h, w), dtype=np.uint8), np.full((h, w), 255, np.uint8),
                  np.zeros((h, w), np.uint8), (rng.random((h, w)) ** 3 * 256).astype(np.uint8)):
        shrunk = preprocess._shrink_frame(frame, work)
        assert shrunk is not None, "this size should take the NumPy path"
        assert np.array_equal(shrunk, np.asarray(Image.fromarray(frame).resize(work, Image.Resampling.BOX)))


def test_frame_shrink_leaves_irregular_sizes_to_pillow():
    frame = np.zeros((1232, 1640), np.uint8)  # 1640 -> 96: the taps never repeat in a short period
    assert preprocess._shrink_frame(frame, (96, 72)) is None
    assert preprocess._shrink_frame(np.zeros((48, 64), np.uint8), (96, 72)) is None  # enlarging


@given(values=hnp.arrays(np.float32, st.integers(1, 300), elements=st.floats(0, 1, width=32)),
       q=st.sampled_from([1, 50, 90, 99, 100]))
def test_percentile_is_numpys(values, q):
    assert float(preprocess._percentile(values.copy(), q)) == float(np.percentile(values, q))


def test_convex_hull_fill_is_the_references():
    """The hull drawn on a canvas in the grid's own layout: the same pixels as the reference's
    (hull on a 1-bit picture, converted and packed), on random blobs, polygons and noise."""
    rng = np.random.default_rng(3)
    for i in range(600):
        h, w = int(rng.integers(8, 80)), int(rng.integers(8, 100))
        picture = Image.new("L", (w, h))
        for _ in range(int(rng.integers(1, 4))):
            corners = [(float(rng.uniform(-5, w + 5)), float(rng.uniform(-5, h + 5))) for _ in range(int(rng.integers(3, 7)))]
            ImageDraw.Draw(picture).polygon(corners, fill=1)
        mask = [np.asarray(picture) > 0, rng.random((h, w)) < 0.03][i % 2]
        mask &= rng.random((h, w)) > 0.2
        grid = preprocess._grid(h, w, 4)
        assert grid.convex_hull(grid.pack(mask)) == grid.pack(reference._convex_hull(mask)), (i, h, w)
