"""The daemon's settings: a TOML file, every key checked against one typed schema.

``load_config(path)`` returns a ``Config`` whose sections read like ``config.camera.fps``. Each
section is a frozen dataclass (``CameraConfig``, ``ModelConfig``, ...); each field carries its range and help
in its metadata, and one function, ``check``, checks any value against them. Any problem is a
``ConfigError`` naming the file, the key and what was wrong; a key that does not exist names the
nearest one that does, so typos are one glance away. The same schema gives the defaults, so a
missing default file means "all defaults", never a crash, and it writes config.example.toml
(``example_toml``), so the example documents every key.

Sections compare by value: ``old.camera != new.camera`` says whether a reload changed [camera].
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import textwrap
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CONFIG = Path("/etc/cardcam/config.toml")
DEFAULT_MODEL = "/var/lib/cardcam/models/digits01.npz"
# The names [camera] source and [model] runtime accept; device.camera and device.runtime take them from here.
SOURCES = ("auto", "picamera2", "opencv", "replay", "samples")
RUNTIMES = ("auto", "numpy", "tflite")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]{0,39}")  # device.teach.LABEL_PATTERN: a folder name
_PIN = re.compile(r"^(GPIO|BCM|BOARD|J8:|WPI)?\d{1,2}$", re.IGNORECASE)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


# --- a setting: its default, what it may be, and its help, in the field's metadata -------------

def setting(default, kind: str, help: str, **rules):
    """A dataclass field of kind bool, int, float, text, host, choice, pin, pins, pin_map or
    labels; ``rules``: range=(lo, hi), choices=(...), lengths=(...). ``help`` is its comment in
    config.example.toml ("\\n" starts a new comment line)."""
    metadata = {"kind": kind, "help": help, **rules}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


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


def check(f: dataclasses.Field, value):
    """``value`` from the file for setting ``f``, checked against its metadata and converted
    (an int for a float setting becomes a float, "" for a pin becomes None). A ValueError says
    what was expected."""
    rules = f.metadata
    kind = rules["kind"]
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value
    if kind in ("int", "float"):
        lo, hi = rules["range"]
        types = int if kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, types) or not lo <= value <= hi:
            what = "a whole number" if kind == "int" else "a number"
            raise ValueError(f"must be {what} from {lo} to {hi}, got {value!r}")
        return value if kind == "int" else float(value)
    if kind in ("text", "host"):
        if not isinstance(value, str):
            raise ValueError(f"must be a string in quotes, got {value!r}")
        if kind == "host" and (not value or any(c.isspace() or c in "/[]" for c in value)):
            raise ValueError(f'must be an address like "127.0.0.1", "0.0.0.0" or "::", got {value!r}')
        return value
    if kind == "choice":
        if value not in rules["choices"]:
            raise ValueError(f"must be one of {', '.join(map(repr, rules['choices']))}, got {value!r}")
        return value
    if kind == "pin":
        return check_pin(value)
    if kind == "pins":
        if not isinstance(value, list) or len(value) not in rules["lengths"]:
            raise ValueError(f"must be a list of {' or '.join(map(str, rules['lengths']))} pins, got {value!r}")
        return [check_pin(v, allow_none=False) for v in value]
    if kind == "pin_map":
        if not isinstance(value, dict):
            raise ValueError(f'must be a table of label = pin, like {{ "0" = 17, "1" = 27 }}, got {value!r}')
        out = {}
        for label, pin in value.items():
            try:
                out[label] = check_pin(pin, allow_none=False)
            except ValueError as e:
                raise ValueError(f"label {label!r}: {e}") from None
        return out
    if kind == "labels":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f'must be a list of labels in quotes, like ["cat", "dog"], got {value!r}')
        return list(value)
    raise AssertionError(f"setting {f.name}: unknown kind {kind!r}")


# --- the sections ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CameraConfig:
    """[camera]: where frames come from, and their size and pace."""
    source: str = setting("auto", "choice", (
        'Where frames come from: "auto" (the Pi camera on a Pi; in simulation the replay folder if set, '
        'else the bundled sample frames), "picamera2", "opencv" (a webcam, pip install \'cardcam[webcam]\'), '
        '"replay" (the folder or video below) or "samples".'), choices=SOURCES)
    width: int = setting(160, "int", (
        "Frame size in pixels: the size preprocessing works at (the shipped models' work_size, 160 on the "
        "longer side). The Pi camera's ISP scales its lores stream to it for free; a webcam is asked for "
        "it, and replayed pictures are reduced to it once, on load. Larger frames work, at a cost per frame."),
        range=(64, 4056))
    height: int = setting(120, "int", "", range=(48, 3040))
    fps: float = setting(30.0, "float", "Replay/samples pace in frames per second; 0 = as fast as the loop takes them.",
                         range=(0, 240))
    replay: str = setting("", "text", 'A folder of pictures (played in name order) or a video file, for source = "replay".')
    loop: bool = setting(True, "bool", "Replay: start again at the end; false = the daemon stops after the last frame.")
    hold: int = setting(1, "int", "Replay: show each picture this many frames in a row (hold the card up for a moment).",
                        range=(1, 100000))
    buffer_count: int = setting(2, "int", 'Pi camera buffers: 2 is enough and keeps a Pi 3 clear of "Cannot allocate '
                                'memory" (CMA).', range=(1, 8))
    timeout: float = setting(2.0, "float", "Seconds to wait for one frame before it counts as a camera fault.",
                             range=(0.1, 30))
    camera_num: int = setting(0, "int", "Which Pi camera (0 = the first).", range=(0, 16))
    device: int = setting(0, "int", "OpenCV webcam index (0 = /dev/video0).", range=(0, 64))


@dataclass(frozen=True)
class ModelConfig:
    """[model]: which bundle runs, on which runtime, and how a new file is picked up."""
    path: str = setting(DEFAULT_MODEL, "text", "The model bundle. Copy a new one in safely: to a temporary name, "
                        "then rename (see README).")
    runtime: str = setting("auto", "choice", (
        'Inference runtime: "auto" runs the bundle\'s int8 TFLite model when it has one and a TFLite '
        'runtime (ai-edge-litert or tflite-runtime) is installed, else NumPy; "numpy" always works; '
        '"tflite" insists on TFLite.'), choices=RUNTIMES)
    threads: int = setting(1, "int", (
        "TFLite interpreter threads. 1 leaves the other cores to the camera and preprocessing; on these small "
        "networks more threads save at most tens of microseconds (python bench/inference.py --threads N)."),
        range=(1, 64))
    task: str = setting("", "text", 'If set, only models trained for this task are accepted (e.g. "digits01").')
    watch: bool = setting(True, "bool", "Watch the model file and swap a new one in between frames.")
    poll_interval: float = setting(0.5, "float", "Seconds between looks at the model file.", range=(0.05, 60))
    stable_time: float = setting(0.5, "float", "A changed file must stay unchanged this many seconds before it is "
                                 "read (a copy in progress).", range=(0.0, 60))
    retry_interval: float = setting(2.0, "float", "With no usable model, try again this often (seconds).",
                                    range=(0.1, 600))


@dataclass(frozen=True)
class DecisionConfig:
    """[decision]: from the network's probabilities to a steady label."""
    window: int = setting(5, "int", "Average the network's probabilities over this many frames.", range=(1, 100))
    enter: float = setting(0.7, "float", "A label lights when its average reaches `enter` ...", range=(0.0, 1.0))
    exit: float = setting(0.5, "float", "... and goes out when its average falls below `exit` (exit <= enter; the "
                          "gap stops flicker).", range=(0.0, 1.0))


@dataclass(frozen=True)
class OutputsConfig:
    """[outputs]: the LEDs, display and buzzer (device/outputs.py)."""
    leds: dict = setting({"0": 17, "1": 27}, "pin_map", (
        'One LED per label: label = GPIO pin (BCM numbers, or "GPIO17" / "BOARD11").\n'
        "Avoid GPIO2 and GPIO3 for outputs: they have pull-ups, so an LED there glows when released."))
    status_led: int | str | None = setting(22, "pin", (
        "Status LED: steady = running, fast flicker = camera fault, slow blink = model fault, "
        'short blink each second = starting. "" = none.'))
    active_high: bool = setting(True, "bool", "false if the LEDs are wired from 3.3 V to the pin (lit when the pin is low).")
    display: list = setting([], "pins", "Optional 7-segment display for digits: pins for segments a, b, c, d, e, f, g "
                            "(and dp). [] = none.", lengths=(0, 7, 8))
    display_active_high: bool = setting(True, "bool", "false for a common-anode display.")
    buzzer: int | str | None = setting(None, "pin", 'Optional buzzer pin that beeps when a new card is recognised. '
                                       '"" = none.')
    beep_time: float = setting(0.05, "float", "Length of that beep in seconds (0 = silent).", range=(0.0, 2.0))


@dataclass(frozen=True)
class CaptureConfig:
    """[capture]: `cardcam capture`'s button."""
    button: int | str | None = setting(None, "pin", 'A push button for `cardcam capture` (between the pin and '
                                       'ground). "" = press Enter instead.')


@dataclass(frozen=True)
class TeachConfig:
    """[teach]: adding examples and learning on the Pi (device/teachmode.py)."""
    enabled: bool = setting(False, "bool", (
        "Teach mode: show a card, press its label's button (or, in simulation, type its key 1-9 and "
        "Enter), and the frame is kept as an example in `examples`/<label>/ (what the network saw in "
        'seen/). "learn" fits a new output layer on the running model\'s network (README: "Teach it on '
        'the Pi"), saves it over [model] path (the old file kept as <name>.previous.npz) and switches '
        'to it; "undo" switches back. A press with no card in view is refused: the status LED blinks.'))
    labels: list = setting([], "labels", "Labels to teach, in key order (1, 2, ...), with the buttons' labels after them.")
    buttons: dict = setting({}, "pin_map", 'One push button per label (between the pin and ground), like '
                            '{ "cat" = 5, "dog" = 6 }.')
    learn_button: int | str | None = setting(None, "pin", "Learn from the examples and switch to the new model "
                                             '(in simulation: l and Enter). "" = none.')
    undo_button: int | str | None = setting(None, "pin", "Go back to the model that ran before the last learn "
                                            '(in simulation: u and Enter). "" = none.')
    examples: str = setting("/var/lib/cardcam/examples", "text", "Where examples are kept: <label>/<stamp>.png, the "
                            "camera frame; <label>/seen/, what the network saw.")
    base: str = setting("", "text", 'The model to teach from; "" = the running model (its layers up to the output '
                        "layer are kept).")


@dataclass(frozen=True)
class DaemonConfig:
    """[daemon]: the state file and the loop's cadences."""
    state_file: str = setting("", "text", (
        "A JSON file with the current label, fps, model (name, weights SHA-256) and LED states, rewritten "
        'on every change (for scripts and monitoring). "" = none, except under the shipped systemd unit, '
        "which keeps it in /run/cardcam/state.json (cardcam-train deploy reads it there)."))
    status_interval: float = setting(1.0, "float", "Seconds between STATUS updates to systemd (and state file "
                                     "refreshes).", range=(0.1, 60))
    max_backoff: float = setting(1.0, "float", "Longest pause between camera retries in seconds (the pause doubles "
                                 "from 0.05 s up to this).", range=(0.05, 10))


@dataclass(frozen=True)
class WebConfig:
    """[web]: the live web page and JSON API (device/webserver.py)."""
    enabled: bool = setting(False, "bool", (
        "A live web page inside the daemon: what the camera and the network see, the label, probabilities, "
        "fps and the model, plus a canvas to draw a card on and classify it (README: \"Web page\").\n"
        "Off by default. There is no password: anyone who can reach the port sees the camera picture."))
    host: str = setting("127.0.0.1", "host", (
        'Address to listen on. "127.0.0.1" = this machine only; reach it from elsewhere through\n'
        '`ssh -L 8080:localhost:8080 pi`. "0.0.0.0" (or "::") = every network the Pi is on, e.g. to open it '
        'on a phone (the log warns).'))
    port: int = setting(8080, "int", 'TCP port; 0 = any free port (the log line "web page at http://..." says which).',
                        range=(0, 65535))


@dataclass
class Config:
    """Sections as attributes: ``config.decision.enter``. ``source`` says where it came from.
    Each section is frozen; the daemon may put a running section back (a refused [outputs])."""
    camera: CameraConfig = field(default_factory=CameraConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    outputs: OutputsConfig = field(default_factory=OutputsConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    teach: TeachConfig = field(default_factory=TeachConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    web: WebConfig = field(default_factory=WebConfig)
    source: str = "built-in defaults"

    def as_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}


SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(Config) if f.name != "source"}  # name -> class


def defaults() -> Config:
    return Config()


def _nearest(word, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(options)})"


def from_dict(data: dict, where: str) -> Config:
    """Check every section and key of ``data``; defaults fill what is absent."""
    sections = {}
    for section, values in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{where}: unknown section [{section}]{_nearest(section, SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: '{section}' must be a section [{section}], got {values!r}")
        keys = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
        checked = {}
        for key, value in values.items():
            if key not in keys:
                raise ConfigError(f"{where}: [{section}] unknown key '{key}'{_nearest(key, keys)}")
            try:
                checked[key] = check(keys[key], value)
            except ValueError as e:
                raise ConfigError(f"{where}: [{section}] {key} {e}") from None
        sections[section] = SECTIONS[section](**checked)
    config = Config(source=where, **sections)
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


# --- config.example.toml, written from the schema ----------------------------------------------

EXAMPLE_HEADER = """\
# cardcam appliance config: copy to /etc/cardcam/config.toml and edit.
# Every key is optional; the values below are the built-in defaults. A misspelt or unknown key
# stops `cardcam run` with a message naming it (and the key you probably meant).
# Reload after editing: sudo systemctl reload cardcam (SIGHUP), or restart the service.
# Check it any time with: cardcam doctor --config /etc/cardcam/config.toml
"""


def toml_value(value) -> str:
    """A checked value as the file writes it (None, a pin left out, is "")."""
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def example_toml() -> str:
    """config.example.toml: every section and key with its help and its default."""
    lines = EXAMPLE_HEADER.splitlines()
    for name, section in SECTIONS.items():
        lines += ["", f"[{name}]"]
        for f in dataclasses.fields(section):
            for paragraph in filter(None, f.metadata["help"].split("\n")):
                lines += textwrap.wrap(paragraph, 100, initial_indent="# ", subsequent_indent="# ")
            lines.append(f"{f.name} = {toml_value(getattr(section(), f.name))}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m device.config > config.example.toml
    print(example_toml(), end="")
