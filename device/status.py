"""Where the daemon keeps its state file: the JSON record of what it runs and shows.

Monitoring scripts and `cardcam-train deploy` read it (the label, fps, and the model's name and
weights SHA-256, so a deploy can tell when the new model runs). ``[daemon] state_file`` names it;
left empty, a daemon that systemd started with ``RuntimeDirectory=`` (the shipped unit has
``RuntimeDirectory=cardcam``) keeps it in that directory: /run/cardcam/state.json.
"""

from __future__ import annotations

import os

STATE_NAME = "state.json"
DEFAULT_STATE_FILE = "/run/cardcam/" + STATE_NAME  # what the shipped unit gives; deploy reads it


def state_file(configured: str, environ=os.environ) -> str:
    """The configured file, else $RUNTIME_DIRECTORY/state.json under systemd, else "" (none)."""
    if configured:
        return configured
    runtime_dir = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]  # several are ':'-separated
    return os.path.join(runtime_dir, STATE_NAME) if runtime_dir else ""
