"""The smiley generator: seeded and reproducible, varied, no easy shortcut between the classes,
usable through preprocessing and as a task; the shipped smiley models (when present) read faces
drawn in another, independently written style (tools/heldout_smileys.py)."""

from __future__ import annotations

import importlib.util
import inspect
import json

import numpy as np
import pytest

from device.bundle import load_bundle
from device.preprocess import PreprocessSettings, preprocess
from device.runtime import make_runtime
from training import smileys
from training.data import DataError
from training.tasks import load_task

from conftest import missing, require


@pytest.fixture(scope="module")
def faces():
    return smileys.make_smileys(120, seed=11)


def test_same_seed_same_cards_and_a_card_does_not_depend_on_the_count():
    a = smileys.make_smileys(6, seed=3)
    b = smileys.make_smileys(6, seed=3)
    fewer = smileys.make_smileys(2, seed=3)
    other = smileys.make_smileys(6, seed=4)
    assert a.names == ["happy", "sad"] and a.labels.tolist() == [0] * 6 + [1] * 6
    assert all(np.array_equal(x, y) for x, y in zip(a.cards, b.cards))
    assert np.array_equal(fewer.cards[0], a.cards[0]) and np.array_equal(fewer.cards[2], a.cards[6])
    assert not any(np.array_equal(x, y) for x, y in zip(a.cards, other.cards))


def test_cards_are_dark_ink_on_light_paper(faces):
    for card in faces.cards:
        assert card.dtype == np.uint8 and card.shape == (smileys.CARD_SIZE, smileys.CARD_SIZE)
        border = np.concatenate([card[0], card[-1], card[:, 0], card[:, -1]])
        assert np.median(border) >= 240       # light paper around the face
        assert card.min() < 90                # and real ink on it


def test_faces_vary(faces):
    cards = np.stack(faces.cards).astype(np.float32) / 255
    ink = 1 - cards
    # Every face differs from every other clearly, not by a few pixels.
    flat = ink.reshape(len(ink), -1)
    sq = (flat ** 2).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * flat @ flat.T, 0)) / np.sqrt(flat.shape[1])
    dist[np.diag_indices_from(dist)] = np.inf
    assert dist.min() > 0.03
    # Sizes and amounts of ink spread widely: thin line drawings to filled faces.
    amount = (ink > 0.3).mean(axis=(1, 2))
    assert amount.max() > 4 * amount.min()
    rows = np.flatnonzero  # noqa: E731
    heights = [np.ptp(rows((c < 128).any(axis=1))) for c in faces.cards]
    assert max(heights) - min(heights) > 0.3 * smileys.CARD_SIZE


def test_no_shortcut_between_happy_and_sad(faces):
    """Where the ink sits and how much there is are the same for both classes: only the
    expression tells them apart."""
    ink = 1 - np.stack(faces.cards).astype(np.float32) / 255
    ink[ink < 0.5] = 0
    y = np.arange(ink.shape[1], dtype=np.float32)
    centre_y = (ink.sum(axis=2) * y).sum(axis=1) / ink.sum(axis=(1, 2))
    lower_half = ink[:, ink.shape[1] // 2:].sum(axis=(1, 2)) / ink.sum(axis=(1, 2))
    amount = (ink > 0).mean(axis=(1, 2))
    happy, sad = faces.labels == 0, faces.labels == 1
    for feature in (centre_y, lower_half, amount):
        gap = abs(feature[happy].mean() - feature[sad].mean())
        assert gap < 0.35 * feature.std(), (gap, feature.std())


def test_preprocessing_finds_nearly_every_face(faces):
    settings = PreprocessSettings()
    found = [preprocess(card, settings, (48, 48)).found for card in faces.cards]
    assert np.mean(found) >= 0.98


def test_smiley_task_and_its_provenance():
    # one default count: the "smiley" task's and make_smileys'
    assert inspect.signature(smileys.make_smileys).parameters["per_class"].default == smileys.DEFAULT_PER_CLASS
    cards, description = load_task("smiley:3")
    assert cards.names == ["happy", "sad"] and len(cards) == 6
    assert "smiley" in description and "generator version" in description
    with pytest.raises(DataError, match="smiley:N"):
        load_task("smiley:many")


def test_unknown_label_is_refused():
    with pytest.raises(ValueError, match="unknown smiley label 'angry'"):
        smileys.draw_smiley("angry", np.random.default_rng(0))


# --- the shipped models, judged on faces drawn another way ---------------------------------------

def _heldout_module(repo):
    spec = importlib.util.spec_from_file_location("heldout_smileys", repo / "tools" / "heldout_smileys.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def heldout(repo):
    """4 faces per style and class in the independent matplotlib styles (64 faces)."""
    require("matplotlib")
    module = _heldout_module(repo)
    cards, labels = [], []
    for happy in (True, False):
        for s, style in enumerate(module.STYLES):
            for i in range(4):
                cards.append(module.render(style, happy, np.random.default_rng([99, s, i, happy])))
                labels.append(0 if happy else 1)
    return cards, np.array(labels)


@pytest.mark.parametrize("name", ["smiley.npz", "smiley-dwengo.npz"])
def test_shipped_smiley_model_reads_faces_drawn_another_way(repo, heldout, name):
    path = repo / "models" / name
    if not path.exists():
        missing(f"models/{name} not built yet")
    bundle = load_bundle(path)
    assert bundle.labels == ["happy", "sad"]
    provenance = bundle.meta["provenance"]
    assert provenance["command"].startswith("cardcam-train train --task smiley")
    runtime = make_runtime(bundle, "numpy")
    cards, labels = heldout
    inputs = [preprocess(c, bundle.preprocess, bundle.input_shape) for c in cards]
    found = np.array([p.found for p in inputs])
    probs = runtime.predict(np.stack([p.input for p in inputs if p.found]))
    accuracy = float((probs.argmax(axis=1) == labels[found]).mean())
    assert found.mean() >= 0.95 and accuracy >= 0.85, (found.mean(), accuracy)
    assert json.loads(json.dumps(provenance)) == provenance  # plain JSON, recorded with the model


def test_a_smiley_model_keeps_its_own_preprocessing_settings(tmp_path, capsys):
    from training.cli import main

    out = tmp_path / "smiley.npz"
    assert main(["train", "--task", "smiley:12", "--arch", "lenet5", "--epochs", "1", "--jitter", "0", "--camera", "0",
                 "--processes", "1", "--preprocess", "paper_window=0.35", "--out", str(out), "--quiet"]) == 0
    bundle = load_bundle(out)
    assert bundle.labels == ["happy", "sad"] and bundle.preprocess.paper_window == 0.35
    assert bundle.preprocess.work_size == PreprocessSettings().work_size
    assert "--preprocess paper_window=0.35" in bundle.meta["provenance"]["command"]
    capsys.readouterr()
    for bad, message in (("paper_window=wide", "must be float"), ("colour=red", "expected KEY=VALUE with KEY one of ink, work_size"),
                         ("paper_window=5", "'paper_window' must be a number in")):
        assert main(["train", "--task", "smiley:12", "--preprocess", bad, "--out", str(tmp_path / "x.npz")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.npz").exists()
    # Without --preprocess a smiley task trains with its own settings (training.tasks, as the
    # shipped smiley models); a --preprocess setting goes over them.
    out = tmp_path / "own.npz"
    assert main(["train", "--task", "smiley:12", "--arch", "lenet5", "--epochs", "1", "--jitter", "0", "--camera", "0",
                 "--processes", "1", "--preprocess", "ink_threshold=0.3", "--out", str(out), "--quiet"]) == 0
    settings = load_bundle(out).preprocess
    assert (settings.paper_window, settings.ink_threshold) == (0.35, 0.3)


def test_a_face_drawn_on_paper_keeps_the_strokes_that_cross_its_disc(monkeypatch):
    """Preprocessing leaves out ink that runs into a card's edge from the room beyond it (a cable
    across the card). A face's filled disc on white paper is often taken as the card, and its
    outline, hair and brows cross or touch the disc's edge: with paper, not a room, beyond it,
    nothing is left out. Checked against the same preprocessing with that step switched off
    (before the room was asked for, 7 of these 300 faces lost part of their strokes)."""
    import device.preprocess as P

    settings = PreprocessSettings(paper_window=0.35)
    cards = [smileys.draw_smiley(label, np.random.default_rng([5, c, i]), smileys.CARD_SIZE)
             for c, label in enumerate(("happy", "sad")) for i in range(150)]
    found = [preprocess(card, settings, (48, 48, 1)) for card in cards]
    monkeypatch.setattr(P, "_ink_from_the_edge", lambda *args: 0)
    for card, p in zip(cards, found):
        q = preprocess(card, settings, (48, 48, 1))
        assert p.box == q.box and p.reason == q.reason
