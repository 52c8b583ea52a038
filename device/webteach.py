"""The web page's teach panel (when [teach] is on): the labels, their example counts and
thumbnails, and add-example, learn and undo.

``GET /api/teach`` gives the panel's state; ``GET /api/teach/seen/<label>/<stamp>.png`` a
thumbnail (what the network saw of an example); ``POST /api/teach/example?label=L`` adds the
card the camera sees (empty body) or an uploaded picture (a PNG or JPEG body, under /api/predict's
rules: size, pixel budget, requests in flight); ``POST /api/teach/learn`` and ``/api/teach/undo``.
A POST is a press like a button's: it waits for the daemon's loop to serve it (device.teachmode)
and answers with what happened; a refusal (no card in view, already learning, too few examples)
is a 409 with the same words as the log line.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs

from device.files import open_regular
from device.preprocess import preprocess, to_frame
from device.upload import decode_upload
from device.webhttp import RequestError

TEACH_POSTS = ("/api/teach/example", "/api/teach/learn", "/api/teach/undo")
THUMBNAILS = 4         # the latest examples shown per label
WAIT = 20.0            # seconds a press waits for the loop (a learn takes 1-2 s on a Pi 3B)
MAX_SEEN_BYTES = 1 << 16
_SEEN = re.compile(r"/api/teach/seen/([A-Za-z0-9][A-Za-z0-9_+-]{0,39})/([0-9]{8}-[0-9]{6}-[0-9]{9})\.png")


def _on(teaching):
    if teaching is None:
        raise RequestError(404, "teach mode is off ([teach] enabled = false in the config)")
    return teaching


def teach_state(teaching) -> dict:
    teaching = _on(teaching)
    thumbnails = {label: [f"api/teach/seen/{label}/{p.name}" for p in teaching.example_files(label)[-THUMBNAILS:]]
                  for label in teaching.labels}
    return {"labels": list(teaching.labels), "counts": teaching.counts(), "thumbnails": thumbnails,
            "last": teaching.last, "learning": teaching.learning}


def seen_png(teaching, path: str) -> bytes:
    """An example's thumbnail; only names teach mode makes, of its own labels, are served."""
    teaching = _on(teaching)
    match = _SEEN.fullmatch(path)
    if match is None or match[1] not in teaching.labels:
        raise RequestError(404, f"no such example picture: {path}")
    try:
        with open_regular(teaching.examples / match[1] / "seen" / f"{match[2]}.png", MAX_SEEN_BYTES) as f:
            return f.read()
    except (OSError, ValueError):
        raise RequestError(404, f"no such example picture: {path}") from None


def teach_post(teaching, route: str, query: str, body: bytes, content_type: str, model) -> dict:
    """A press from the page: queued for the loop, answered once it is served."""
    teaching = _on(teaching)
    if route == "/api/teach/example":
        label = parse_qs(query).get("label", [""])[0]
        if label not in teaching.labels:
            raise RequestError(400, f"unknown label {label!r} (teach labels: {', '.join(teaching.labels)})")
        frame = prepared = None
        if body:  # an uploaded picture: decoded and preprocessed here, as /api/predict does
            if model is None:
                raise RequestError(503, "no model loaded yet", retry_after=5)
            bundle = model[0]
            frame = to_frame(decode_upload(body, content_type))
            prepared = preprocess(frame, bundle.preprocess, bundle.input_shape)
        request = teaching.ask("example", label, frame, prepared)
    else:
        request = teaching.ask(route.rsplit("/", 1)[1])
    if not request.done.wait(WAIT):
        raise RequestError(503, f"the appliance did not get to it within {WAIT:g} s (no camera frames?); "
                                  "try again", retry_after=5)
    if not request.ok:
        raise RequestError(409, request.message)
    return {"ok": True, "message": request.message} | teach_state(teaching)
