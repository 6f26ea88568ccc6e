"""Data named by URL and digest: fetched into the store on first use, checked, then reused.

    [data]
    train = { url = "https://example.org/train.csv", digest = "sha256:…" }

The stored copy is a blob like any other (named by its BLAKE3, its sha256 remembered), so an
input's identity is its content: a URL input and a local copy of the same bytes give the same
run key. Bytes that are not the declared digest are never stored (Nix's fixed-output fetch,
DVC's import-url). HTTP(S) needs nothing more; `s3://` and `gs://` go through fsspec, with
s3fs or gcsfs installed (`pip install 'repro-builder[s3]'` or `[gcs]`), and use the
machine's usual AWS or Google credentials.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from builder import __version__, hashing
from builder.blobs import CorruptBlob, Stalled, arriving
from builder.errors import FetchError, InputError
from builder.recipe import DataInput, Recipe
from builder.store import Store

log = logging.getLogger(__name__)
CHUNK = 1 << 20
TIMEOUT = 30  # seconds without a byte before a connection is given up
ATTEMPTS = 3
ROOM_CHECK = 256 << 20  # bytes between looks at the disk's free space
KEEP_FREE = 1 << 30  # a fetch stops before the store's disk has less than this left
EXTRAS = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs")}


def stored_copy(store: Store, entry: DataInput) -> str | None:
    """The BLAKE3 of the store's copy of a URL input, if it has one (no network)."""
    if entry.digest.startswith(hashing.PREFIX):
        return entry.digest if store.blobs.has(entry.digest) else None
    return store.blobs.by_sha256(entry.digest)


def identity(store: Store, recipe: Recipe, entry: DataInput) -> str:
    """A URL input's content digest (BLAKE3, as a local copy's would be): the declared one,
    or, for a declared sha256, the stored copy's; fetched first when the store has none.

    Raises:
        FetchError: it could not be fetched, or other bytes arrived.
    """
    if entry.digest.startswith(hashing.PREFIX):
        return entry.digest
    return stored_copy(store, entry) or fetch(store, recipe, entry)


def local_path(store: Store, recipe: Recipe, entry: DataInput) -> Path:
    """The store's copy of a URL input, checked (and fetched first when missing or damaged),
    for a run to read.

    Raises:
        FetchError: it could not be fetched, or other bytes arrived.
    """
    digest = stored_copy(store, entry) or fetch(store, recipe, entry)
    try:
        return store.blobs.checked_path(digest)
    except CorruptBlob as exc:  # quarantined: fetched again, never served
        log.warning("%s; fetching data.%s again", exc.message, entry.name)
        return store.blobs.checked_path(fetch(store, recipe, entry))


def fetch(store: Store, recipe: Recipe, entry: DataInput) -> str:
    """Download a URL input into the store, hashing as it streams; stored only when its
    bytes are the declared digest. Returns its BLAKE3.

    Raises:
        FetchError: unreachable, refused, cut short after retries, or other bytes.
        InputError: an object store's fsspec backend is not installed.
    """
    from builder.progress import progress  # noqa: PLC0415

    where = f"{recipe.path}: data.{entry.name}"
    log.info("Fetching data.%s from %s", entry.name, entry.url)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with open_url(entry.url, where) as (stream, size), \
                    store.blobs.writer(sha256=True) as w, \
                    progress(f"Fetching data.{entry.name}", size, unit="bytes") as advance:
                for chunk in arriving(stream):
                    if w.size // ROOM_CHECK != (w.size + len(chunk)) // ROOM_CHECK:
                        _room_left(store, w.size + len(chunk), f"{where}: {entry.url}")
                    w.write(chunk)
                    advance(len(chunk))
                if size is not None and w.size < size:
                    raise http.client.IncompleteRead(b"", size - w.size)
                got = w.stored()
                if entry.digest not in (got.digest, got.sha256):
                    raise FetchError(
                        f"{where}: {entry.url} served {w.size} bytes that are {got.digest} "
                        f"({got.sha256}), not the declared {entry.digest}; nothing was stored",
                        hint="the file at that URL is not the one the recipe names: if the "
                             f"new bytes are meant, set data.{entry.name}.digest to one of "
                             "those digests (a new run key); else find the file it means "
                             f"(reproducing a run: give it with --data {entry.name}=PATH)")
            return got.digest
        except Stalled as exc:  # not retried: a server that slow stays that slow
            raise FetchError(f"{where}: {entry.url} arrives too slowly ({exc}); given up, "
                             "nothing was stored",
                             hint="try again later, or give a local copy of the file "
                                  f"(reproducing a run: --data {entry.name}=PATH)") from exc
        except (OSError, http.client.HTTPException) as exc:
            if not _worth_retrying(exc) or attempt == ATTEMPTS:
                raise FetchError(f"{where}: fetching {entry.url} failed: {_said(exc)}; nothing "
                                 "was stored", hint="check the URL and the network (the "
                                                    "recipe's digest says which bytes to "
                                                    "expect); reproducing a run, give a "
                                                    f"copy: --data {entry.name}=PATH") from exc
            log.warning("fetching %s failed (%s); trying again", entry.url, _said(exc))
            time.sleep(0.5 * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # the last attempt returns or raises


def _room_left(store: Store, size: int, what: str) -> None:
    """
    Raises:
        FetchError: the store's disk has less than KEEP_FREE left (a server that never ends
            its body, or a file bigger than the disk).
    """
    free = shutil.disk_usage(store.root).free
    if free < KEEP_FREE:
        raise FetchError(f"{what}: {size >> 20} MiB arrived and the store's disk has "
                         f"{free >> 20} MiB left; given up, nothing was stored",
                         hint=f"free space on {store.root}'s disk, or check that the URL "
                              "serves the file the recipe means")


@contextlib.contextmanager
def open_url(url: str, where: str) -> Iterator[tuple[IO[bytes], int | None]]:
    """A stream of the file at `url`, and its size when the server says."""
    scheme = url.partition("://")[0]
    if scheme in ("http", "https"):
        request = urllib.request.Request(  # noqa: S310  (http and https only, above)
            url, headers={"User-Agent": f"repro/{__version__}"})
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
            length = response.headers.get("Content-Length")
            yield response, int(length) if length and length.isdigit() else None
        return
    if scheme not in EXTRAS:
        raise InputError(f"{where}: {url} is not an http(s), s3:// or gs:// URL",
                         hint="give a URL repro can fetch")
    package, extra = EXTRAS[scheme]
    try:
        import fsspec  # noqa: PLC0415

        opened = fsspec.open(url, "rb")
        stream = opened.open()
    except ImportError as exc:
        raise InputError(f"{where}: {scheme}:// needs fsspec and {package}, which are not "
                         "installed", hint=f"pip install 'repro-builder[{extra}]'") from exc
    except OSError:
        raise
    except Exception as exc:  # each backend has its own errors: said, and retried as I/O
        raise OSError(f"{type(exc).__name__}: {exc}") from exc
    with stream:
        yield stream, _size(stream)


def _size(stream: Any) -> int | None:
    size = getattr(stream, "size", None)
    return size if isinstance(size, int) else None


def _worth_retrying(exc: BaseException) -> bool:
    """Dropped connections, timeouts and server errors; never a 4xx or a missing file."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code == 429
    if isinstance(exc, FileNotFoundError | PermissionError):
        return False
    return isinstance(exc, OSError | http.client.HTTPException)


def _said(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, http.client.IncompleteRead):
        return f"the connection closed {exc.expected} bytes short"
    return str(exc) or type(exc).__name__
