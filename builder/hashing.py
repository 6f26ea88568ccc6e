"""Identities: BLAKE3 over RFC 8785 canonical JSON, files and file trees."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import blake3
import rfc8785

from builder.errors import InputError

PREFIX = "blake3:"
_CHUNK = 1 << 20
# Below this size one read beats mmap plus thread start-up.
_MMAP_MIN = 8 << 20


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) bytes of a JSON value: sorted keys, no whitespace, UTF-8.

    Raises:
        InputError: an integer beyond ±2^53, which JSON numbers cannot hold exactly.
    """
    try:
        return bytes(rfc8785.dumps(value))
    except rfc8785.IntegerDomainError as exc:
        raise InputError(
            f"{exc}: identities are RFC 8785 JSON, whose numbers are exact only up to 2^53",
            hint="write it as a string",
        ) from exc


def digest_bytes(data: bytes) -> str:
    """`blake3:<hex>` of some bytes."""
    return PREFIX + blake3.blake3(data).hexdigest()


def digest_json(value: Any) -> str:
    """`blake3:<hex>` of a value's canonical JSON: the way every identity is made."""
    return digest_bytes(canonical_json(value))


def file_digest(path: Path) -> str:
    """`blake3:<hex>` of a file's contents (multi-threaded and mapped for large files)."""
    size = path.stat().st_size
    if size >= _MMAP_MIN:
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        hasher.update_mmap(path)
        return PREFIX + hasher.hexdigest()
    hasher = blake3.blake3()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    return PREFIX + hasher.hexdigest()


def tree_entries(root: Path, paths: Iterable[str]) -> list[dict[str, Any]]:
    """One entry per path (relative, '/'-separated): type, executable bit, content digest.

    Symlinks are recorded by their target text, never followed; directories are implied by
    the files in them. Mtimes, owners and other modes are not identity.
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
                    "digest": file_digest(full),
                }
            )
    return entries


def tree_digest(root: Path, paths: Iterable[str]) -> str:
    """Merkle digest of a file tree: the digest of its sorted entries' canonical JSON."""
    return digest_json({"tree": tree_entries(root, paths)})


def walk_files(root: Path) -> list[str]:
    """Every file and symlink under root, relative and '/'-separated, sorted."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath).relative_to(root)
        found.extend((base / name).as_posix() for name in filenames)
        found.extend(
            (base / name).as_posix() for name in dirnames if (Path(dirpath) / name).is_symlink()
        )
    return sorted(found)
