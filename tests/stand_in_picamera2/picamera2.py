"""A stand-in for the parts of the picamera2 API that device.camera uses, for machines with no camera.

It sits at the import boundary only (this folder goes first on PYTHONPATH, or into sys.modules),
and follows the real library: ``Picamera2(camera_num)`` acquires the camera (IndexError when
there is none, RuntimeError "Device or resource busy" when another process holds it),
``create_preview_configuration(main=, lores=, buffer_count=)`` returns a config dict,
``configure`` fills ``camera_config``, and ``capture_array("lores")`` returns YUV420 as an array
of height * 3 / 2 rows by ``stride`` bytes (rows padded), as picamera2's request.make_array does.

Driven by files in the folder named by $STAND_IN_CAMERA_DIR:
  frames/*.png   the pictures the sensor sees (cycled; grey);
  absent         no camera attached;          busy   another process holds the camera;
  unplugged      captures fail with a timeout, as when the ribbon cable comes loose;
  short          captures return a buffer cut short (4 rows), as a driver fault might;
  stalled        a capture hangs while it exists, whatever its wait=, as a hung driver would.
Every call is appended to calls.log there, so a test can see what the daemon asked for.
"""

import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

STRIDE_PAD = 64
_instances = []


def _dir() -> Path:
    return Path(os.environ.get("STAND_IN_CAMERA_DIR", "."))


def _log(line: str) -> None:
    with open(_dir() / "calls.log", "a") as f:
        f.write(line + "\n")


class Picamera2:
    def __init__(self, camera_num=0, **kwargs):
        _log(f"open {camera_num}")
        if (_dir() / "absent").exists():
            raise IndexError("list index out of range")
        if (_dir() / "busy").exists():
            raise RuntimeError("Failed to acquire camera: Device or resource busy")
        self.camera_config = {}
        self.started = False
        self.closed = False
        self._frames = [np.asarray(Image.open(p).convert("L")) for p in sorted((_dir() / "frames").glob("*.png"))]
        self._next = 0
        _instances.append(self)

    def create_preview_configuration(self, main={}, lores=None, raw={}, buffer_count=4, queue=True, **kwargs):
        main = {"format": "XBGR8888", "size": (640, 480)} | dict(main)
        if lores is not None:
            lores = {"format": "YUV420", "size": main["size"]} | dict(lores)
            if lores["format"] not in ("YUV420", "YVU420"):
                raise RuntimeError("lores stream must be YUV")
        return {"main": main, "lores": lores, "buffer_count": buffer_count, "queue": queue}

    def configure(self, config):
        _log(f"configure lores={config['lores']} buffer_count={config['buffer_count']}")
        self.camera_config = config
        if config["lores"] is not None:
            w, h = config["lores"]["size"]
            config["lores"]["stride"] = w + STRIDE_PAD

    def start(self, config=None, show_preview=False):
        _log("start")
        self.started = True

    def capture_array(self, name="main", wait=None):
        if not self.started:
            raise RuntimeError("Camera is not started")
        while (_dir() / "stalled").exists():
            time.sleep(0.01)
        if (_dir() / "unplugged").exists():
            time.sleep(min(float(wait) if wait not in (None, True) else 1.0, 0.2))
            raise TimeoutError("Camera frontend has timed out!")
        time.sleep(1 / 120)  # the sensor's frame interval
        cfg = self.camera_config[name]
        w, h = cfg["size"]
        stride = cfg["stride"]
        frame = self._frames[self._next % len(self._frames)]
        self._next += 1
        yuv = np.full((h * 3 // 2, stride), 128, np.uint8)
        yuv[:h, :w] = np.asarray(Image.fromarray(frame).resize((w, h)))
        yuv[:h, w:] = 0  # row padding: never part of the picture
        if (_dir() / "short").exists():
            return yuv[:4]
        return yuv

    def stop(self):
        _log("stop")
        self.started = False

    def close(self):
        _log("close")
        self.closed = True
