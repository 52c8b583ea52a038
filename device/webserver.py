"""The daemon's optional web page and JSON API: what the appliance sees, and draw-a-card to classify.

Standard library only (http.server), on its own daemon thread, started and stopped with `cardcam run`
(``[web]`` in the config). The frame loop never waits on it:

- each frame, the loop hands over *references* (the frame, what preprocessing made of it, the
  network's output, the decision) under a lock held for a few assignments (``LiveState.publish``);
  the HTTP threads copy those references out under the same lock and do all the work (JSON, PNG
  encoding, thumbnails) outside it, lazily, only when a page asks;
- ``POST /api/predict`` runs on the server's *own* runtime, made from the running bundle and
  made again when the daemon swaps in a new model. The NumPy runtime writes into preallocated
  buffers, so sharing the loop's runtime would need a lock the loop waits on; a second instance
  costs a few hundred kilobytes and no waiting. The HTTP threads hand drawings to one worker
  thread that decodes and classifies them one at a time (the loop is never part of that), once
  the picture's declared size passed a pixel budget: a request's memory is bounded, and so is
  the number in flight (over MAX_PREDICTS: 503 with Retry-After).

Slow and idle clients cannot lock anyone out: the HTTP side is device/webhttp.py, a standard-library
server whose limits (body size, an overall deadline per request, connection slots that the
longest-waiting client gives up when all are taken) are listed in one place, ``webhttp.Limits``.

Endpoints (README, "Web page"): ``/`` (the page, device/web/), ``GET /api/status``,
``GET /api/model``, ``GET /api/image/frame.png``, ``GET /api/image/input.png``, ``POST /api/predict``.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from device.classify import classify
from device.preprocess import ImageError, to_frame, to_picture
from device.runtime import RuntimeUnavailable, make_runtime
from device.webhttp import HardenedHandler, HardenedServer, HardenedServer6, Limits, RequestError
from device.upload import MAX_UPLOAD, check_upload, decode_upload
from device.webteach import TEACH_POSTS, seen_png, teach_post, teach_state

PAGE_DIR = Path(__file__).resolve().parent / "web"
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"), "/index.html": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"), "/style.css": ("style.css", "text/css; charset=utf-8")}
MAX_PREDICTS = 8  # predict requests in flight (a body of at most 1 MB each, waiting or running); more: 503
THUMB_WIDTH = 240
POSTS = ("/api/predict",) + TEACH_POSTS


class LiveState:
    """The latest of everything, handed from the frame loop to the HTTP threads.

    The loop only stores references (``publish`` per frame, ``set_record`` at status changes,
    ``set_model`` on a model swap); nothing it hands over is written again afterwards (each frame
    and each preprocessing result is a new array), so readers may use them without copying.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._latest = None      # (seq, frame, classification, shown)
        self._seq = 0
        self._record: dict = {}  # the daemon's state record: status, fps, LEDs, errors, ...
        self._model = None       # (bundle, runtime kind, threads, runtime description)
        self.teaching = None     # device.teachmode.TeachMode while [teach] is on (device/webteach.py)
        self.started = time.monotonic()

    def publish(self, frame, classification, shown) -> None:
        """One frame: the camera frame, what classify() made of it (device.classify.Classification),
        and what the appliance shows after the decision (device.decision.Decision: label, confidence)."""
        with self._lock:
            self._seq += 1
            self._latest = (self._seq, frame, classification, shown)

    def set_record(self, record: dict) -> None:
        with self._lock:
            self._record = record

    def set_model(self, bundle, runtime_kind: str, threads: int, description: str) -> None:
        with self._lock:
            self._model = (bundle, runtime_kind, threads, description)

    def snapshot(self):
        """(latest, record, model): references, consistent with each other."""
        with self._lock:
            return self._latest, self._record, self._model


def is_loopback(host: str) -> bool:
    """True when every address ``host`` stands for is this machine only."""
    if host.lower().rstrip(".") == "localhost":  # RFC 6761: always loopback, even with no /etc/hosts
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)  # tiny pictures: speed over a few bytes
    return out.getvalue()


def input_picture(prepared, input_shape) -> Image.Image:
    """What the network sees, at its own size (the page scales it up with crisp pixels): light ink on
    black; all black when there was nothing to classify."""
    if prepared is None or prepared.input is None:
        return Image.new("L", (int(input_shape[1]), int(input_shape[0])), 0)
    return Image.fromarray(prepared.input_bytes(), "L")


def frame_thumbnail(frame, prepared) -> Image.Image:
    """The camera frame, small, with the box of the ink preprocessing found drawn in red. A grey
    picture with one palette entry made red: PNG encodes it twice as fast as RGB, at two thirds the bytes."""
    picture = to_picture(frame)
    if picture.mode == "F":  # greys in [0, 1] (16-bit or float frames)
        picture = Image.fromarray(to_frame(picture), "L")
    scale = THUMB_WIDTH / picture.width
    grey = picture.resize((THUMB_WIDTH, max(1, round(picture.height * scale))), Image.Resampling.BOX)
    pixels = np.minimum(np.asarray(grey), 254)  # 255 is the red
    if prepared is not None and prepared.box is not None:
        l, t, r, b = (v * scale for v in prepared.box)
        _outline(pixels, *(int(v) for v in (l - 2, t - 2, r + 2, b + 2)))
    thumb = Image.frombytes("P", grey.size, pixels.tobytes())
    thumb.putpalette(_THUMB_PALETTE)
    return thumb


def _outline(pixels, x0: int, y0: int, x1: int, y1: int, width: int = 2) -> None:
    """A rectangle's outline, ``width`` pixels inward from (x0, y0)-(x1, y1) inclusive, in 255,
    clipped to the picture: ImageDraw's rectangle, which would load FreeType (1.5 MB of RSS) too."""
    h, w = pixels.shape
    for i in range(width):
        for y in (y0 + i, y1 - i):
            if 0 <= y < h and x1 >= 0:
                pixels[y, max(x0, 0):x1 + 1] = 255
        for x in (x0 + i, x1 - i):
            if 0 <= x < w and y1 >= 0:
                pixels[max(y0, 0):y1 + 1, x] = 255


_THUMB_PALETTE = [v for g in range(255) for v in (g, g, g)] + [230, 60, 40]


class WebApp:
    """What the endpoints answer, from a LiveState; independent of the socket handling."""

    def __init__(self, live: LiveState, log=print):
        self.live = live
        self.log = log
        self.pages = {path: ((PAGE_DIR / name).read_bytes(), kind) for path, (name, kind) in ASSETS.items()}
        self._image_cache: dict = {}           # kind -> (seq, png bytes)
        self._cache_lock = threading.Lock()
        # Drawings are decoded and classified on one thread of their own, one at a time, with one
        # runtime (the frame loop has its own): decoded pictures never pile up, and their memory is
        # reused (one thread, one malloc arena; each HTTP thread's own arena kept 12 MB per picture).
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="cardcam-predict")
        self.predict_slots = threading.BoundedSemaphore(MAX_PREDICTS)  # requests in flight, taken by the handler
        self._runtime = None
        self._runtime_for = None               # the (bundle, kind, threads) it was made for

    def status(self) -> dict:
        latest, record, model = self.live.snapshot()
        out = {k: record.get(k) for k in ("state", "status", "fps", "reloads", "refusals", "camera_error",
                                          "model_error", "frame_errors", "frame_error", "leds", "status_led",
                                          "display")}
        out["state"] = out["state"] or "starting"
        out["uptime_s"] = round(time.monotonic() - self.live.started, 1)
        bundle = model[0] if model else None
        out.update(model=bundle.name if bundle else None, model_sha256=bundle.meta["weights_sha256"] if bundle else None,
                   labels=list(bundle.labels) if bundle else [], runtime=model[3] if model else None)
        if latest is None:
            out.update(frames=0, label=None, confidence=None, probabilities=None, reason="no frame yet")
            return out
        seq, _, found, shown = latest
        probs = found.probabilities
        out.update(frames=seq, label=shown.label, confidence=round(float(shown.confidence), 4),
                   reason=found.reason, found=found.prepared.found,
                   probabilities=None if probs is None or bundle is None or len(probs) != len(bundle.labels)
                   else {l: round(float(p), 4) for l, p in zip(bundle.labels, probs)})
        return out

    def model(self) -> dict:
        _, _, model = self.live.snapshot()
        if model is None:
            raise RequestError(503, "no model loaded yet")
        bundle, kind, _, description = model
        meta = bundle.meta
        return {"name": bundle.name, "task": meta.get("task"), "labels": list(bundle.labels),
                "arch": meta.get("arch"), "input_shape": list(bundle.input_shape),
                "weights_sha256": meta.get("weights_sha256"), "runtime": description, "runtime_setting": kind,
                "provenance": meta.get("provenance", {}), "preprocess": meta.get("preprocess", {}),
                "tflite": meta.get("tflite"), "path": str(bundle.path) if bundle.path else None}

    def image(self, kind: str) -> bytes:
        latest, _, model = self.live.snapshot()
        if latest is None:
            raise RequestError(503, "no frame yet")
        seq, frame, found, _ = latest
        prepared = found.prepared
        with self._cache_lock:
            cached = self._image_cache.get(kind)
            if cached is not None and cached[0] == seq:
                return cached[1]
        if kind == "frame":
            data = png_bytes(frame_thumbnail(frame, prepared))
        else:
            data = png_bytes(input_picture(prepared, model[0].input_shape if model else (32, 32, 1)))
        with self._cache_lock:
            self._image_cache[kind] = (seq, data)
        return data

    def predict(self, body: bytes, content_type: str) -> dict:
        check_upload(body, content_type)
        _, _, model = self.live.snapshot()
        if model is None:
            raise RequestError(503, "no model loaded yet", retry_after=5)
        job = self._worker.submit(self._classify, body, content_type, model)
        try:
            return job.result(timeout=10)
        except TimeoutError:
            job.cancel()
            raise RequestError(503, "busy classifying other drawings; try again", retry_after=1) from None

    def _classify(self, body: bytes, content_type: str, model) -> dict:
        """On the worker thread: decode, preprocess, run the network."""
        bundle, kind, threads, _ = model
        picture = decode_upload(body, content_type)
        made_for = self._runtime_for
        # By identity: a Bundle compares by value (every weight array), and a reload is a new object.
        if made_for is None or made_for[0] is not bundle or made_for[1:] != (kind, threads):
            try:
                self._runtime = make_runtime(bundle, kind, threads)
            except RuntimeUnavailable as e:
                raise RequestError(503, f"cannot run the model here: {e}") from None
            self._runtime_for = (bundle, kind, threads)
        t0 = time.perf_counter()
        try:
            result = classify(picture, bundle, self._runtime)
        except ImageError as e:
            raise RequestError(400, str(e)) from None
        ms = 1000 * (time.perf_counter() - t0)
        record = {"reason": ""} | result.record(bundle.labels)
        seen = base64.b64encode(png_bytes(input_picture(result.prepared, bundle.input_shape))).decode()
        return record | {"model": bundle.name, "runtime": self._runtime.description, "ms": round(ms, 2),
                         "input_png": f"data:image/png;base64,{seen}"}

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)


class _Handler(HardenedHandler):
    """The routes: the page and its assets, the JSON API, the teach panel's presses."""

    server_version = "cardcam"

    @property
    def app(self) -> WebApp:
        return self.server.app

    def _guard(self, method) -> None:
        # Writing the answer has the whole timeout, whatever reading the request left of it.
        self.connection.settimeout(self.limits.request_s)
        try:
            method()
        except RequestError as e:
            self.send_json(e.status, {"error": str(e)}, e.headers)
        except (ConnectionError, socket.timeout):
            self.close_connection = True
        except Exception as e:  # never let one request take the thread down silently
            self.app.log(f"web: {self.command} {self.path}: {type(e).__name__}: {e}")
            self.close_connection = True
            try:
                self.send_json(500, {"error": f"internal error: {type(e).__name__}"})
            except OSError:
                pass

    def do_GET(self):
        self._guard(self._get)

    def do_HEAD(self):
        self._guard(self._get)

    def do_POST(self):
        self._guard(self._post)

    def do_PUT(self):
        self._guard(self._not_allowed)

    do_DELETE = do_PATCH = do_PUT

    def _not_allowed(self):
        self.discard_body()
        allowed = "POST" if self._route() in POSTS else "GET, HEAD"
        self.send_body(405, json.dumps({"error": f"{self.command} is not allowed here; use {allowed}"}).encode(),
                       "application/json", [("Allow", allowed)])

    def _route(self) -> str:
        return self.path.split("?", 1)[0]

    def _get(self):
        if self.headers.get("Transfer-Encoding") or self.content_length() > 0:
            # Read as the next request, the body would be answered too: a request smuggled in.
            self.close_connection = True
            raise RequestError(400, f"a {self.command} request has no body")
        path = self._route()
        if path in self.app.pages:
            body, kind = self.app.pages[path]
            self.send_body(200, body, kind)
        elif path == "/api/status":
            self.send_json(200, self.app.status())
        elif path == "/api/model":
            self.send_json(200, self.app.model())
        elif path in ("/api/image/frame.png", "/api/image/input.png"):
            self.send_body(200, self.app.image(path.rsplit("/", 1)[1][:-4]), "image/png")
        elif path == "/api/teach":
            self.send_json(200, teach_state(self.app.live.teaching))
        elif path.startswith("/api/teach/seen/"):
            self.send_body(200, seen_png(self.app.live.teaching, path), "image/png")
        elif path in POSTS:
            self._not_allowed()
        else:
            raise RequestError(404, f"no such page: {path}")

    def _post(self):
        route = self._route()
        if route not in POSTS:
            self._not_allowed()
            return
        length = self.body_length()
        if length is None:  # over the limit: answered
            return
        slots = self.app.predict_slots
        if not slots.acquire(blocking=False):
            try:
                self.discard_body()  # so that the connection can carry the next request
            except (TimeoutError, OSError):
                self.close_connection = True
            raise RequestError(503, f"busy: {MAX_PREDICTS} drawings are being classified; try again", retry_after=1)
        try:
            body, kind = self.read_body(length), self.headers.get("Content-Type", "")
            if route == "/api/predict":
                answer = self.app.predict(body, kind)
            else:  # the teach panel's presses: an empty body is the card in view
                answer = teach_post(self.app.live.teaching, route, self.path.partition("?")[2], body, kind,
                                    self.app.live.snapshot()[2])
        finally:
            slots.release()
        self.send_json(200, answer)


class WebServer:
    """The HTTP server on its own thread: ``start()`` binds (OSError if it cannot), ``stop()`` returns
    within about 0.1 s whatever the clients do."""

    POLL = 0.05  # serve_forever's shutdown check (its default 0.5 s would eat the whole SIGTERM budget)

    def __init__(self, live: LiveState, host: str, port: int, log=print, request_timeout: float = 10.0,
                 max_connections: int = 32):
        self.app = WebApp(live, log)
        self.host, self.port = host, port
        # One thread per connection; a page needs a few. The other limits: webhttp.Limits' defaults.
        self.limits = Limits(body_bytes=MAX_UPLOAD, request_s=request_timeout, connections=max_connections)
        self._httpd = None
        self._thread = None

    def start(self) -> "WebServer":
        server_class = HardenedServer6 if ":" in self.host else HardenedServer
        httpd = server_class((self.host, self.port), _Handler, self.limits, self.app.log)
        httpd.app = self.app
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": self.POLL},
                                        name="cardcam-web", daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.closing = True  # a connection waiting for a slot does not hold up the shutdown
        httpd.shutdown()
        httpd.server_close()
        self.app.close()
        self._thread.join(0.5)
