"""Where the daemon keeps its state file: the JSON record of what it runs and shows.

Monitoring scripts and `cardcam-train deploy` read it (the label, fps, and the model's name and
weights SHA-256, so a deploy can tell when the new model runs). ``[daemon] state_file`` names it;
left empty, a daemon that systemd started with ``RuntimeDirectory=`` (the shipped unit has
``RuntimeDirectory=cardcam``) keeps it in that directory: /run/cardcam/state.json.
"""

from __future__ import annotations

import json
import os

STATE_NAME = "state.json"
DEFAULT_STATE_FILE = "/run/cardcam/" + STATE_NAME  # what the shipped unit gives; deploy reads it


def state_file(configured: str, environ=os.environ) -> str:
    """The configured file, else $RUNTIME_DIRECTORY/state.json under systemd, else "" (none)."""
    if configured:
        return configured
    runtime_dir = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]  # several are ':'-separated
    return os.path.join(runtime_dir, STATE_NAME) if runtime_dir else ""


class StateFile:
    """The daemon's state record, written whole (a temporary file renamed over it) so a reader never
    sees half a record. A file that cannot be written is logged once and not tried again."""

    def __init__(self, path: str, log):
        self.configured = path  # as configured ("" for none)
        self.path = path        # where it is written; "" once given up
        self.log = log

    def write(self, record: dict) -> None:
        if not self.path:
            return
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(record, f)
            os.replace(tmp, self.path)
        except OSError as e:
            self.log(f"cannot write state file {self.path}: {e.strerror or e}")
            self.path = ""
