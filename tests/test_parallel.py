"""training.parallel: the NumPy trainer's convolutions on several threads, same numbers as one."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from training import layers as L
from training import parallel
from training.nets import ARCHS, Network


@pytest.fixture
def threads():
    """parallel.set_threads for one test; the process's own setting (from the environment) afterwards."""
    yield parallel.set_threads
    parallel.set_threads(None)


def test_each_runs_every_piece_once(threads):
    threads(3)
    done = np.zeros(40, int)

    def piece(i):
        done[i] += 1
    parallel.each(piece, list(range(40)))
    assert (done == 1).all()


def test_an_error_in_a_piece_is_raised_by_the_caller_after_the_rest(threads):
    threads(2)
    done = np.zeros(10, int)

    def piece(i):
        if i == 3:
            raise ArithmeticError("piece 3")
        done[i] += 1
    with pytest.raises(ArithmeticError, match="piece 3"):
        parallel.each(piece, list(range(10)))
    assert done.sum() == 9


def test_a_training_step_gives_the_same_numbers_on_one_and_two_threads(threads):
    """digitnet at batch 32 cuts both convs into two groups of pictures and its second conv's
    kernel gradient into two pieces of inner blocks: two threads give the one-thread numbers
    bit for bit (the cut depends on the shapes only)."""
    arch = ARCHS["digitnet"](10)
    data = np.random.default_rng(1)
    x = data.random((32, *arch["input_shape"]), dtype=np.float32)
    y = data.integers(0, 10, 32)
    assert len(L.image_groups(32, 16 * 16 * 400 * 4)) >= 2
    results = []
    for n in (1, 2):
        threads(n)
        net = Network(arch["layers"], arch["input_shape"], np.random.default_rng(0))
        loss = net.loss_and_grads(x, y)
        results.append((loss, {key: layer.grads[name].copy() for key, layer, name in net.trainables()}))
    assert any(t.name.startswith("cardcam-train") for t in threading.enumerate())
    (loss1, grads1), (loss2, grads2) = results
    assert loss1 == loss2
    assert grads1.keys() == grads2.keys()
    for key in grads1:
        np.testing.assert_array_equal(grads2[key], grads1[key], err_msg=key)


def test_the_thread_count_comes_from_the_environment(threads, monkeypatch):
    monkeypatch.setenv(parallel.ENV, "3")
    threads(None)
    assert parallel.threads() == 3
    monkeypatch.setenv(parallel.ENV, "many")
    threads(None)
    with pytest.raises(ValueError, match=f"{parallel.ENV}: must be a whole number >= 1, got 'many'"):
        parallel.threads()
    with pytest.raises(ValueError, match="got 0"):
        threads(0)


@pytest.mark.laptop
def test_cardcam_train_refuses_a_bad_thread_count_before_preparing_data(threads, monkeypatch, tmp_path, capsys):
    from training.cli import main

    monkeypatch.setenv(parallel.ENV, "0")
    threads(None)
    assert main(["train", "--task", "digits01", "--epochs", "1", "--out", str(tmp_path / "m.npz")]) == 2
    err = capsys.readouterr().err
    assert err == f"cardcam-train: {parallel.ENV}: must be a whole number >= 1, got '0'\n"
    assert not (tmp_path / "m.npz").exists()
