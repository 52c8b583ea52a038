"""The config file: every key checked, clear errors, defaults when the default file is absent."""

from pathlib import Path

import pytest

import device.config as config_module
import dataclasses
import subprocess
import sys

from device.config import SECTIONS, ConfigError, check, defaults, example_toml, load_config, toml_value

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.toml"


def load_text(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config(path)[0]


def test_missing_default_file_means_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG", tmp_path / "absent.toml")
    config, message = load_config()
    assert config.as_dict() == defaults().as_dict()
    assert "absent.toml not found, using built-in defaults" in message


def test_values_are_read_and_the_rest_defaulted(tmp_path):
    config = load_text(tmp_path, '[decision]\nwindow = 7\nenter = 0.8\n[outputs]\nleds = { "happy" = 5, "sad" = "GPIO6" }\n')
    assert config.decision.window == 7 and config.decision.enter == 0.8 and config.decision.exit == 0.5
    assert config.outputs.leds == {"happy": 5, "sad": "GPIO6"}
    assert config.camera.fps == 30.0 and config.outputs.buzzer is None


@pytest.mark.parametrize("text, message", [
    ("[camera]\nfsp = 3\n", "[camera] unknown key 'fsp' (did you mean 'fps'?)"),
    ("[model]\npaht = 'x'\n", "[model] unknown key 'paht' (did you mean 'path'?)"),
    ("[outputs]\nzzz = 1\n", "[outputs] unknown key 'zzz' (valid: leds, status_led"),
    ("[ouputs]\n", "unknown section [ouputs] (did you mean 'outputs'?)"),
    ("camera = 3\n", "'camera' must be a section [camera]"),
    ("[camera]\nfps = 'fast'\n", "[camera] fps must be a number from 0 to 240, got 'fast'"),
    ("[camera]\nwidth = 640.5\n", "[camera] width must be a whole number"),
    ("[camera]\nloop = 1\n", "[camera] loop must be true or false, got 1"),
    ("[camera]\nsource = 'webcam'\n", "[camera] source must be one of 'auto', 'picamera2'"),
    ("[camera]\nsource = 'replay'\n", "[camera] replay must name a folder or video"),
    ("[decision]\nenter = 0.3\nexit = 0.6\n", "[decision] exit (0.6) must not be above enter (0.3)"),
    ("[outputs]\nstatus_led = 'pin7'\n", "[outputs] status_led must be a GPIO pin like 17"),
    ("[outputs]\nleds = [17, 27]\n", "[outputs] leds must be a table of label = pin"),
    ("[outputs]\nleds = { \"0\" = 99 }\n", "label '0': must be a GPIO pin"),
    ("[outputs]\ndisplay = [1, 2, 3]\n", "[outputs] display must be a list of 0 or 7 or 8 pins"),
    ("[outputs]\nbuzzer = 27\n", "[outputs] buzzer uses pin 27, already used by leds.\"1\""),
    ("[capture]\nbutton = 22\n", "capture.button uses pin 22, already used by status_led"),
    ("[camera\n", "not valid TOML"),
])
def test_errors_name_the_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, text)
    assert str(e.value).startswith(str(tmp_path / "c.toml") + ": ")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_a_file_that_was_asked_for_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.toml")


def test_example_config_is_valid_and_documents_every_key():
    config, _ = load_config(EXAMPLE)
    assert config.as_dict() == defaults().as_dict()  # the example shows the defaults
    assert EXAMPLE.read_text() == example_toml(), \
        "config.example.toml is written from device/config.py: python -m device.config > config.example.toml"
    lines = EXAMPLE.read_text().splitlines()
    for section in SECTIONS.values():
        for f in dataclasses.fields(section):
            i = lines.index(f"{f.name} = {toml_value(getattr(section(), f.name))}")
            assert lines[i - 1].startswith("#") or f.name == "height", f"{f.name} has no comment in config.example.toml"


def test_every_default_passes_its_own_check():
    """A default written into the file (as the example does) reads back as itself."""
    for name, section in SECTIONS.items():
        for f in dataclasses.fields(section):
            default = getattr(section(), f.name)
            file_value = "" if default is None else default
            assert check(f, file_value) == default, f"[{name}] {f.name}"
            help_, rules = f.metadata["help"], f.metadata
            assert "range" in rules or rules["kind"] not in ("int", "float"), f"[{name}] {f.name} has no range"
            assert help_ or f.name == "height", f"[{name}] {f.name} has no help"


def test_sections_are_frozen_and_compare_by_value(tmp_path):
    """What a reload (SIGHUP) asks: did this section change?"""
    old = defaults()
    new = load_text(tmp_path, "[decision]\nwindow = 9\n")
    assert new.camera == old.camera and new.outputs == old.outputs and new.decision != old.decision
    with pytest.raises(dataclasses.FrozenInstanceError):
        new.decision.window = 3
    assert defaults().outputs.leds is not defaults().outputs.leds  # no default shared between configs


def test_config_imports_no_other_device_module():
    code = "import sys, device.config; print(*sorted(m for m in sys.modules if m.startswith('device')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         timeout=60).stdout
    assert out.split() == ["device", "device.config"]
