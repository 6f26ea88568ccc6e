"""Identities: BLAKE3 over RFC 8785 canonical JSON, files and file trees."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import blake3
import rfc8785

from builder.errors import InputError

PREFIX = "blake3:"
_DIGEST = re.compile(r"blake3:[0-9a-f]{64}")
_CHUNK = 1 << 20
# Below this size one read beats mmap plus thread start-up.
_MMAP_MIN = 8 << 20


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) bytes of a JSON value: sorted keys, no whitespace, UTF-8.

    Raises:
        InputError: an integer beyond ±2^53, which JSON numbers cannot hold exactly.
    """
    if _plain(value):
        # No floats, no astral-plane keys: RFC 8785 and sorted compact json.dumps agree byte
        # for byte (a property test checks), and json is ~4x faster on large file trees.
        return json.dumps(value, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode()
    try:
        return bytes(rfc8785.dumps(value))
    except rfc8785.IntegerDomainError as exc:
        raise InputError(
            f"{exc}: identities are RFC 8785 JSON, whose numbers are exact only up to 2^53",
            hint="write it as a string",
        ) from exc
    except rfc8785.FloatDomainError as exc:
        raise InputError(f"{exc}: identities are RFC 8785 JSON, which has no NaN or infinity",
                         hint="use a finite number") from exc


_SAFE_INT = 2**53


def _plain(value: Any) -> bool:
    """True when `value` holds only what json.dumps already writes as RFC 8785 does."""
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -_SAFE_INT < value < _SAFE_INT
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and k.isascii() and _plain(v) for k, v in value.items())
    return False


def is_digest(text: object) -> bool:
    """Whether `text` is a whole digest as repro writes them (`blake3:<64 lowercase hex>`):
    what is read back from the store must be, before it names a path."""
    return isinstance(text, str) and _DIGEST.fullmatch(text) is not None


class NotRegular(OSError):
    """A link, a device, a FIFO or a folder where the store keeps a regular file."""


def open_regular(path: Path | str) -> int:
    """A read-only fd on a regular file the store keeps: never opened through a link, never
    waiting on a FIFO (a planted one would hang the command).

    Raises:
        FileNotFoundError: it is not there. NotRegular: something else is in its place.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegular(errno.ELOOP, "a link where a file belongs", str(path)) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotRegular(errno.EINVAL, "not a regular file", str(path))
    return fd


def read_regular(path: Path, limit: int = 1 << 20) -> bytes | None:
    """The bytes of a small file the store keeps (a pointer, an alias, a note), or None when
    it is not a regular file (`open_regular`) or cannot be read."""
    try:
        fd = open_regular(path)
    except OSError:
        return None
    try:
        chunks, left = [], limit
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 16))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_digest(path: Path) -> str | None:
    """The digest a small store file (a pointer, an alias) holds, or None when it is not one
    (not a regular file, not ASCII, not a digest)."""
    data = read_regular(path, 256)
    try:
        text = data.decode("ascii").strip() if data is not None else ""
    except UnicodeDecodeError:
        return None
    return text if is_digest(text) else None


def digest_bytes(data: bytes) -> str:
    """`blake3:<hex>` of some bytes."""
    return PREFIX + blake3.blake3(data).hexdigest()


def digest_json(value: Any) -> str:
    """`blake3:<hex>` of a value's canonical JSON: the way every identity is made."""
    return digest_bytes(canonical_json(value))


def sha256_digest(data: bytes) -> str:
    """`sha256:<hex>` of some bytes: the algorithm OCI (blobs) and wheels fix, kept as it is."""
    import hashlib  # noqa: PLC0415  (2-3 ms to import; images and wheels need it, runs do not)

    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's contents, read in chunks."""
    import hashlib  # noqa: PLC0415

    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_digest(path: Path | str, size: int | None = None) -> str:
    """`blake3:<hex>` of a file's contents (multi-threaded and mapped for large files);
    `size`, when the caller has just stat'ed the file, saves a stat."""
    if size is None:
        size = os.stat(path).st_size
    if size >= _MMAP_MIN:
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        hasher.update_mmap(path)
        return PREFIX + hasher.hexdigest()
    hasher = blake3.blake3()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while chunk := os.read(fd, _CHUNK):
            hasher.update(chunk)
    finally:
        os.close(fd)
    return PREFIX + hasher.hexdigest()


FileDigest = Callable[[Path, os.stat_result], str]


def _read_digest(path: Path, _: os.stat_result) -> str:
    return file_digest(path)


def tree_entries(
    root: Path, paths: Iterable[str], digest: FileDigest = _read_digest
) -> list[dict[str, Any]]:
    """One entry per path (relative, '/'-separated): type, executable bit, content digest.

    Symlinks are recorded by their target text, never followed; directories are implied by
    the files in them. Mtimes, owners and other modes are not identity. `digest` may answer
    from a cache keyed by the stat it is given.
    """
    entries: list[dict[str, Any]] = []
    for rel in sorted(set(paths)):
        full = root / rel
        st = full.lstat()
        if stat.S_ISLNK(st.st_mode):
            entries.append({"path": rel, "type": "symlink", "target": os.readlink(full)})
        elif stat.S_ISREG(st.st_mode):
            entries.append(
                {
                    "path": rel,
                    "type": "file",
                    "executable": bool(st.st_mode & 0o111),
                    "digest": digest(full, st),
                }
            )
    return entries


def tree_digest(root: Path, paths: Iterable[str], digest: FileDigest = _read_digest) -> str:
    """Merkle digest of a file tree: the digest of its sorted entries' canonical JSON."""
    return digest_json({"tree": tree_entries(root, paths, digest)})


def walk_files(root: Path, prune: Iterable[str] = ()) -> list[str]:
    """Every file and symlink under root, relative and '/'-separated, sorted.

    Directories named in `prune` are not entered.
    """
    skip = set(prune)
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        base = Path(dirpath).relative_to(root)
        found.extend((base / name).as_posix() for name in filenames)
        found.extend(
            (base / name).as_posix() for name in dirnames if (Path(dirpath) / name).is_symlink()
        )
    return sorted(found)
