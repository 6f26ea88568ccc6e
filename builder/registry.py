"""A small OCI distribution client: pull manifests and blobs by digest, push an image.

Anonymous and bearer-token auth (the WWW-Authenticate challenge every Distribution-compatible
registry uses: Docker Hub, GHCR, Harbor, ECR public, the CNCF registry). Plain HTTP only for
loopback hosts, as Docker does; everything read is checked against its digest.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from builder.errors import InputError, RegistryError
from builder.hashing import sha256_digest as sha256

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MAX_DOCUMENT = 4 << 20  # a manifest, index or config: the OCI spec's 4 MiB


def _bounded(stream: BinaryIO, limit: int, what: str) -> bytes:
    """A response body read whole, but never more than `limit` bytes into memory."""
    body = stream.read(limit + 1)
    if len(body) > limit:
        raise RegistryError(f"{what}: the answer is over {limit} bytes, more than a manifest "
                            "or config may be", hint="the registry or the base is not what "
                                                     "it should be; nothing was written")
    return body


_REFERENCE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?::\d+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)"
                        r"[a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?")
_LOOPBACK = re.compile(r"^(localhost|127(\.\d+){3}|\[::1\])(:\d+)?$")


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """`registry/repo[:tag][@sha256:…]`; a name without a registry host means Docker Hub.

        Raises:
            InputError: not a reference (the distribution spec's grammar, roughly).
        """
        if not _REFERENCE.fullmatch(text):
            raise InputError(f"{text!r} is not an image reference",
                             hint="write REGISTRY/NAME[:TAG][@sha256:DIGEST], e.g. "
                                  "localhost:5000/team/model:v1")
        name, _, digest = text.partition("@")
        head, _, rest = name.partition("/")
        if rest and ("." in head or ":" in head or head == "localhost"):
            registry, path = head, rest
        else:
            registry, path = "registry-1.docker.io", name if "/" in name else f"library/{name}"
        repo, _, tag = path.partition(":") if ":" in path.rsplit("/", 1)[-1] else (path, "", "")
        return cls(registry, repo, tag or None, digest or None)

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}" + (f":{self.tag}" if self.tag else "") + (
            f"@{self.digest}" if self.digest else "")


class Registry:
    def __init__(self, host: str, timeout: float = 60) -> None:
        self.host = host
        self.scheme = "http" if _LOOPBACK.match(host) else "https"
        self.timeout = timeout
        self.token: str | None = None

    def _url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}/v2/{path}"

    @contextlib.contextmanager
    def _open(self, method: str, url: str, headers: dict[str, str],
              data: bytes | BinaryIO | None) -> Iterator[tuple[int, dict[str, str], BinaryIO]]:
        """One HTTP exchange: (status, headers, the body as a stream)."""
        if self.token:
            headers = {**headers, "Authorization": f"Bearer {self.token}"}
        request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)  # noqa: S310
        except urllib.error.HTTPError as exc:
            with exc:
                yield exc.code, dict(exc.headers), exc  # type: ignore[misc]
            return
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryError(f"cannot reach the registry {self.host}: {exc}",
                                hint="check the address, or start the registry; no image was "
                                     "written") from exc
        with response:
            yield response.status, dict(response.headers), response

    def _send(self, method: str, url: str, headers: dict[str, str],
              data: bytes | BinaryIO | None,
              limit: int = MAX_DOCUMENT) -> tuple[int, dict[str, str], bytes]:
        with self._open(method, url, headers, data) as (status, reply, stream):
            return status, reply, _bounded(stream, limit, f"{method} {url}")

    @contextlib.contextmanager
    def _authorised(self, method: str, path_or_url: str, headers: dict[str, str],
                    data: bytes | BinaryIO | None, ok: tuple[int, ...],
                    ) -> Iterator[tuple[dict[str, str], BinaryIO]]:
        """An exchange that answered one of `ok` (after one anonymous token, if asked)."""
        url = path_or_url if "://" in path_or_url else self._url(path_or_url)
        with self._open(method, url, headers, data) as (status, reply, stream):
            if status == 401 and self.token is None:
                self.token = self._token(reply.get("WWW-Authenticate", reply.get(
                    "Www-Authenticate", "")))
            elif status in ok:
                yield reply, stream
                return
            else:
                raise RegistryError(f"{method} {url}: HTTP {status}: "
                                    f"{stream.read(300)!r}",
                                    hint="check the reference and your access to it")
        if hasattr(data, "seek"):
            data.seek(0)  # type: ignore[union-attr]
        with self._open(method, url, headers, data) as (status, reply, stream):
            if status not in ok:
                raise RegistryError(f"{method} {url}: HTTP {status}: {stream.read(300)!r}",
                                    hint="check the reference and your access to it")
            yield reply, stream

    def request(self, method: str, path_or_url: str, *, headers: dict[str, str] | None = None,
                data: bytes | BinaryIO | None = None, ok: tuple[int, ...] = (200,),
                limit: int = MAX_DOCUMENT) -> tuple[dict[str, str], bytes]:
        """An exchange whose body (at most `limit` bytes) is read whole.

        Raises:
            RegistryError: unreachable, refused, or a body over `limit`.
        """
        with self._authorised(method, path_or_url, headers or {}, data, ok) as (reply, body):
            return reply, _bounded(body, limit, f"{method} {path_or_url}")

    def _token(self, challenge: str) -> str:
        """An anonymous bearer token for the challenge's realm, service and scope."""
        if not challenge.lower().startswith("bearer "):
            raise RegistryError(f"{self.host} asks for {challenge or 'credentials'}; only "
                                "anonymous bearer tokens are supported")
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", "")
        query = urllib.parse.urlencode(params)
        status, _, body = self._send("GET", f"{realm}?{query}", {}, None)
        if status != 200:
            raise RegistryError(f"the token service {realm} answered HTTP {status}")
        data = json.loads(body)
        return str(data.get("token") or data.get("access_token"))

    def manifest(self, repo: str, reference: str) -> tuple[bytes, str]:
        """A manifest's bytes and media type; checked when `reference` is a digest."""
        reply, body = self.request("GET", f"{repo}/manifests/{reference}",
                                   headers={"Accept": ", ".join(MANIFEST_TYPES)})
        if reference.startswith("sha256:") and sha256(body) != reference:
            raise RegistryError(f"{self.host}/{repo}@{reference}: the registry served a "
                                f"manifest whose digest is {sha256(body)}",
                                hint="the base is not what the recipe pinned; no image was "
                                     "written")
        media = reply.get("Content-Type", "") or json.loads(body).get("mediaType", "")
        return body, media.split(";")[0]

    def blob(self, repo: str, digest: str, limit: int = MAX_DOCUMENT) -> bytes:
        """A small blob (a config), read whole and checked."""
        _, body = self.request("GET", f"{repo}/blobs/{digest}", limit=limit)
        if sha256(body) != digest:
            raise RegistryError(f"{self.host}/{repo}: blob {digest} arrived as {sha256(body)}")
        return body

    @contextlib.contextmanager
    def blob_stream(self, repo: str, digest: str) -> Iterator[BinaryIO]:
        """A blob's bytes as a stream (the caller checks their digest as it reads)."""
        with self._authorised("GET", f"{repo}/blobs/{digest}", {}, None, (200,)) as (_, body):
            yield body

    def push_blob(self, repo: str, digest: str, data: bytes | BinaryIO,
                  size: int | None = None) -> None:
        """Upload a blob unless the registry has it; `data` may be a stream of `size` bytes."""
        status, _, _ = self._send("HEAD", self._url(f"{repo}/blobs/{digest}"), {}, None)
        if status == 200:
            return
        reply, _ = self.request("POST", f"{repo}/blobs/uploads/", ok=(202,), data=b"")
        location = reply.get("Location", "")
        if location.startswith("/"):
            location = f"{self.scheme}://{self.host}{location}"
        joiner = "&" if "?" in location else "?"
        length = len(data) if isinstance(data, bytes) else size
        self.request("PUT", f"{location}{joiner}digest={urllib.parse.quote(digest)}",
                     headers={"Content-Type": "application/octet-stream",
                              "Content-Length": str(length)}, data=data, ok=(201,))

    def push_manifest(self, repo: str, tag: str, data: bytes, media_type: str) -> str:
        self.request("PUT", f"{repo}/manifests/{tag}", headers={"Content-Type": media_type},
                     data=data, ok=(201,))
        return sha256(data)


def resolve_tag(ref: str) -> str:
    """The digest a registry's tag names now (of the manifest or index it serves).

    Raises:
        RegistryError: the registry cannot be reached or has no such tag.
    """
    parsed = Reference.parse(ref)
    client = Registry(parsed.registry)
    reply, body = client.request("GET", f"{parsed.repository}/manifests/{parsed.tag or 'latest'}",
                                 headers={"Accept": ", ".join(MANIFEST_TYPES)})
    return reply.get("Docker-Content-Digest") or sha256(body)


def platform_manifest(index: dict[str, Any], arch: str) -> str:
    """The digest of the linux/<arch> manifest in an image index."""
    for m in index.get("manifests", []):
        p = m.get("platform", {})
        if p.get("os") == "linux" and p.get("architecture") == arch:
            return str(m["digest"])
    raise RegistryError(f"the base image has no linux/{arch} manifest")
