"""The distribution client against a stand-in registry.

A real registry (tests/func/test_image_base.py) never serves bytes that fail their digest and
the one we can run here has no token service, so these two behaviours are checked against a
small HTTP server that does what a misbehaving or token-protected registry does.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import pytest

from builder.errors import RegistryError
from builder.registry import Reference, Registry

GOOD = json.dumps({"schemaVersion": 2, "layers": []}).encode()
GOOD_DIGEST = "sha256:" + hashlib.sha256(GOOD).hexdigest()
SEEN: dict[str, Any] = {}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *_: Any) -> None:
        pass

    def do_GET(self) -> None:
        host = f"127.0.0.1:{self.server.server_address[1]}"
        if self.path.startswith("/token"):
            SEEN["token_query"] = self.path
            return self._send(200, json.dumps({"token": "t0ken"}).encode())
        if self.headers.get("Authorization") != "Bearer t0ken":
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="http://{host}/token",'
                             'service="registry.test",scope="repository:team/model:pull"')
            self.end_headers()
            return None
        if self.path == f"/v2/team/model/manifests/{GOOD_DIGEST}":
            return self._send(200, GOOD, "application/vnd.oci.image.manifest.v1+json")
        if self.path.startswith("/v2/team/model/manifests/"):
            return self._send(200, b'{"schemaVersion": 2, "tampered": true}')
        return self._send(404, b"{}")

    def _send(self, status: int, body: bytes, media: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[str]:
    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_an_anonymous_bearer_token_is_fetched_from_the_challenge(server: str) -> None:
    body, media = Registry(server).manifest("team/model", GOOD_DIGEST)
    assert body == GOOD
    assert media == "application/vnd.oci.image.manifest.v1+json"
    assert "service=registry.test" in SEEN["token_query"]
    assert "scope=repository%3Ateam%2Fmodel%3Apull" in SEEN["token_query"]


def test_bytes_that_fail_their_digest_are_refused(server: str) -> None:
    wanted = "sha256:" + "1" * 64
    with pytest.raises(RegistryError, match=r"served a manifest whose digest is sha256:"):
        Registry(server).manifest("team/model", wanted)


def test_an_unreachable_registry_is_a_clear_error() -> None:
    with pytest.raises(RegistryError, match=r"cannot reach the registry 127\.0\.0\.1:9"):
        Registry("127.0.0.1:9", timeout=5).manifest("x", "latest")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("python:3.11", ("registry-1.docker.io", "library/python", "3.11", None)),
        ("ghcr.io/org/img@sha256:" + "a" * 64, ("ghcr.io", "org/img", None, "sha256:" + "a" * 64)),
        ("127.0.0.1:5000/base:1", ("127.0.0.1:5000", "base", "1", None)),
        ("localhost/a/b", ("localhost", "a/b", None, None)),
        ("org/img:v2", ("registry-1.docker.io", "org/img", "v2", None)),
    ],
)
def test_references(text: str, parsed: tuple[str, str, str | None, str | None]) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == parsed


def test_plain_http_only_for_loopback() -> None:
    assert Registry("127.0.0.1:5000").scheme == "http"
    assert Registry("localhost:5000").scheme == "http"
    assert Registry("registry.example:5000").scheme == "https"


class Flaky(BaseHTTPRequestHandler):
    """Answers 503 twice, then redirects a blob to another host (object storage), which
    records whether the Authorization header followed it."""

    other = ""
    seen: ClassVar[list[tuple[str, str | None]]] = []
    failures = 2

    def log_message(self, *_: Any) -> None:
        pass

    def do_GET(self) -> None:
        Flaky.seen.append((self.path, self.headers.get("Authorization")))
        if self.path.startswith("/storage/"):
            body = b"blob bytes"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.headers.get("Authorization") != "Basic dTpw":  # u:p
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if Flaky.failures:
            Flaky.failures -= 1
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(307)
        self.send_header("Location", f"http://{Flaky.other}/storage/blob")
        self.send_header("Content-Length", "0")
        self.end_headers()


def _serve(handler: type[BaseHTTPRequestHandler]) -> tuple[HTTPServer, str]:
    httpd = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"127.0.0.1:{httpd.server_address[1]}"


def test_retries_then_a_redirect_to_another_host_drops_the_authorization(
        monkeypatch: pytest.MonkeyPatch) -> None:
    registry, host = _serve(Flaky)
    storage, other = _serve(Flaky)
    Flaky.other = other.replace("127.0.0.1", "localhost")  # another host name, same machine
    monkeypatch.setenv("REPRO_REGISTRY_USERNAME", "u")
    monkeypatch.setenv("REPRO_REGISTRY_PASSWORD", "p")
    try:
        digest = "sha256:" + hashlib.sha256(b"blob bytes").hexdigest()
        client = Registry(host, user_named=True)  # REPRO_REGISTRY_* are for a host named so

        def read() -> bytes:
            with client.blob_stream("team/model", digest) as body:
                return body.read()

        assert client.retrying("reading a blob", read) == b"blob bytes"
    finally:
        for httpd in (registry, storage):
            httpd.shutdown()
            httpd.server_close()
    assert [auth for path, auth in Flaky.seen if path.startswith("/v2/")] == [
        None, "Basic dTpw", "Basic dTpw", "Basic dTpw"]  # the challenge, two 503s, the 307
    assert Flaky.seen[-1] == ("/storage/blob", None)


def test_a_refused_password_names_where_it_came_from_but_not_the_password(
        monkeypatch: pytest.MonkeyPatch) -> None:
    httpd, host = _serve(Flaky)
    monkeypatch.setenv("REPRO_REGISTRY_USERNAME", "u")
    monkeypatch.setenv("REPRO_REGISTRY_PASSWORD", "wrong-password")
    try:
        with pytest.raises(RegistryError) as caught:
            Registry(host, user_named=True).manifest("team/model", "latest")
    finally:
        httpd.shutdown()
        httpd.server_close()
    text = str(caught.value)
    assert "REPRO_REGISTRY_USERNAME/_PASSWORD" in text
    assert "wrong-password" not in text


class BadTokens(BaseHTTPRequestHandler):
    """A registry whose token service answers badly: `bodies` in turn."""

    bodies: ClassVar[list[bytes]] = []

    def log_message(self, *_: Any) -> None:
        pass

    def do_GET(self) -> None:
        host = f"127.0.0.1:{self.server.server_address[1]}"
        if self.path.startswith("/token"):
            body = BadTokens.bodies.pop(0)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path.startswith("/v2/busy/"):
            self.send_response(429)
            self.send_header("Retry-After", "-1" if "neg" in self.path else "nan")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(401)
        self.send_header("WWW-Authenticate", f'Bearer realm="http://{host}/token"')
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.mark.parametrize("body", [b"<html>", b"[]", b'"x"', b'{"token": "abc\\ndef"}',
                                  b'{"token": 5}'])
def test_a_token_service_that_answers_badly_is_a_registry_error(body: bytes) -> None:
    BadTokens.bodies = [body]
    httpd, host = _serve(BadTokens)
    try:
        with pytest.raises(RegistryError, match="without a usable token") as caught:
            Registry(host).manifest("team/model", "latest")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert "abc" not in str(caught.value)


def test_a_retry_after_that_is_not_a_wait_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    from builder import registry

    monkeypatch.setattr(registry, "BACKOFF", 0.001)
    httpd, host = _serve(BadTokens)
    try:
        for name in ("busy/neg", "busy/nan"):
            with pytest.raises(RegistryError, match=r"HTTP 429 from .* still after 6 tries"):
                Registry(host).manifest(name, "latest")
    finally:
        httpd.shutdown()
        httpd.server_close()


class Elsewhere(BaseHTTPRequestHandler):
    """Redirects blobs where `Elsewhere.to` says; a Link header that leads back to itself;
    on its other port, asks for credentials and records what it was sent."""

    to = ""
    sent: ClassVar[list[str | None]] = []

    def log_message(self, *_: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/elsewhere"):
            Elsewhere.sent.append(self.headers.get("Authorization"))
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="elsewhere"')
        elif "/tags/list" in self.path:
            body = b'{"tags": ["a"]}'
            self.send_response(200)
            self.send_header("Link", f'<{self.path}>; rel="next"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        else:
            self.send_response(307)
            self.send_header("Location", Elsewhere.to)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_redirects_go_to_https_or_loopback_and_credentials_never_follow(
        monkeypatch: pytest.MonkeyPatch) -> None:
    registry_server, host = _serve(Elsewhere)
    other_server, other = _serve(Elsewhere)
    monkeypatch.setenv("REPRO_REGISTRY_USERNAME", "u")
    monkeypatch.setenv("REPRO_REGISTRY_PASSWORD", "p")
    digest = "sha256:" + "0" * 64
    try:
        client = Registry(host, user_named=True)
        Elsewhere.to = "ftp://127.0.0.1:1/x"
        with pytest.raises(RegistryError, match="follows redirects to HTTPS only"):
            client.blob("team/model", digest)
        Elsewhere.to = "http://registry.example/x"  # plain HTTP off loopback
        with pytest.raises(RegistryError, match="follows redirects to HTTPS only"):
            client.blob("team/model", digest)
        Elsewhere.to = f"http://{other}/elsewhere"
        with pytest.raises(RegistryError, match="which asks for credentials"):
            client.blob("team/model", digest)
        assert Elsewhere.sent == [None]  # asked once, sent nothing, and not asked again
        with pytest.raises(RegistryError, match="go round in a circle"):
            list(client.tags("team/model"))
    finally:
        for httpd in (registry_server, other_server):
            httpd.shutdown()
            httpd.server_close()
