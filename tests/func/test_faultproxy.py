"""The fault proxy in front of a real registry: it forwards faithfully and injects faults."""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.func import bases
from tests.func.faultproxy import FaultProxy

pytestmark = pytest.mark.skipif(shutil.which("docker-registry") is None,
                                reason="docker-registry (CNCF Distribution) is not installed")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    host, server = bases.start_registry(tmp_path_factory.mktemp("registry"))
    yield host
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture
def proxy(registry: str) -> Iterator[FaultProxy]:
    with FaultProxy(registry) as p:
        yield p


def call(method: str, url: str, data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=data, method=method)  # noqa: S310  (loopback http)
    if data is not None:
        req.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()


def put_blob(proxy: FaultProxy, blob: bytes) -> str:
    """Upload `blob` monolithically through the proxy; return its digest."""
    status, headers, _ = call("POST", f"http://{proxy.host}/v2/t/blobs/uploads/", b"")
    assert status == 202
    assert headers["Location"].startswith(f"http://{proxy.host}/")
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    status, _, _ = call("PUT", f"{headers['Location']}&digest={digest}", blob)
    assert status == 201
    return digest


def test_forwards_and_fails_on_demand(proxy: FaultProxy) -> None:
    assert call("GET", f"http://{proxy.host}/v2/")[0] == 200
    proxy.fail(503, 2, retry_after=1)
    first = call("GET", f"http://{proxy.host}/v2/")
    assert first[0] == 503 and first[1]["Retry-After"] == "1"
    assert [call("GET", f"http://{proxy.host}/v2/")[0] for _ in range(2)] == [503, 200]
    assert [s for _, _, s in proxy.requests] == [200, 503, 503, 200]


def test_a_blob_round_trips(proxy: FaultProxy) -> None:
    blob = os.urandom(3_000_000)
    digest = put_blob(proxy, blob)
    status, headers, body = call("GET", f"http://{proxy.host}/v2/t/blobs/{digest}")
    assert (status, body, headers["Docker-Content-Digest"]) == (200, blob, digest)
    assert call("HEAD", f"http://{proxy.host}/v2/t/blobs/{digest}")[:1] == (200,)
    assert proxy.body_bytes_passed == 3_000_000


def test_a_cut_upload_fails_and_leaves_no_blob(proxy: FaultProxy) -> None:
    proxy.cut_uploads(1_000_000)
    proxy.throttle(2_000_000)
    blob = os.urandom(3_000_000)
    with pytest.raises(OSError):
        put_blob(proxy, blob)
    assert len(proxy.cut_at) == 1 and 1_000_000 <= proxy.cut_at[0] < 3_000_000
    assert proxy.requests[-1][0] == "PUT" and proxy.requests[-1][2] == 0
    proxy.clear()
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    assert call("HEAD", f"http://{proxy.host}/v2/t/blobs/{digest}")[0] == 404


def test_down_answers_nothing(proxy: FaultProxy) -> None:
    proxy.down()
    with pytest.raises(OSError):
        call("GET", f"http://{proxy.host}/v2/")
    proxy.down(False)
    assert call("GET", f"http://{proxy.host}/v2/")[0] == 200
    assert [s for _, _, s in proxy.requests] == [0, 200]
