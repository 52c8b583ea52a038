"""`cardcam doctor`: is this machine ready to run the appliance? One line per check, a fix per failure."""

from __future__ import annotations

import grp
import importlib
import os
import platform
import shutil
import subprocess
import sys

from device.camera import choose_source_kind, is_raspberry_pi, open_source
from device.config import DEFAULT_CONFIG, ConfigError, load_config
from device.modelfile import load_model, model_path
from device.runtime import describe as describe_runtime
from device.runtime import tflite_interpreter

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"


def _version(module: str) -> str | None:
    try:
        m = importlib.import_module(module)
    except ImportError:
        return None
    except Exception as e:  # a broken install raises all sorts: report it, don't crash the doctor
        return f"broken ({type(e).__name__}: {e})"
    try:
        from importlib.metadata import PackageNotFoundError, version
        return getattr(m, "__version__", None) or version(module)
    except (ImportError, PackageNotFoundError):
        return "installed"


def check_python(on_pi):
    v = platform.python_version()
    if sys.version_info >= (3, 11):
        return OK, "python", f"{v} at {sys.executable}", ""
    return FAIL, "python", f"{v} is too old", "cardcam needs Python 3.11 or newer (Raspberry Pi OS Bookworm has it)"


def check_libraries(on_pi):
    found = {m: _version(m) for m in ("numpy", "PIL")}
    missing = [m for m, v in found.items() if v is None]
    if missing:
        return FAIL, "libraries", f"missing {', '.join(missing)}", "pip install cardcam (numpy and pillow come with it)"
    return OK, "libraries", f"numpy {found['numpy']}, pillow {found['PIL']}", ""


def check_runtimes(on_pi):
    found = tflite_interpreter()
    if found is None:
        return (WARN if on_pi else OK), "runtimes", "numpy only: no TFLite runtime, so every model runs in NumPy", \
            "pip install ai-edge-litert (64-bit Pi OS) or tflite-runtime (32-bit) to run the int8 models"
    return OK, "runtimes", f"numpy and tflite ({found[0]} {found[1]}); auto: {describe_runtime('auto')}", ""


def check_gpiozero(on_pi):
    v = _version("gpiozero")
    if v is None:
        return (FAIL if on_pi else WARN), "gpiozero", "not installed", "pip install 'cardcam[pi]' (simulation needs it too)"
    return OK, "gpiozero", v, ""


def check_camera(on_pi):
    if not on_pi:
        return SKIP, "camera", "not a Raspberry Pi; `cardcam run` simulates with sample frames", ""
    try:
        from picamera2 import Picamera2
    except ImportError as e:
        return FAIL, "camera", f"picamera2 cannot be imported ({e})", \
            "sudo apt install python3-picamera2, and a venv made with --system-site-packages"
    try:
        cameras = Picamera2.global_camera_info()
    except Exception as e:
        return FAIL, "camera", f"libcamera error: {e}", "check the ribbon cable and `rpicam-hello --list-cameras`"
    if not cameras:
        return FAIL, "camera", "no camera found", "check the ribbon cable (contacts towards the HDMI port), then reboot"
    return OK, "camera", ", ".join(str(c.get("Model", c.get("Id"))) for c in cameras), ""


def check_gpio(on_pi):
    if not on_pi:
        return SKIP, "gpio", "not a Raspberry Pi; pins are simulated with gpiozero's MockFactory", ""
    chips = sorted(p for p in os.listdir("/dev") if p.startswith("gpiochip"))
    if not chips:
        return FAIL, "gpio", "no /dev/gpiochip*", "enable GPIO: use Raspberry Pi OS Bookworm or newer"
    usable = [c for c in chips if os.access(f"/dev/{c}", os.R_OK | os.W_OK)]
    if not usable:
        return FAIL, "gpio", f"no access to /dev/{chips[0]}", "sudo usermod -aG gpio $USER, then log in again"
    return OK, "gpio", f"/dev/{usable[0]} usable", ""


def check_groups(on_pi):
    if not on_pi:
        return SKIP, "groups", "not a Raspberry Pi", ""
    mine = {grp.getgrgid(g).gr_name for g in os.getgroups()}
    missing = [g for g in ("video", "gpio") if g not in mine]
    if os.geteuid() == 0 or not missing:
        return OK, "groups", "root" if os.geteuid() == 0 else "in video and gpio", ""
    return FAIL, "groups", f"not in {' and '.join(missing)}", f"sudo usermod -aG {','.join(missing)} $USER, then log in again"


def config_fix(error: ConfigError) -> str:
    """What to do about a config that cannot be used: a missing or unreadable file is not a key to fix."""
    text = str(error)
    if text.endswith("no such config file"):
        return (f"name a config file that exists, or leave out --config for {DEFAULT_CONFIG} "
                "(config.example.toml has every key)")
    if "cannot read config" in text:
        return "make the file readable by this user (ls -l shows who may read it)"
    if "not valid TOML" in text:
        return "fix the TOML syntax at the line and column named (config.example.toml shows the form)"
    return "fix that key (see config.example.toml for every key)"


def check_config_and_model(config_path, on_pi):
    try:
        config, where = load_config(config_path)
    except ConfigError as e:
        return [(FAIL, "config", str(e), config_fix(e)),
                (SKIP, "model", "config not readable", ""), (SKIP, "frames", "config not readable", "")]
    lines = [(OK, "config", where.removeprefix("config: "), "")]
    path = model_path(config, simulate=not on_pi)
    try:
        bundle, runtime = load_model(path, config.model.runtime, config.model.task, threads=config.model.threads)
    except Exception as e:  # BundleError, ModelRefused, RuntimeUnavailable: all mean "no usable model"
        lines.append((FAIL, "model", str(e), "copy a model there: scp model.npz pi@HOST:/tmp/m.npz, then on the Pi "
                      f"sudo mv /tmp/m.npz {path}   (or set [model] path)"))
    else:
        lines.append((OK, "model", f"{bundle.name}: {bundle.meta.get('task')}, labels {' '.join(bundle.labels)}, "
                      f"runtime {runtime.description}, {path}", ""))
    lines.append(check_frames(config, on_pi))
    return lines


def check_frames(config, on_pi):
    """Open the configured frame source for real and read one frame, as `cardcam run` will."""
    kind = choose_source_kind(config, simulate=not on_pi)
    if kind == "picamera2" and check_service(on_pi)[0] == OK:
        return SKIP, "frames", "the running cardcam service holds the camera (systemctl status cardcam shows its fps)", ""
    try:
        with open_source(config, simulate=not on_pi) as source:
            frame = source.read()
            described = source.describe()
    except Exception as e:  # CameraError, ReplayFinished, a driver's own: any of them means no frames
        return FAIL, "frames", f"{kind}: {e}", _frames_fix(kind)
    return OK, "frames", f"{described}: read a {frame.shape[1]}x{frame.shape[0]} frame", ""


def _frames_fix(kind: str) -> str:
    if kind == "replay":
        return "set [camera] replay to a folder of pictures or a video that exists"
    if kind == "opencv":
        return "check [camera] device (ls /dev/video*) and that no other program uses the webcam"
    if kind == "picamera2":
        return "check the ribbon cable and `rpicam-hello --list-cameras`; stop other programs using the camera"
    return "check the [camera] section of the config"


def check_service(on_pi):
    if shutil.which("systemctl") is None or not os.path.isdir("/run/systemd/system"):
        return SKIP, "service", "systemd is not running here", ""
    try:
        state = subprocess.run(["systemctl", "is-active", "cardcam"], capture_output=True, text=True,
                               timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return WARN, "service", f"cannot ask systemd: {e}", ""
    if state == "active":
        return OK, "service", "cardcam.service is active", ""
    return WARN, "service", f"cardcam.service is {state or 'unknown'}", \
        "sudo systemctl enable --now cardcam; then journalctl -u cardcam -f"


def doctor(args) -> int:
    on_pi = is_raspberry_pi()
    results = [check(on_pi) for check in (check_python, check_libraries, check_runtimes, check_gpiozero,
                                          check_camera, check_gpio, check_groups)]
    results += check_config_and_model(args.config, on_pi)
    results.append(check_service(on_pi))
    width = max(len(name) for _, name, _, _ in results)
    for status, name, detail, fix in results:
        line = f"{status:<4}  {name:<{width}}  {detail}"
        if status in (FAIL, WARN) and fix:
            line += f" — fix: {fix}"
        print(line)
    failed = sum(status == FAIL for status, *_ in results)
    print(f"{failed} problem(s)" if failed else "all checks passed")
    return 1 if failed else 0
