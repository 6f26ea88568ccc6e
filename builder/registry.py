"""A small OCI distribution client: pull manifests and blobs by digest, push an image.

Basic and bearer-token auth (the WWW-Authenticate challenges Distribution-compatible registries
use: Docker Hub, GHCR, Harbor, ECR, the CNCF registry), with the credentials Docker's tools
keep (builder/credentials.py). 429s, 5xx answers and dropped connections are tried again with
backoff; a redirect to another host (object storage) loses the Authorization header. Plain
HTTP only for loopback hosts, as Docker does; everything read is checked against its digest.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import logging
import math
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from builder.errors import InputError, RegistryError
from builder.hashing import sha256_digest as sha256

if TYPE_CHECKING:
    from builder.credentials import Credentials

log = logging.getLogger(__name__)
T = TypeVar("T")

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MAX_DOCUMENT = 4 << 20  # a manifest, index or config: the OCI spec's 4 MiB


def _bounded(stream: BinaryIO, limit: int, what: str, seconds: float = 120) -> bytes:
    """A response body read whole, but never more than `limit` bytes into memory, nor for
    longer than `seconds` (a server dripping a byte at a time never times a read out)."""
    deadline = time.monotonic() + seconds
    parts, size = [], 0
    while chunk := stream.read(min(1 << 16, limit + 1 - size)):
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            raise RegistryError(f"{what}: the answer is over {limit} bytes, more than a "
                                "manifest or config may be", hint="the registry or the base "
                                "is not what it should be; nothing was written")
        if time.monotonic() > deadline:
            raise RegistryError(f"{what}: the answer took over {seconds:.0f} s to arrive",
                                hint="the registry is overloaded or misbehaving")
    return b"".join(parts)


def _said(body: bytes) -> str:
    """The start of a registry's error body, as text for a message."""
    return body[:300].decode("utf-8", "replace").strip() or "(no body)"


_REFERENCE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?::\d+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)"
                        r"[a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?")
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{1,8192}")  # RFC 6750's token68, bounded
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
        if "@" in text.split("/", 1)[0] or "://" in text:  # USER:PASSWORD@HOST: not echoed
            raise InputError("an image reference holds a scheme or credentials (scheme:// or "
                             "USER:PASSWORD@HOST); neither is used there",
                             hint="write REGISTRY/NAME[:TAG]; log in with `docker login`")
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


class _Transient(Exception):
    """A failure worth another try: 429, a 5xx, a dropped or timed-out connection."""

    def __init__(self, reason: str, retry_after: float | None = None, *,
                 timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.timed_out = timed_out


RETRY_STATUS = (429, 500, 502, 503, 504)
RETRIES = 5  # after the first try: 0.25 + 0.5 + 1 + 2 + 4 s of waiting at most
BACKOFF = 0.25
MAX_WAIT = 8.0  # a Retry-After longer than this is cut to it
_NETWORK = (ConnectionError, TimeoutError, http.client.HTTPException, urllib.error.URLError)


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect (a blob served from object storage) to HTTPS, or to plain HTTP on a
    loopback host only, dropping the Authorization header when it leads anywhere else than
    where it was sent: a token is for its registry alone."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        to, was = urllib.parse.urlsplit(newurl), urllib.parse.urlsplit(req.full_url)
        if not (to.scheme == "https" or (to.scheme == "http" and _LOOPBACK.match(to.netloc))):
            raise RegistryError(f"{was.netloc} redirected to {to.scheme}://{to.netloc}; repro "
                                "follows redirects to HTTPS only (plain HTTP on loopback)",
                                hint="the registry or what serves its blobs is misconfigured")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and (to.netloc, to.scheme) != (was.netloc, was.scheme):
            new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_Redirects)
Opener = Callable[[], contextlib.AbstractContextManager[Any]]  # a stream with read()


class Registry:
    """One registry host: its scheme, its credentials and the token it gave."""

    def __init__(self, host: str, timeout: float = 30, *, user_named: bool = False) -> None:
        self.host = host
        self.user_named = user_named  # REPRO_REGISTRY_* credentials are for this host
        self.scheme = "http" if _LOOPBACK.match(host) else "https"
        self.timeout = timeout
        self.authorization: str | None = None
        self.answered_from = host  # the host that answered the last exchange (redirects)

    def _url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}/v2/{path}"

    @contextlib.contextmanager
    def _open(self, method: str, url: str, headers: dict[str, str],
              data: bytes | BinaryIO | None) -> Iterator[tuple[int, dict[str, str], BinaryIO]]:
        """One HTTP exchange: (status, headers, the body as a stream).

        Raises:
            _Transient: no connection, a timeout, or a status worth retrying.
        """
        request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
        if self.authorization and urllib.parse.urlsplit(url).netloc == self.host:
            request.add_header("Authorization", self.authorization)
        self.answered_from = self.host
        try:
            response = _OPENER.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            self.answered_from = urllib.parse.urlsplit(exc.geturl() or url).netloc
            with exc:
                if exc.code in RETRY_STATUS:
                    raise _Transient(f"HTTP {exc.code}", _retry_after(exc.headers)) from None
                yield exc.code, dict(exc.headers), exc  # type: ignore[misc]
            return
        except _NETWORK as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ConnectionRefusedError | socket.gaierror):  # nobody there
                raise RegistryError(f"cannot reach the registry {self.host}: {reason}",
                                    hint="check the address, or start the registry; nothing "
                                         "was written") from None
            if isinstance(reason, ssl.SSLError):  # another try would fail the same way
                raise RegistryError(f"TLS with {self.host} failed: {reason}",
                                    hint="check the host name and its certificate (plain "
                                         "HTTP is for loopback hosts only)") from None
            raise _Transient(str(reason) or type(exc).__name__,
                             timed_out=isinstance(reason, TimeoutError)) from None
        with response:
            yield response.status, dict(response.headers), response

    def retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """`attempt()`, tried again after a transient failure, with backoff (and the
        registry's Retry-After, up to a bound).

        Raises:
            RegistryError: it still failed after RETRIES more tries.
        """
        timeouts = 0
        for n in range(RETRIES + 1):
            try:
                return attempt()
            except _Transient as exc:
                timeouts += exc.timed_out
                if n == RETRIES or timeouts > 1:  # one that hangs: not 6 timeouts
                    raise RegistryError(f"{what}: {exc.reason} from {self.host}, still after "
                                        f"{n + 1} tries", hint="check the address, or that "
                                        "the registry is up; nothing was half-written") from None
                wait = min(exc.retry_after if exc.retry_after is not None else BACKOFF * 2**n,
                           MAX_WAIT)
                log.info("%s: %s from %s; trying again in %.2f s", what, exc.reason,
                         self.host, wait)
                time.sleep(wait)
            except _NETWORK as exc:  # a connection dropped while a body was being read
                timeouts += isinstance(exc, TimeoutError)
                if n == RETRIES or timeouts > 1:
                    raise RegistryError(f"{what}: {exc} from {self.host}, still after "
                                        f"{n + 1} tries") from None
                time.sleep(BACKOFF * 2**n)
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _authorised(self, method: str, path_or_url: str, headers: dict[str, str],
                    data: bytes | BinaryIO | None, ok: tuple[int, ...],
                    ) -> Iterator[tuple[int, dict[str, str], BinaryIO]]:
        """An exchange that answered one of `ok` (after asking for authorisation once, if
        the registry wanted it)."""
        url = path_or_url if "://" in path_or_url else self._url(path_or_url)
        for tried in (False, True):
            with self._open(method, url, headers, data) as (status, reply, stream):
                if status == 401 and self.answered_from not in (self.host, ""):
                    raise RegistryError(f"{self.host} redirected {method} {url} to "
                                        f"{self.answered_from}, which asks for credentials; "
                                        "repro sends them to the registry alone",
                                        hint="the registry or what serves its blobs is "
                                             "misconfigured")
                if status == 401 and not tried:
                    challenge = reply.get("WWW-Authenticate", reply.get("Www-Authenticate", ""))
                    self.authorization = self._authorise(challenge)
                elif status in ok:
                    yield status, reply, stream
                    return
                elif status in (401, 403):
                    raise RegistryError(f"{method} {url}: HTTP {status}: the registry refused "
                                        f"{self._who()}", hint=self._login_hint())
                else:
                    raise RegistryError(f"{method} {url}: HTTP {status}: "
                                        f"{_said(stream.read(300))}",
                                        hint="check the reference and your access to it")
            if hasattr(data, "seek"):
                data.seek(0)  # type: ignore[union-attr]

    def request(self, method: str, path_or_url: str, *, headers: dict[str, str] | None = None,
                data: bytes | None = None, ok: tuple[int, ...] = (200,),
                limit: int = MAX_DOCUMENT) -> tuple[int, dict[str, str], bytes]:
        """An exchange whose body (at most `limit` bytes) is read whole; retried when it
        failed in a way worth retrying.

        Raises:
            RegistryError: unreachable, refused, or a body over `limit`.
        """
        def attempt() -> tuple[int, dict[str, str], bytes]:
            with self._authorised(method, path_or_url, headers or {}, data, ok) as (
                    status, reply, body):
                return status, reply, _bounded(body, limit, f"{method} {path_or_url}")

        return self.retrying(f"{method} {path_or_url}", attempt)

    @functools.cached_property
    def _credentials(self) -> Credentials | None:
        """Looked up once, when the registry first asks (a helper may be slow)."""
        from builder import credentials  # noqa: PLC0415

        return credentials.for_host(self.host, variables=self.user_named)

    def _who(self) -> str:
        found = self._credentials
        return f"the credentials from {found.source}" if found else "anonymous access"

    def _login_hint(self) -> str:
        variables = ("REPRO_REGISTRY_USERNAME and REPRO_REGISTRY_PASSWORD" if self.user_named
                     else "REPRO_REGISTRY_USERNAME and _PASSWORD, which go only to a remote you "
                          "name yourself: --remote, REPRO_REMOTE or your own config")
        return (f"log in to {self.host} (`docker login {self.host}`, a credHelpers entry in "
                f"the Docker config, or {variables})")

    def _authorise(self, challenge: str) -> str:
        """The Authorization header a 401's challenge asks for: Basic with the credentials,
        or a Bearer token from the realm (with the credentials, when there are any)."""
        found = self._credentials
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            if found is None:
                raise RegistryError(f"{self.host} asks for a user name and password, and none "
                                    "is configured for it", hint=self._login_hint())
            return found.basic()
        if scheme != "bearer":
            raise RegistryError(f"{self.host} asks for {challenge or 'credentials'} "
                                "authentication; repro speaks Basic and Bearer")
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", "")
        where = urllib.parse.urlsplit(realm)
        if where.scheme not in ("http", "https") or (
                where.scheme == "http" and not _LOOPBACK.match(where.netloc)):
            raise RegistryError(f"{self.host} names the token service {realm!r}; repro asks "
                                "for tokens over HTTPS only (plain HTTP on loopback)")
        query = urllib.parse.urlencode(params)
        headers = {"Authorization": found.basic()} if found else {}
        with self._open("GET", f"{realm}?{query}", headers, None) as (status, _, body):
            if status != 200:
                raise RegistryError(f"the token service {realm} answered HTTP {status} to "
                                    f"{self._who()}", hint=self._login_hint())
            try:
                data = json.loads(_bounded(body, MAX_DOCUMENT, realm))
            except ValueError:
                data = None
        token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            raise RegistryError(f"the token service {realm} answered without a usable token "
                                "(not JSON with a `token` of token characters)",
                                hint="the registry's token service is misconfigured")
        return f"Bearer {token}"

    def manifest(self, repo: str, reference: str) -> tuple[bytes, str]:
        """A manifest's bytes and media type; checked when `reference` is a digest."""
        found = self.manifest_if(repo, reference)
        if found is None:
            raise RegistryError(f"{self.host}/{repo} has no manifest {reference} (HTTP 404)",
                                hint="check the reference (and the tag)")
        return found

    def manifest_if(self, repo: str, reference: str) -> tuple[bytes, str] | None:
        """A manifest's bytes and media type, or None when the registry has none by that
        name (one GET); checked when `reference` is a digest."""
        status, reply, body = self.request(
            "GET", f"{repo}/manifests/{reference}",
            headers={"Accept": ", ".join(MANIFEST_TYPES)}, ok=(200, 404))
        if status == 404:
            return None
        if reference.startswith("sha256:") and sha256(body) != reference:
            raise RegistryError(f"{self.host}/{repo}@{reference}: the registry served a "
                                f"manifest whose digest is {sha256(body)}",
                                hint="what it holds is not what was asked for; nothing was "
                                     "written")
        media = reply.get("Content-Type", "") or json.loads(body).get("mediaType", "")
        return body, media.split(";")[0]

    def blob(self, repo: str, digest: str, limit: int = MAX_DOCUMENT) -> bytes:
        """A small blob (a config), read whole and checked."""
        _, _, body = self.request("GET", f"{repo}/blobs/{digest}", limit=limit)
        if sha256(body) != digest:
            raise RegistryError(f"{self.host}/{repo}: blob {digest} arrived as {sha256(body)}")
        return body

    @contextlib.contextmanager
    def blob_stream(self, repo: str, digest: str) -> Iterator[BinaryIO]:
        """A blob's bytes as a stream (the caller checks their digest as it reads; wrap a
        whole download in `retrying` to try it again)."""
        with self._authorised("GET", f"{repo}/blobs/{digest}", {}, None, (200,)) as (
                _, _, body):
            yield body

    def has_blob(self, repo: str, digest: str) -> bool:
        status, _, _ = self.request("HEAD", f"{repo}/blobs/{digest}", ok=(200, 404))
        return status == 200

    def push_blob(self, repo: str, digest: str, data: bytes | Opener, size: int | None = None,
                  *, mount_from: str | None = None) -> bool:
        """Upload a blob unless the registry has it (or can mount it from `mount_from`, a
        repository on the same registry); `data` is bytes, or opens a stream of `size` bytes
        (opened again for each try). Returns whether bytes were sent.

        Raises:
            RegistryError: refused, or still failing after the retries.
        """
        if self.has_blob(repo, digest):
            return False
        start = f"{repo}/blobs/uploads/"
        if mount_from and mount_from != repo:
            start += "?" + urllib.parse.urlencode({"mount": digest, "from": mount_from})
        length = len(data) if isinstance(data, bytes) else size

        def attempt() -> bool:
            with self._authorised("POST", start, {"Content-Length": "0"}, b"", (201, 202)) as (
                    status, reply, _):
                location = reply.get("Location", "")
            if status == 201:  # mounted: nothing to send
                return False
            if location.startswith("/"):
                location = f"{self.scheme}://{self.host}{location}"
            joiner = "&" if "?" in location else "?"
            url = f"{location}{joiner}digest={urllib.parse.quote(digest)}"
            headers = {"Content-Type": "application/octet-stream",
                       "Content-Length": str(length)}
            if isinstance(data, bytes):
                with self._authorised("PUT", url, headers, data, (201,)):
                    return True
            with data() as stream, self._authorised("PUT", url, headers, stream, (201,)):
                return True

        return self.retrying(f"uploading {digest[:19]} to {self.host}/{repo}", attempt)

    def push_manifest(self, repo: str, tag: str, data: bytes, media_type: str) -> str:
        self.request("PUT", f"{repo}/manifests/{tag}", headers={"Content-Type": media_type},
                     data=data, ok=(201,))
        return sha256(data)

    def tags(self, repo: str, page: int = 1000) -> Iterator[str]:
        """Every tag of a repository, a page at a time (the Link header's next page, on
        this registry, never one seen before).

        Raises:
            RegistryError: a page is not a tag list, or the pages lead elsewhere.
        """
        path = f"{repo}/tags/list?n={page}"
        seen = set()
        while path:
            seen.add(path)
            status, reply, body = self.request("GET", path, ok=(200, 404), limit=64 << 20)
            if status == 404:
                return
            try:
                names = json.loads(body).get("tags") or []
            except (ValueError, AttributeError):
                names = None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise RegistryError(f"{self.host}/{repo}: the tag list is not "
                                    '{"tags": [names]}', hint="the registry is misbehaving")
            yield from names
            found = re.match(r'<([^>]+)>;\s*rel="next"', reply.get("Link", ""))
            link = urllib.parse.urlsplit(found.group(1)) if found else None
            if link is None:
                return
            if link.netloc not in ("", self.host) or not link.path.startswith("/v2/"):
                raise RegistryError(f"{self.host}: the tag list's next page is elsewhere "
                                    f"({found.group(1) if found else ''})")
            path = f"{self.scheme}://{self.host}{link.path}" + (
                f"?{link.query}" if link.query else "")
            if path in seen:
                raise RegistryError(f"{self.host}: the tag list's pages go round in a circle")

    def delete_manifest(self, repo: str, digest: str) -> bool:
        """Delete a manifest by digest; False when the registry does not allow deletes."""
        status, _, _ = self.request("DELETE", f"{repo}/manifests/{digest}",
                                    ok=(202, 200, 404, 405))
        return status != 405


def _retry_after(headers: Any) -> float | None:
    """Retry-After in seconds, when it is a finite, non-negative number."""
    try:
        wait = float(headers.get("Retry-After"))
    except (TypeError, ValueError):
        return None
    return wait if math.isfinite(wait) and wait >= 0 else None


def resolve_tag(ref: str) -> str:
    """The digest a registry's tag names now (of the manifest or index it serves).

    Raises:
        RegistryError: the registry cannot be reached or has no such tag.
    """
    parsed = Reference.parse(ref)
    client = Registry(parsed.registry)
    _, reply, body = client.request("GET",
                                    f"{parsed.repository}/manifests/{parsed.tag or 'latest'}",
                                    headers={"Accept": ", ".join(MANIFEST_TYPES)})
    return reply.get("Docker-Content-Digest") or sha256(body)


def platform_manifest(index: dict[str, Any], arch: str) -> str:
    """The digest of the linux/<arch> manifest in an image index."""
    for m in index.get("manifests", []):
        p = m.get("platform", {})
        if p.get("os") == "linux" and p.get("architecture") == arch:
            return str(m["digest"])
    raise RegistryError(f"the base image has no linux/{arch} manifest")
