"""What a picture sent to the web page (/api/predict, the teach panel) may be: PNG or JPEG, at
most MAX_UPLOAD bytes, declaring at most MAX_UPLOAD_PIXELS, checked before it is decoded."""

from __future__ import annotations

import io

from PIL import Image

from device.preprocess import ImageError, open_image
from device.webhttp import RequestError

MAX_UPLOAD = 1 << 20  # bytes: a drawing is a few kilobytes, a phone photo as JPEG well under this
# Pixels a picture may declare before it is decoded: 4x the camera's 640x480 frame, plenty for a
# drawing (the page sends 280x280). A 70 KB PNG can declare 4000x4000, 64 MB once decoded as RGBA.
MAX_UPLOAD_SIZE = (1280, 960)
MAX_UPLOAD_PIXELS = MAX_UPLOAD_SIZE[0] * MAX_UPLOAD_SIZE[1]
UPLOAD_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG"}
UPLOAD_FORMATS = tuple(dict.fromkeys(UPLOAD_TYPES.values()))  # Pillow's names: ("PNG", "JPEG")


def check_upload(body: bytes, content_type: str) -> None:
    """What can be checked of an upload before it is decoded: its type, that it has a body, and
    the size its header declares (Image.open reads the header only) against MAX_UPLOAD_PIXELS."""
    kind = content_type.split(";")[0].strip().lower()
    if kind not in UPLOAD_TYPES:
        raise RequestError(415, f"Content-Type must be image/png or image/jpeg, got {kind or 'none'!r}")
    if not body:
        raise RequestError(400, "empty body: send the picture as the request body")
    try:
        with Image.open(io.BytesIO(body), formats=UPLOAD_FORMATS) as im:
            w, h = im.size
    except Exception:  # not a picture, or a damaged header: decode_upload says which, in its words
        return
    if w * h > MAX_UPLOAD_PIXELS:
        raise RequestError(413, f"picture is {w}x{h} pixels; the largest accepted is {MAX_UPLOAD_PIXELS} pixels "
                                f"({MAX_UPLOAD_SIZE[0]}x{MAX_UPLOAD_SIZE[1]})")


def decode_upload(body: bytes, content_type: str):
    """The uploaded picture as a Pillow image (PNG or JPEG only, sizes checked before decoding)."""
    check_upload(body, content_type)
    try:
        return open_image(io.BytesIO(body), "picture", formats=UPLOAD_FORMATS)
    except ImageError as e:
        raise RequestError(400, str(e)) from None
