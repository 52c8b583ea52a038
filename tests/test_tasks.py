"""The task table (training/tasks.py): one place for each task's cards, network and
preprocessing, and it reproduces the shipped models' recorded settings."""

from __future__ import annotations

import subprocess
import sys

import pytest

from device.bundle import load_bundle
from device.preprocess import PreprocessSettings
from training.data import DataError
from training.nets import ARCHS
from training.tasks import TASKS, default_arch, load_task, task_preprocess


def test_every_task_names_a_known_network_and_valid_preprocessing():
    for task in TASKS.values():
        assert task.arch in ARCHS, task.name
        PreprocessSettings.from_dict(dict(task.preprocess))  # raises on a bad key or value


@pytest.mark.parametrize("name", ["digits01", "digits", "smiley", "smiley-dwengo"])
def test_the_table_reproduces_the_shipped_models(repo, name):
    """Train with models/README.md's command and the defaults here give the bundle's settings."""
    bundle = load_bundle(repo / "models" / f"{name}.npz")
    task, command = bundle.meta["task"], bundle.meta["provenance"]["command"]
    given = dict(pair.split("=") for pair in command.split()[1:] if "=" in pair)
    given = {k: type(getattr(PreprocessSettings(), k))(v) for k, v in given.items()}
    assert PreprocessSettings.from_dict(task_preprocess(task, given)) == bundle.preprocess
    # and without the command's --preprocess too: the table alone gives what it recorded
    assert PreprocessSettings.from_dict(task_preprocess(task)) == bundle.preprocess
    if "--arch" not in command:
        assert default_arch(task) == bundle.meta["arch"]


def test_given_settings_go_over_the_tasks_own():
    assert task_preprocess("smiley:300") == {"paper_window": 0.35}
    assert task_preprocess("smiley", {"paper_window": 0.3, "ink_threshold": 0.2}) == {"paper_window": 0.3,
                                                                                      "ink_threshold": 0.2}
    assert task_preprocess("digits01") == {} and task_preprocess("folder:x", {"fit": 0.7}) == {"fit": 0.7}
    assert default_arch("digits") == "digitnet" and default_arch("folder:x") == "lenet5"


@pytest.mark.parametrize("task, message", [
    ("nope", "unknown task 'nope' (choose digits01, digits, smiley[:N] or folder:DIR)"),
    ("digits01:3", "unknown task 'digits01:3'"),
    ("folder", "unknown task 'folder'"),
    ("folder:", "task 'folder:': name the folder, folder:DIR (DIR/<label>/*.png)"),
    ("smiley:0", "task 'smiley:0': smiley:N needs N, the cards per class, in 1..100000"),
])
def test_task_names_that_mean_nothing_are_refused(task, message):
    with pytest.raises(DataError) as e:
        load_task(task)
    assert str(e.value).startswith(message)
    if task == "nope":
        with pytest.raises(DataError, match="unknown task 'nope'"):
            default_arch(task)  # train asks for the network first


def test_data_does_not_import_the_generators():
    """training.data is the bottom of the data path: the loaders import it, never the other way."""
    code = "import sys, training.data; print(*sorted(m for m in sys.modules if m.startswith('training')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.split() == ["training", "training.data"]
