"""A standard-library HTTP server that a hostile client cannot wear down: the limits in one list
(``Limits``), the connection slots that enforce them (``HardenedServer``), and the request
reading that respects them (``HardenedHandler``). It knows nothing of cardcam's pages; the web
page's handler (device/webserver.py) subclasses ``HardenedHandler`` and only routes.

Why not a WSGI server such as waitress, which has most of these as settings: it would be a new
dependency of device/ (NumPy and Pillow only) for about the same memory (measured for issue 22:
waitress 2.1.2 with 4 threads +3.5 MB, this server +3.3 MB, in one daemon-like process), Pi OS
Bookworm ships an older major version (2.1.2) than PyPI (3.x), and its answers differ from the
ones the tests pin (JSON errors for malformed requests, a 503 that tells an evicted client why,
a deadline per request rather than per idle gap, no chunked bodies).

Every limit below is tried by an attack in tests/test_web.py or tests/test_daemon_attacks.py.
"""

from __future__ import annotations

import io
import json
import re
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus

if "http.client" not in sys.modules and "ssl" not in sys.modules:
    # http.server reads headers with http.client, which imports ssl for its HTTPS client: OpenSSL
    # would cost the daemon 4 MB of RSS (of the 6 MB it may use above its dependencies) for a
    # client it never makes. So http.client comes in without it; in a process that imports this
    # module first, http.client has no HTTPSConnection (ssl itself still imports).
    sys.modules["ssl"] = None  # `import ssl` raises ImportError, which http.client expects
    try:
        import http.client  # noqa: F401
    finally:
        del sys.modules["ssl"]
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402


class RequestError(Exception):
    """A bad request: answered with ``status`` and ``{"error": message}``; a 503 says when to retry."""

    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.headers = [("Retry-After", str(retry_after))] if retry_after is not None else []


@dataclass(frozen=True)
class Limits:
    """What one client may cost the daemon, and what happens past each limit."""

    # A body over this is refused with 413 before it is read (also on `Expect: 100-continue`),
    # then what the client still sends is read and dropped for linger_s, so it sees the answer.
    body_bytes: int = 1 << 20
    linger_s: float = 2.0
    # A whole request (headers and body) must arrive within this, not each read: a client sending
    # a byte just before each read's timeout (slowloris) is dropped all the same.
    request_s: float = 10.0
    # One thread per connection, this many at most. When all are taken, the connection that has
    # waited longest for its client (an idle keep-alive first, then the slowest; for evict_after_s
    # at least) gives its slot up, with a 503 saying why if it was mid-request.
    connections: int = 32
    evict_after_s: float = 0.5
    # Connections waiting in the kernel for a slot: a burst of clients waits rather than being refused.
    backlog: int = 128


class _DeadlineReader(io.RawIOBase):
    """The connection's input, read only until the handler's deadline for the current request.
    It notes when the handler waits for its client (``waiting``): the server picks a slot to
    free among those."""

    def __init__(self, handler: "_Connection"):
        self.handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        h = self.handler
        remaining = h.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"the request did not arrive within {h.limits.request_s:g} s")
        h.connection.settimeout(remaining)
        h.waiting = True
        try:
            n = h.connection.recv_into(buffer)
        finally:
            h.waiting = False
        h.received += n
        return n


class _Connection(BaseHTTPRequestHandler):
    """What HardenedServer sees of a handler: a connection in a slot, its request's deadline, and
    whether it waits for its client (and since when) so that the server can take the slot back."""

    protocol_version = "HTTP/1.1"  # keep-alive: a polling page reuses its connection

    @property
    def limits(self) -> Limits:
        return self.server.limits

    def setup(self):
        self.timeout = self.limits.request_s  # a client that stalls mid-request is dropped, never waited on
        super().setup()
        self.rfile.close()  # the plain socket reader StreamRequestHandler made; the socket stays open
        self.rfile = io.BufferedReader(_DeadlineReader(self))
        self.since = self.deadline = time.monotonic()
        self.waiting, self.received, self.evicted = False, 0, False
        self.server.register(self)

    def finish(self):
        self.server.unregister(self)
        super().finish()

    def handle_one_request(self):
        """One request, within request_s of the moment the handler is ready for it."""
        self.since = time.monotonic()
        self.deadline = self.since + self.limits.request_s
        self.received = 0
        super().handle_one_request()

    def evict(self) -> None:
        """Free this connection's slot for another (called from the accepting thread, while this
        one waits for its client): a client in the middle of a request hears why."""
        self.evicted = True
        try:
            # select(), not the socket's own calls: those wait for the handler's timeout first.
            if self.received and select.select([], [self.connection], [], 0)[1]:
                body = json.dumps({"error": "too many connections, and this one was the slowest; try again"}).encode()
                head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
                self.connection.send(head + body, socket.MSG_DONTWAIT)
            self.connection.shutdown(socket.SHUT_RDWR)  # its blocked read returns at once
        except (OSError, ValueError):
            pass

    def has_unread_input(self) -> bool:
        """Whether the client sent what the handler has not read yet (it is about to), or hung up."""
        try:
            return bool(select.select([self.connection], [], [], 0)[0])
        except (OSError, ValueError):
            return True  # gone or broken: its own thread finds out; not a slot to take



class HardenedHandler(_Connection):
    """Keep-alive HTTP/1.1 under the server's Limits; JSON answers, errors included. Subclasses
    route in ``do_*`` methods and read a body with ``body_length`` then ``read_body``."""

    def log_message(self, format, *args):  # one line per request would flood the journal at 4 polls a second
        pass

    def send_body(self, status: int, body: bytes, content_type: str, extra=()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in extra:
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, obj, extra=()) -> None:
        self.send_body(status, json.dumps(obj).encode(), "application/json", extra)

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (malformed request line, headers too long, ...) as JSON too."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # the request line was not understood:
            self.request_version = "HTTP/1.0"    # answer with a status line, not a bare HTTP/0.9 body
        try:
            self.send_json(code, {"error": message or HTTPStatus(code).phrase})
        except OSError:
            pass

    def content_length(self) -> int:
        """The body's length: one Content-Length of plain ASCII digits, no Transfer-Encoding."""
        encoding = self.headers.get("Transfer-Encoding")
        if encoding is not None:
            self.close_connection = True
            what = "chunked bodies are" if "chunked" in encoding.lower() else f"Transfer-Encoding {encoding!r} is"
            raise RequestError(411, f"send the picture with a Content-Length ({what} not accepted)")
        lengths = self.headers.get_all("Content-Length") or []
        if len(lengths) > 1:
            self.close_connection = True
            raise RequestError(400, f"{len(lengths)} Content-Length headers; send one")
        if not lengths:
            return 0
        text = lengths[0].strip(" \t")
        if not re.fullmatch(r"[0-9]{1,15}", text):  # str.isdigit() takes "²" and other digits int() does not
            self.close_connection = True
            raise RequestError(400, f"bad Content-Length {lengths[0]!r}")
        return int(text)

    def body_length(self) -> int | None:
        """The length of the body to read; None when it is over the limit (answered already: 413)."""
        length = self.content_length()
        if length > self.limits.body_bytes:
            # Not kept: answer, then close once the client has stopped sending (so it reads the
            # answer instead of a reset connection), within a time limit.
            self._refuse_too_big(f" ({length} bytes)")
            self._linger()
            return None
        if "Content-Length" not in self.headers:
            self.close_connection = True
            raise RequestError(411, "send the picture with a Content-Length")
        return length

    def read_body(self, length: int) -> bytes:
        """The body, ``length`` bytes (at most the limit), within what is left of the deadline."""
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            raise RequestError(408, f"the body did not arrive within {self.limits.request_s:g} s") from None
        if len(body) != length:
            self.close_connection = True
            raise RequestError(400, f"body is {len(body)} bytes, Content-Length said {length}")
        return body

    def discard_body(self) -> None:
        """Read and drop the body, so that the connection can carry the next request."""
        try:
            length = self.content_length()
        except RequestError:
            return
        if length > self.limits.body_bytes:
            self.close_connection = True
            return
        while length > 0:  # in pieces: a discarded body is never held whole
            piece = self.rfile.read(min(length, 1 << 16))
            if not piece:
                self.close_connection = True
                return
            length -= len(piece)

    def _linger(self) -> None:
        """Read and drop what the client still sends, until it stops or linger_s pass."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.2)
            end = time.monotonic() + self.limits.linger_s
            while time.monotonic() < end and self.connection.recv(1 << 16):
                pass
        except OSError:
            pass

    def handle_expect_100(self):
        """`Expect: 100-continue` (curl, for big bodies): refuse an oversized body before it is sent."""
        try:
            too_big = self.content_length() > self.limits.body_bytes
        except RequestError as e:
            self.send_json(e.status, {"error": str(e)})
            return False
        if too_big:
            self._refuse_too_big("")
            return False
        return super().handle_expect_100()

    def _refuse_too_big(self, detail: str):
        self.close_connection = True
        self.send_json(413, {"error": f"picture is larger than the {self.limits.body_bytes // 1024} KB limit{detail}"})


class HardenedServer(ThreadingHTTPServer):
    """A thread per connection, ``limits.connections`` of them at most (see Limits)."""

    daemon_threads = True       # a stalled client never holds up the daemon's exit
    block_on_close = False
    allow_reuse_address = True  # restart at once after a stop (TIME_WAIT)
    closing = False             # set by the owner before shutdown(): stop waiting for a slot

    def __init__(self, address, handler, limits: Limits, log=print):
        self.limits, self.log = limits, log
        self.request_queue_size = limits.backlog
        self._slots = threading.BoundedSemaphore(limits.connections)
        self._handlers: set = set()
        self._handlers_lock = threading.Lock()
        super().__init__(address, handler)

    def register(self, handler) -> None:
        with self._handlers_lock:
            self._handlers.add(handler)

    def unregister(self, handler) -> None:
        with self._handlers_lock:
            self._handlers.discard(handler)

    def process_request(self, request, client_address):
        """A thread for the connection once a slot is free. While none is, the connection that has
        waited longest for its client gives its slot up; the rest wait in the kernel's queue."""
        while not self._slots.acquire(timeout=0.05):
            if self.closing:
                self.shutdown_request(request)
                return
            self._evict_one()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def _evict_one(self) -> None:
        now = time.monotonic()
        with self._handlers_lock:
            waiting = [h for h in self._handlers
                       if h.waiting and not h.evicted and now - h.since >= self.limits.evict_after_s]
        waiting = [h for h in waiting if not h.has_unread_input()]
        if waiting:
            min(waiting, key=lambda h: (h.received > 0, h.since)).evict()

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address):
        self.log(f"web: error serving {client_address[0]}")


class HardenedServer6(HardenedServer):
    address_family = socket.AF_INET6
