"""The daemon's settings: a TOML file, every key checked against one schema.

``load_config(path)`` returns a ``Config`` whose sections read like ``config.camera.fps``. Any
problem is a ``ConfigError`` naming the file, the key and what was wrong; a key that does not
exist names the nearest one that does, so typos are one glance away. The same schema gives the
defaults, so a missing default file means "all defaults", never a crash.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from types import SimpleNamespace

from device.camera import SOURCES
from device.runtime import RUNTIMES

DEFAULT_CONFIG = Path("/etc/cardcam/config.toml")
DEFAULT_MODEL = "/var/lib/cardcam/models/digits01.npz"
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]{0,39}")  # device.teach.LABEL_PATTERN: a folder name
_PIN = re.compile(r"^(GPIO|BCM|BOARD|J8:|WPI)?\d{1,2}$", re.IGNORECASE)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


# --- value kinds: each checks one value and says what it expected ----------------------------

class Kind:
    def __init__(self, default, doc=""):
        self.default = default
        self.doc = doc

    def check(self, value):
        raise NotImplementedError


class Bool(Kind):
    def check(self, value):
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value


class Number(Kind):
    def __init__(self, default, lo, hi, doc="", integer=False):
        super().__init__(default, doc)
        self.lo, self.hi, self.integer = lo, hi, integer

    def check(self, value):
        kinds = int if self.integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not self.lo <= value <= self.hi:
            what = "a whole number" if self.integer else "a number"
            raise ValueError(f"must be {what} from {self.lo} to {self.hi}, got {value!r}")
        return value if self.integer else float(value)


class Text(Kind):
    def check(self, value):
        if not isinstance(value, str):
            raise ValueError(f"must be a string in quotes, got {value!r}")
        return value


class Host(Text):
    """An address to listen on: an IP address or a host name, no URL."""

    def check(self, value):
        host = super().check(value)
        if not host or any(c.isspace() or c in "/[]" for c in host):
            raise ValueError(f'must be an address like "127.0.0.1", "0.0.0.0" or "::", got {host!r}')
        return host


class Choice(Kind):
    def __init__(self, default, choices, doc=""):
        super().__init__(default, doc)
        self.choices = tuple(choices)

    def check(self, value):
        if value not in self.choices:
            raise ValueError(f"must be one of {', '.join(map(repr, self.choices))}, got {value!r}")
        return value


def check_pin(value, allow_none=True):
    """A GPIO pin as gpiozero names it: 17, "GPIO17", "BOARD11"; "" for none."""
    if allow_none and value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 53:
        return value
    if isinstance(value, str) and _PIN.match(value):
        return value
    none = ' ("" for none)' if allow_none else ""
    raise ValueError(f'must be a GPIO pin like 17 or "GPIO17" or "BOARD11"{none}, got {value!r}')


class Pin(Kind):
    def check(self, value):
        return check_pin(value)


class PinList(Kind):
    def __init__(self, default, lengths, doc=""):
        super().__init__(default, doc)
        self.lengths = lengths

    def check(self, value):
        if not isinstance(value, list) or len(value) not in self.lengths:
            raise ValueError(f"must be a list of {' or '.join(map(str, self.lengths))} pins, got {value!r}")
        return [check_pin(v, allow_none=False) for v in value]


class PinMap(Kind):
    def check(self, value):
        if not isinstance(value, dict):
            raise ValueError(f'must be a table of label = pin, like {{ "0" = 17, "1" = 27 }}, got {value!r}')
        out = {}
        for label, pin in value.items():
            try:
                out[label] = check_pin(pin, allow_none=False)
            except ValueError as e:
                raise ValueError(f"label {label!r}: {e}") from None
        return out


class LabelList(Kind):
    def check(self, value):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f'must be a list of labels in quotes, like ["cat", "dog"], got {value!r}')
        return list(value)


SCHEMA = {
    "camera": {
        "source": Choice("auto", SOURCES, "auto: the Pi camera on a Pi, the bundled samples in simulation"),
        "width": Number(160, 64, 4056, integer=True),
        "height": Number(120, 48, 3040, integer=True),
        "fps": Number(30.0, 0, 240, doc="replay/samples pace; 0 = as fast as possible"),
        "replay": Text("", "folder of pictures or a video file, for source = \"replay\""),
        "loop": Bool(True, "replay: start again at the end (false: stop the daemon)"),
        "hold": Number(1, 1, 100000, integer=True, doc="replay: show each picture this many frames"),
        "buffer_count": Number(2, 1, 8, integer=True),
        "timeout": Number(2.0, 0.1, 30),
        "camera_num": Number(0, 0, 16, integer=True),
        "device": Number(0, 0, 64, integer=True, doc="OpenCV webcam index"),
    },
    "model": {
        "path": Text(DEFAULT_MODEL),
        "runtime": Choice("auto", RUNTIMES),
        "threads": Number(1, 1, 64, integer=True, doc="TFLite interpreter threads (see bench/inference.py --threads)"),
        "task": Text("", "if set, only models of this task are accepted"),
        "watch": Bool(True, "reload the model when its file changes"),
        "poll_interval": Number(0.5, 0.05, 60),
        "stable_time": Number(0.5, 0.0, 60, doc="a new file must stay unchanged this long"),
        "retry_interval": Number(2.0, 0.1, 600),
    },
    "decision": {
        "window": Number(5, 1, 100, integer=True),
        "enter": Number(0.7, 0.0, 1.0),
        "exit": Number(0.5, 0.0, 1.0),
    },
    "outputs": {
        "leds": PinMap({"0": 17, "1": 27}),
        "status_led": Pin(22),
        "active_high": Bool(True),
        "display": PinList([], (0, 7, 8), "7-segment display pins a..g (and dp)"),
        "display_active_high": Bool(True, "false for a common-anode display"),
        "buzzer": Pin(""),
        "beep_time": Number(0.05, 0.0, 2.0),
    },
    "capture": {
        "button": Pin("", "press to capture (cardcam capture); Enter on the keyboard off a Pi"),
    },
    "teach": {
        "enabled": Bool(False, "teach mode: buttons, keys (simulation) or the web page add examples and learn"),
        "labels": LabelList([], "labels to teach (with the buttons' labels); keys 1-9 in simulation"),
        "buttons": PinMap({}, 'one button per label, like { "cat" = 5, "dog" = 6 }: adds the card in view'),
        "learn_button": Pin("", "learns a new model from the examples and switches to it"),
        "undo_button": Pin("", "goes back to the model that ran before the last learn"),
        "examples": Text("/var/lib/cardcam/examples", "EXAMPLES/<label>/*.png: camera frames, with seen/"),
        "base": Text("", "the model to teach from; \"\": the running model"),
    },
    "daemon": {
        "state_file": Text("", "JSON file with the LED states, rewritten on every change; \"\": none, "
                                "or under systemd $RUNTIME_DIRECTORY/state.json (device/status.py)"),
        "status_interval": Number(1.0, 0.1, 60),
        "max_backoff": Number(1.0, 0.05, 10, doc="longest wait between camera retries"),
    },
    "web": {
        "enabled": Bool(False, "serve the live web page and JSON API (device/webserver.py)"),
        "host": Host("127.0.0.1", "address to listen on; 0.0.0.0 = every network (no password!)"),
        "port": Number(8080, 0, 65535, integer=True, doc="0 = any free port (the log says which)"),
    },
}


class Config(SimpleNamespace):
    """Sections as attributes: ``config.decision.enter``. ``source`` says where it came from."""

    def as_dict(self) -> dict:
        return {name: dict(vars(getattr(self, name))) for name in SCHEMA}


def defaults() -> Config:
    return Config(source="built-in defaults",
                  **{name: SimpleNamespace(**{k: kind.check(_copy(kind.default)) for k, kind in keys.items()})
                     for name, keys in SCHEMA.items()})


def _copy(value):
    return dict(value) if isinstance(value, dict) else list(value) if isinstance(value, list) else value


def _nearest(word, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(options)})"


def from_dict(data: dict, where: str) -> Config:
    """Check every section and key of ``data``; defaults fill what is absent."""
    config = defaults()
    config.source = where
    for section, values in data.items():
        if section not in SCHEMA:
            raise ConfigError(f"{where}: unknown section [{section}]{_nearest(section, SCHEMA)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: '{section}' must be a section [{section}], got {values!r}")
        keys = SCHEMA[section]
        target = getattr(config, section)
        for key, value in values.items():
            if key not in keys:
                raise ConfigError(f"{where}: [{section}] unknown key '{key}'{_nearest(key, keys)}")
            try:
                setattr(target, key, keys[key].check(value))
            except ValueError as e:
                raise ConfigError(f"{where}: [{section}] {key} {e}") from None
    _check_together(config, where)
    return config


def _check_together(config: Config, where: str) -> None:
    d = config.decision
    if d.exit > d.enter:
        raise ConfigError(f"{where}: [decision] exit ({d.exit}) must not be above enter ({d.enter})")
    c = config.camera
    if c.source == "replay" and not c.replay:
        raise ConfigError(f"{where}: [camera] replay must name a folder or video when source = \"replay\"")
    o = config.outputs
    used = {}
    pins = [(f"leds.\"{k}\"", v) for k, v in o.leds.items()] + [("status_led", o.status_led), ("buzzer", o.buzzer),
                                                               ("capture.button", config.capture.button)]
    pins += [(f"display[{i}]", p) for i, p in enumerate(o.display)]
    t = config.teach
    pins += [(f"teach.buttons.\"{k}\"", v) for k, v in t.buttons.items()]
    pins += [("teach.learn_button", t.learn_button), ("teach.undo_button", t.undo_button)]
    labels = teach_labels(t)
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise ConfigError(f"{where}: [teach] label {label!r} must be 1 to 40 letters, digits, '-', '_' or '+'")
    if t.enabled and len(labels) < 2:
        raise ConfigError(f"{where}: [teach] needs at least 2 labels (labels or buttons) when enabled")
    for name, pin in pins:
        if pin is None:
            continue
        key = str(pin).upper().removeprefix("GPIO").removeprefix("BCM")
        if key in used:
            raise ConfigError(f"{where}: [outputs] {name} uses pin {pin!r}, already used by {used[key]}")
        used[key] = name


def teach_labels(teach) -> list[str]:
    """[teach] labels, then the buttons' labels not among them, in order."""
    return list(teach.labels) + [label for label in teach.buttons if label not in teach.labels]


def load_config(path=None) -> tuple[Config, str]:
    """The config from ``path`` (default /etc/cardcam/config.toml), and a line saying which.

    A missing *default* file means built-in defaults; a missing file that was asked for is an error.
    """
    explicit = path is not None
    path = Path(path) if explicit else DEFAULT_CONFIG
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: no such config file") from None
        return defaults(), f"config: {path} not found, using built-in defaults"
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config ({getattr(e, 'strerror', None) or e})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return from_dict(data, str(path)), f"config: {path}"
