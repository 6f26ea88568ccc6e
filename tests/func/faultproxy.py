"""A fault-injecting HTTP/1.1 reverse proxy on loopback, for tests of registry clients.

It forwards each request unchanged (method, target, every header including Host) to one
upstream, streams request and response bodies, and answers with `Connection: close` (one
request per connection). Chunked request bodies are passed on as they came, framing and all.
Faults (`fail`, `cut_uploads`, `throttle`, `down`) can be switched while it runs.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import cast

CHUNK = 64 * 1024
HOP = {"connection", "keep-alive", "transfer-encoding"}  # not passed back to the client


class _Cut(Exception):
    """The body was cut on purpose."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    proxy: FaultProxy

    def handle_error(self, request: object, client_address: object) -> None:
        """Stay quiet: broken connections are what this proxy is for."""


def _abort(sock: socket.socket | None) -> None:
    """Make the next close of `sock` a reset (RST), not an orderly FIN."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60

    def log_message(self, format: str, *args: object) -> None:
        """No access log."""

    def _proxy(self) -> None:
        self.close_connection = True
        proxy = cast(_Server, self.server).proxy
        length = int(self.headers.get("Content-Length") or 0)
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        action, status, retry_after, cut = proxy._decide(self.command, length)
        if action == "down":
            _abort(self.connection)
            proxy._record(self.command, self.path, 0)
            return
        if action == "fail":
            self._drain(length, chunked)
            self._answer_fault(status, retry_after)
            proxy._record(self.command, self.path, status)
            return
        host, _, port = proxy.upstream.rpartition(":")
        up = http.client.HTTPConnection(host, int(port), timeout=60)
        sent_headers = False
        try:
            up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                up.putheader(name, value)
            up.endheaders()
            if chunked:
                self._pipe_chunked(up)
            else:
                self._pipe(up, length, cut)
            resp = up.getresponse()
            self.send_response_only(resp.status, resp.reason)
            for name, value in resp.headers.items():
                if name.lower() not in HOP:
                    self.send_header(name, value)
            self.send_header("Connection", "close")
            self.end_headers()
            sent_headers = True
            proxy._record(self.command, self.path, resp.status)
            while data := resp.read(CHUNK):
                self.wfile.write(data)
        except _Cut:
            _abort(up.sock)
            _abort(self.connection)
            proxy._record(self.command, self.path, 0)
        except OSError:
            if not sent_headers:
                self._answer_fault(502, None)
                proxy._record(self.command, self.path, 502)
        finally:
            up.close()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _proxy

    def _pipe(self, up: http.client.HTTPConnection, length: int, cut: int | None) -> None:
        """Stream `length` body bytes upstream; raise _Cut after `cut` bytes."""
        proxy = cast(_Server, self.server).proxy
        limit = length if cut is None else cut
        passed, due = 0, time.monotonic()
        while passed < limit:
            rate = proxy._rate
            size = min(limit - passed, CHUNK if rate is None else max(1, min(CHUNK, rate // 20)))
            data = self.rfile.read(size)
            if not data:
                raise ConnectionError("the client closed the connection mid-body")
            up.send(data)
            passed += len(data)
            proxy._passed(len(data))
            if rate is not None:
                due = max(due, time.monotonic()) + len(data) / rate
                time.sleep(max(0.0, due - time.monotonic()))
        if cut is not None:
            proxy._cut(passed)
            raise _Cut

    def _pipe_chunked(self, up: http.client.HTTPConnection) -> None:
        """Stream a chunked body upstream as it came (framing included)."""
        while True:
            line = self.rfile.readline(CHUNK + 1)
            up.send(line)
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (trailer := self.rfile.readline(CHUNK + 1)) not in (b"\r\n", b"\n", b""):
                    up.send(trailer)
                up.send(b"\r\n")
                return
            self._pipe(up, size, None)
            up.send(self.rfile.readline(CHUNK + 1))

    def _drain(self, length: int, chunked: bool) -> None:
        """Read and drop the request body, so that the answer reaches the client."""
        try:
            if chunked:
                while (line := self.rfile.readline(CHUNK + 1)) not in (b"\r\n", b"\n", b""):
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                    self.rfile.read(size + 2 if size else 0)
            while length > 0 and (data := self.rfile.read(min(length, CHUNK))):
                length -= len(data)
        except (OSError, ValueError):
            pass

    def _answer_fault(self, status: int, retry_after: int | None) -> None:
        body = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "injected fault",
                                       "detail": status}]}).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class FaultProxy:
    """A reverse proxy on 127.0.0.1 in front of `upstream` ("127.0.0.1:PORT")."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.requests: list[tuple[str, str, int]] = []
        self.body_bytes_passed = 0
        self.cut_at: list[int] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None
        self._fail: tuple[int, int, int | None, tuple[str, ...]] = (0, 0, None, ())
        self._cuts: tuple[int, int] = (0, 0)  # (after bytes, count)
        self._rate: int | None = None
        self._down = False

    def start(self) -> FaultProxy:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def fail(self, status: int, count: int, *, retry_after: int | None = None,
             methods: tuple[str, ...] = ()) -> None:
        """Answer the next `count` requests (of `methods`; all when empty) with `status` and a
        small JSON error body, without forwarding them; with `retry_after`, send Retry-After."""
        with self._lock:
            self._fail = (status, count, retry_after, tuple(m.upper() for m in methods))

    def cut_uploads(self, after_bytes: int, *, count: int = 1_000_000) -> None:
        """For the next `count` requests with Content-Length > `after_bytes`: forward the headers
        and `after_bytes` body bytes, then reset both connections (no response). Chunked
        bodies are never cut."""
        with self._lock:
            self._cuts = (after_bytes, count)

    def throttle(self, bytes_per_second: int | None) -> None:
        """Pass request bodies upstream no faster than this (None: no limit)."""
        with self._lock:
            self._rate = bytes_per_second

    def down(self, is_down: bool = True) -> None:
        """While down, read each request's head and close the connection without answering."""
        with self._lock:
            self._down = is_down

    def clear(self) -> None:
        """Switch all faults off."""
        with self._lock:
            self._fail = (0, 0, None, ())
            self._cuts = (0, 0)
            self._rate = None
            self._down = False

    def _decide(self, method: str, length: int) -> tuple[str, int, int | None, int | None]:
        """What to do with one request: (action, fail status, Retry-After, cut after bytes)."""
        with self._lock:
            if self._down:
                return "down", 0, None, None
            status, count, retry_after, methods = self._fail
            if count > 0 and (not methods or method in methods):
                self._fail = (status, count - 1, retry_after, methods)
                return "fail", status, retry_after, None
            after, cuts = self._cuts
            if cuts > 0 and method in ("PUT", "PATCH", "POST") and length > after:
                self._cuts = (after, cuts - 1)
                return "forward", 0, None, after
            return "forward", 0, None, None

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))

    def _passed(self, n: int) -> None:
        with self._lock:
            self.body_bytes_passed += n

    def _cut(self, passed: int) -> None:
        with self._lock:
            self.cut_at.append(passed)
