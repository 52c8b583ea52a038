"""Smoothing and hysteresis: what the LEDs show from one noisy guess per frame."""

import numpy as np
import pytest

from device.decision import Decider, Hysteresis, MovingAverage


def test_moving_average_is_the_mean_of_the_last_n():
    avg = MovingAverage(3)
    values = [np.array([v, 1 - v]) for v in (1.0, 0.0, 0.5, 0.2, 0.9)]
    got = [avg.update(v) for v in values]
    for i, g in enumerate(got):
        window = values[max(0, i - 2): i + 1]
        np.testing.assert_allclose(g, np.mean(window, axis=0))


def test_moving_average_stays_exact_over_many_updates():
    avg = MovingAverage(4)
    rng = np.random.default_rng(0)
    values = rng.random((10_000, 3))
    for v in values:
        out = avg.update(v)
    np.testing.assert_allclose(out, values[-4:].mean(axis=0), atol=1e-9)


def test_moving_average_restarts_when_the_number_of_classes_changes():
    avg = MovingAverage(5)
    avg.update([1.0, 0.0])
    np.testing.assert_allclose(avg.update([0.2, 0.3, 0.5]), [0.2, 0.3, 0.5])


def test_moving_average_needs_a_window():
    with pytest.raises(ValueError):
        MovingAverage(0)


def test_hysteresis_enters_high_and_leaves_low():
    h = Hysteresis(enter=0.7, exit=0.4)
    assert h.update([0.6, 0.4]) is None        # not sure enough to light anything
    assert h.update([0.75, 0.25]) == 0         # above enter: on
    assert h.update([0.5, 0.5]) == 0           # between exit and enter: stays on
    assert h.update([0.41, 0.3]) == 0
    assert h.update([0.39, 0.3]) is None       # below exit: off
    assert h.update([0.6, 0.4]) is None        # and needs enter again to come back
    assert h.update([0.1, 0.9]) == 1


def test_hysteresis_switches_straight_to_a_stronger_class():
    h = Hysteresis(enter=0.6, exit=0.2)
    assert h.update([0.9, 0.1]) == 0
    assert h.update([0.3, 0.7]) == 1           # 0 is still above exit, but 1 is above enter and higher


def test_hysteresis_rejects_thresholds_the_wrong_way_round():
    with pytest.raises(ValueError):
        Hysteresis(enter=0.4, exit=0.6)


def test_decider_shows_no_card_after_the_card_is_taken_away():
    d = Decider(["0", "1"], window=3, enter=0.7, exit=0.5)
    seq = [[0.05, 0.95]] * 3 + [None] * 3 + [[0.9, 0.1]] * 3
    shown = [d.update(p) for p in seq]
    assert [s.label for s in shown] == ["1", "1", "1", "1", None, None, None, None, "0"]
    assert [s.changed for s in shown] == [True, False, False, False, True, False, False, False, True]
    assert shown[3].confidence == pytest.approx(0.95 * 2 / 3)


def test_decider_ignores_a_single_wrong_frame():
    d = Decider(["0", "1"], window=5, enter=0.7, exit=0.45)
    labels = [d.update(p).label for p in [[0.9, 0.1]] * 5 + [[0.1, 0.9]] + [[0.9, 0.1]] * 2]
    assert labels == ["0"] * 8


def test_decider_starts_afresh_for_a_model_with_other_labels():
    d = Decider(["0", "1"], window=3, enter=0.7, exit=0.5)
    assert d.update([0.0, 1.0]).label == "1"
    d.relabel(["happy", "sad", "0"])
    decision = d.update([0.1, 0.85, 0.05])
    assert decision.label == "sad" and decision.changed
