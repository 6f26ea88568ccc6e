"""The store's one blob area: every blob named by the BLAKE3 digest of its bytes, checked on
every way out.

    objects/<2 hex>/<62 hex>    the blobs (outputs, records, pylocks, image layers, base blobs)
    objects/tmp/                 writes in progress: a temp file, then one rename
    sha256/<64 hex>              alias: the blob an OCI digest (or a diff_id's layer) names
    quarantine/                  blobs that failed their digest, kept for a look, gc'd later

Writes stream through the hashers in 1 MiB chunks (memory does not grow with the blob), the
file and its folder are fsynced before the rename, and an existing blob is never trusted: a
`put` of a blob that exists but does not verify replaces it. Every read that hands a blob out
checks its digest; a blob that fails is moved to quarantine and `CorruptBlob` is raised, so the
caller re-trains, rebuilds or re-pulls instead of serving it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import logging
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO, NamedTuple

import blake3

from builder import faults, hashing, leases
from builder.errors import StoreError

log = logging.getLogger(__name__)
CHUNK = 1 << 20


SLOWEST = 16 << 10  # bytes a second, after the first minute: slower is a stalled download
GRACE = 60.0  # seconds a download may take before SLOWEST applies


class CorruptBlob(StoreError):
    """A blob's bytes no longer match its name; it was quarantined."""


class Stalled(Exception):  # not an OSError: a stalled download is not retried
    """A download arrived slower than SLOWEST after GRACE seconds."""


def arriving(stream: IO[bytes]) -> Iterator[bytes]:
    """A download's chunks as they arrive (up to 1 MiB each, whatever the network gives: a
    server that trickles a byte a second is seen at once, not after 1 MiB of it).

    Raises:
        Stalled: slower than SLOWEST bytes a second, counted from the start, after GRACE.
    """
    read = getattr(stream, "read1", None) or stream.read
    start, got = time.monotonic(), 0
    while chunk := read(CHUNK):
        got += len(chunk)
        elapsed = time.monotonic() - start
        if elapsed > GRACE and got < (elapsed - GRACE) * SLOWEST:
            raise Stalled(f"{got} bytes in {elapsed:.0f}s: slower than {SLOWEST >> 10} KiB/s")
        yield chunk


class Stored(NamedTuple):
    digest: str  # blake3:<hex>
    size: int
    sha256: str | None = None  # sha256:<hex>, when asked for


def _hex(digest: str) -> str:
    """The hex of a digest; anything else (read from a damaged or hand-made store file) is
    refused before it can name a path."""
    if not hashing.is_digest(digest):
        raise StoreError(f"{str(digest)[:80]!r} is not a blob digest (blake3:<64 hex>): a "
                         "store entry that names it is damaged")
    return digest.removeprefix(hashing.PREFIX)


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (the folder's entry, not only the file's bytes)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def kernel_copy(source: BinaryIO, dest: BinaryIO, size: int) -> bool:
    """Copy `size` bytes with copy_file_range(2), which shares blocks where the file system
    can (btrfs, XFS) and copies in the kernel elsewhere; False, with nothing copied, where
    the kernel can't between these two files."""
    dest.flush()
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(source.fileno(), dest.fileno(), size - done)
        except OSError as e:
            if done == 0 and e.errno in _NO_KERNEL_COPY:
                return False
            raise
        if n == 0:  # the source is shorter than it was: its digest check says so
            break
        done += n
    return True


_NO_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF,
                   errno.ETXTBSY}


class BlobWriter:
    """A blob being written: bytes go through BLAKE3 (and SHA-256) into a temp file."""

    def __init__(self, tmp: Path, sha256: bool) -> None:
        self.path = tmp
        self.file: BinaryIO = tmp.open("wb")
        self.b3 = blake3.blake3()
        self.sha = hashlib.sha256() if sha256 else None
        self.size = 0
        self.copied: Stored | None = None  # set by copy_from

    def copy_from(self, source: BinaryIO) -> bool:
        """Copy a whole file in the kernel, then hash what landed (mapped, multi-threaded);
        False (nothing written) where the kernel can't copy or a SHA-256 is wanted too."""
        size = os.fstat(source.fileno()).st_size
        if self.sha is not None or self.size or not kernel_copy(source, self.file, size):
            return False
        self.file.flush()
        self.copied = Stored(hashing.file_digest(self.path), self.path.stat().st_size, None)
        return True

    def write(self, data: bytes) -> int:
        self.b3.update(data)
        if self.sha is not None:
            self.sha.update(data)
        self.file.write(data)
        self.size += len(data)
        return len(data)

    def stored(self) -> Stored:
        if self.copied is not None:
            return self.copied
        return Stored(hashing.PREFIX + self.b3.hexdigest(), self.size,
                      "sha256:" + self.sha.hexdigest() if self.sha is not None else None)


class CheckedReader:
    """A blob's bytes as a stream, checked against its digest when the last one is read."""

    def __init__(self, f: BinaryIO, size: int, digest: str, blobs: Blobs) -> None:
        self.f, self.size, self.digest, self.blobs = f, size, digest, blobs
        self.hasher = blake3.blake3()
        self.done = 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n if n >= 0 else self.size - self.done)
        self.hasher.update(data)
        self.done += len(data)
        if self.done >= self.size and hashing.PREFIX + self.hasher.hexdigest() != self.digest:
            raise self.blobs._corrupt(self.digest)
        return data

    def __len__(self) -> int:
        return self.size


class Blobs:
    """Immutable blobs named by the BLAKE3 digest of their bytes."""

    __slots__ = ("aliases", "quarantined", "root")

    def __init__(self, root: Path, aliases: Path, quarantined: Path) -> None:
        self.root = root
        self.aliases = aliases
        self.quarantined = quarantined

    def path(self, digest: str) -> Path:
        h = _hex(digest)
        return self.root / h[:2] / h[2:]

    def has(self, digest: str) -> bool:
        """Whether the blob is there, as a regular file (a link or a device is not a blob)."""
        try:
            return stat.S_ISREG(os.lstat(self.path(digest)).st_mode)
        except OSError:
            return False

    # -- writing ------------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self, *, sha256: bool = False) -> Iterator[BlobWriter]:
        """A blob to write bytes into; stored under its digest when the block ends well
        (`writer.stored()` then names it), dropped otherwise."""
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        lock = None
        while lock is None:  # held until it is renamed in: gc leaves a held temp file
            fd, name = tempfile.mkstemp(dir=tmp_dir, prefix=f"{os.getpid()}-")
            os.close(fd)
            lock = leases.hold(Path(name))
        writer = BlobWriter(Path(name), sha256)
        try:
            with writer.file:
                yield writer
                writer.file.flush()
                os.fsync(writer.file.fileno())
            faults.point("blob-temp-written")
            self._settle(writer.path, writer.stored())
        finally:
            writer.path.unlink(missing_ok=True)
            os.close(lock)

    def _settle(self, tmp: Path, stored: Stored) -> None:
        """Rename a written temp file into place, unless a blob that verifies is there."""
        final = self.path(stored.digest)
        if final.exists():
            if self.verify(stored.digest):
                return
            self.quarantine(stored.digest, "it was found damaged while the same bytes were "
                                           "stored again")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        leases.note(self.root.parent, "blob", stored.digest)  # before it is there for gc to see
        os.replace(tmp, final)
        fsync_folder(final.parent)
        faults.point("blob-renamed")
        if stored.sha256 is not None:
            self.alias(stored.sha256, stored.digest)

    def put(self, data: bytes, *, sha256: bool = False) -> str:
        """Store bytes under their digest."""
        with self.writer(sha256=sha256) as w:
            w.write(data)
        return w.stored().digest

    def put_file(self, source: Path, expected: str | None = None, *,
                 sha256: bool = False) -> Stored:
        """Store a file's bytes, read once (hashed as they are copied).

        Raises:
            StoreError: `expected` was given and the file no longer has that digest (it
                changed since it was digested); nothing was stored.
        """
        with source.open("rb") as f, self.writer(sha256=sha256) as w:
            if not w.copy_from(f):
                while chunk := f.read(CHUNK):
                    w.write(chunk)
            if expected is not None and w.stored().digest != expected:
                raise StoreError(f"{source} changed while it was stored (it was "
                                 f"{expected}, it is {w.stored().digest}); nothing was stored",
                                 source, hint="make sure nothing else writes it, then retry")
        return w.stored()

    def alias(self, sha256: str, digest: str) -> None:
        """Remember which blob an OCI sha256 names."""
        path = self.aliases / sha256.removeprefix("sha256:")
        if path.is_file() and path.read_text().strip() == digest:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=".")
        with os.fdopen(fd, "w") as f:
            f.write(digest)
        os.replace(name, path)

    def by_sha256(self, sha256: str) -> str | None:
        """The blob an OCI sha256 names, if the store holds it."""
        path = self.aliases / sha256.removeprefix("sha256:")
        digest = hashing.read_digest(path)
        if digest is None:
            return None  # none, or damaged: fetched or built again
        with contextlib.suppress(OSError):
            os.utime(path)  # used now: gc keeps what was used since its cutoff
        leases.note(self.root.parent, "blob", digest)
        return digest if self.has(digest) else None

    # -- reading ------------------------------------------------------------------------
    def verify(self, digest: str) -> bool:
        """Whether the blob is there and its bytes still have its digest."""
        path = self.path(digest)
        try:
            st = os.lstat(path)
            return stat.S_ISREG(st.st_mode) and hashing.file_digest(path, st.st_size) == digest
        except OSError:
            return False

    def quarantine(self, digest: str, why: str, *, say: bool = True) -> Path | None:
        """Move a damaged blob out of the way (kept for a look; gc removes it later), with a
        warning unless the caller says it another way (an error, a report)."""
        path = self.path(digest)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        dest = self.quarantined / f"{stamp}-{_hex(digest)}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, dest)
        except FileNotFoundError:
            return None
        if say:
            log.warning("store blob %s is damaged (%s); moved to %s", path, why, dest)
        return dest

    def _corrupt(self, digest: str, move: bool = True) -> CorruptBlob:  # CheckedReader too
        path = self.path(digest)
        moved = self.quarantine(digest, "its digest changed", say=False) if move else None
        return CorruptBlob(f"store blob {path} is damaged: its bytes no longer match "
                           f"{digest}" + (f"; it was moved to {moved}" if moved else ""),
                           path, hint="it is re-made the next time it is needed (`repro "
                                      "cache verify` checks the whole store)")

    def missing(self, digest: str) -> StoreError:
        path = self.path(digest)
        return StoreError(f"the store has no blob {digest} (expected at {path})", path)

    def _open(self, digest: str) -> BinaryIO:
        """A blob's file, opened for reading: a regular file, never through a link (a link or
        a device in its place is damage, which would otherwise be read forever).

        Raises:
            StoreError: it is missing. CorruptBlob: something else is in its place.
        """
        try:
            return os.fdopen(hashing.open_regular(self.path(digest)), "rb")
        except FileNotFoundError:
            raise self.missing(digest) from None
        except hashing.NotRegular:
            raise self._corrupt(digest) from None

    def get(self, digest: str, *, quarantine: bool = True) -> bytes:
        """A blob, checked against its digest.

        Raises:
            StoreError: it is missing.
            CorruptBlob: its bytes no longer match its name (it was quarantined, unless
                `quarantine` is False: a dry run changes nothing).
        """
        with self._open(digest) as f:
            data = f.read()
        if hashing.digest_bytes(data) != digest:
            raise self._corrupt(digest, quarantine)
        return data

    def copy_to(self, digest: str, dest: BinaryIO) -> int:
        """Copy a blob into a file just opened by name, and check what landed there against
        the digest: a kernel copy then a mapped, multi-threaded hash of the copy where the
        kernel can, else hashing as it copies. Returns the size.

        Raises:
            StoreError: it is missing.
            CorruptBlob: its bytes no longer match its name; what was written to `dest` must
                be thrown away.
        """
        with self._open(digest) as f:
            size = os.fstat(f.fileno()).st_size
            name = getattr(dest, "name", None)
            if isinstance(name, str) and dest.seekable() and dest.tell() == 0 \
                    and kernel_copy(f, dest, size):
                dest.flush()
                got = hashing.file_digest(Path(name))
            else:
                hasher = blake3.blake3()
                while chunk := f.read(CHUNK):
                    hasher.update(chunk)
                    dest.write(chunk)
                got = hashing.PREFIX + hasher.hexdigest()
        if got != digest:
            raise self._corrupt(digest)
        return size

    @contextlib.contextmanager
    def reader(self, digest: str) -> Iterator[CheckedReader]:
        """A blob to read as a stream (for uploads and archives); reading its last byte checks
        its digest, and raises CorruptBlob (after quarantine) if it no longer matches.

        Raises:
            StoreError: it is missing.
        """
        with self._open(digest) as f:
            yield CheckedReader(f, os.fstat(f.fileno()).st_size, digest, self)

    def checked_path(self, digest: str) -> Path:
        """The path of a blob that was just checked (for tools that read files by path).

        Raises:
            StoreError, CorruptBlob: as `get`.
        """
        if not self.has(digest):
            raise self.missing(digest)
        if not self.verify(digest):
            raise self._corrupt(digest)
        return self.path(digest)

    def matching(self, prefix: str) -> list[str]:
        """Digests of blobs whose hex starts with `prefix` (2+ hex characters)."""
        if len(prefix) < 2 or prefix[:2] not in self._shards()[0]:
            return []
        return [d for d, _ in self._shard(prefix[:2])[0] if d[7:].startswith(prefix)]

    def _shard(self, name: str) -> tuple[list[tuple[str, Path]], list[Path]]:
        """(the blobs in objects/<name>/, what else is there: links, devices, odd names)."""
        folder = self.root / name
        try:
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                return [], [folder]
        except FileNotFoundError:
            return [], []
        found, strays = [], []
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                digest = hashing.PREFIX + name + entry.name
                if hashing.is_digest(digest) and entry.is_file(follow_symlinks=False):
                    found.append((digest, Path(entry.path)))
                elif not entry.name.startswith("."):  # a dot name: replacing()'s temp files
                    strays.append(Path(entry.path))
        return found, strays

    def _shards(self) -> tuple[list[str], list[Path]]:
        """(the shard names in objects/, what else is there besides tmp/)."""
        if not self.root.is_dir():
            return [], []
        names = sorted(p.name for p in self.root.iterdir() if p.name != "tmp")
        good = [n for n in names if len(n) == 2 and all(c in "0123456789abcdef" for c in n)]
        return good, [self.root / n for n in names if n not in good]

    def all(self) -> Iterator[tuple[str, Path]]:
        """Every blob in the store: (digest, path)."""
        for name in self._shards()[0]:
            yield from self._shard(name)[0]

    def strays(self) -> list[Path]:
        """What is in objects/ but is not a blob: a link, a device, a folder or a name that is
        not a digest (damage, or put there by hand); never read, only removed."""
        names, odd = self._shards()
        return odd + [p for name in names for p in self._shard(name)[1]]

    def temp_files(self) -> list[Path]:
        """Temp files of writes in progress, or of writes a killed process left."""
        # replacing()'s temp names, from before blobs.py
        legacy = [p for shard in self._shards()[0] for p in (self.root / shard).glob(".*")]
        tmp = self.root / "tmp"
        return sorted([*tmp.iterdir(), *legacy] if tmp.is_dir() else legacy)
