"""Deterministic tar layers: the same files give the same bytes on any machine.

Sorted entries, PAX format, uid/gid 0 with empty owner names, one fixed mtime, modes
normalised (directories and executables 0755, other files 0644), no xattrs, hard links
and symlinks kept. gzip with an empty name and a zero timestamp in its header; its bytes
still depend on zlib, so the uncompressed digest (the OCI diff_id) is the identity.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from builder import faults, hashing
from builder.errors import StoreError
from builder.hashing import sha256_digest
from builder.store import atomic_write, remove_tree

if TYPE_CHECKING:
    from builder.blobs import Blobs
    from builder.store import Store


@dataclass(frozen=True)
class Layer:
    """A layer's identities, and where its gzip blob is: in memory, or in the store."""

    diff_id: str  # sha256 of the uncompressed tar
    digest: str  # sha256 of the gzip blob
    size: int  # of the gzip blob
    data: bytes | None = None  # the gzip blob (small layers, tests)
    blob: str | None = None  # or its BLAKE3 in the store's blobs


class _Hashing:
    """A write-only stream that hashes what passes (SHA-256) on its way to `sink`."""

    def __init__(self, sink: BinaryIO | gzip.GzipFile) -> None:
        self.sink = sink
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)

    def tell(self) -> int:
        return self.size


def _info(name: str, st: os.stat_result, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = mtime
    info.mode = 0o755 if stat.S_ISDIR(st.st_mode) or st.st_mode & 0o111 else 0o644
    return info


def _entries(trees: Iterable[tuple[Path, str]]) -> dict[str, Path | None]:
    """Archive name → path on disk for every file and folder; None for a prefix's parents."""
    found: dict[str, Path | None] = {}
    for root, prefix in trees:
        parts = [p for p in prefix.strip("/").split("/") if p]
        for i in range(1, len(parts)):
            found.setdefault("/".join(parts[:i]), None)
        for dirpath, dirnames, filenames in os.walk(root):
            base = Path(dirpath)
            rel = [] if base == root else base.relative_to(root).parts
            if parts or rel:
                found["/".join([*parts, *rel])] = base
            for name in dirnames + filenames:
                found["/".join([*parts, *rel, name])] = base / name
    return found


def _dir(name: str, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def tar_tree(trees: Iterable[tuple[Path, str]], mtime: int = 0) -> bytes:
    """An uncompressed tar of folders placed at prefixes: [(folder, "opt/repro/site")]."""
    buf = io.BytesIO()
    _write_tar(trees, mtime, buf)
    return buf.getvalue()


def _write_tar(trees: Iterable[tuple[Path, str]], mtime: int,
               out: BinaryIO | _Hashing) -> None:
    """Write the tar of `tar_tree` to a stream, one file at a time."""
    inodes: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for name, path in sorted(_entries(trees).items()):
            if path is None or (path.is_dir() and not path.is_symlink()):
                tar.addfile(_dir(name, mtime))
                continue
            st = path.lstat()
            info = _info(name, st, mtime)
            if stat.S_ISLNK(st.st_mode):
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, os.readlink(path), 0o777
                tar.addfile(info)
            elif st.st_nlink > 1 and (st.st_dev, st.st_ino) in inodes:
                info.type, info.linkname = tarfile.LNKTYPE, inodes[(st.st_dev, st.st_ino)]
                tar.addfile(info)
            else:
                inodes[(st.st_dev, st.st_ino)] = name
                info.size = st.st_size
                with path.open("rb") as f:
                    tar.addfile(info, f)


def gzip_bytes(data: bytes) -> bytes:
    """gzip with a fixed header: no file name, mtime 0, level 6."""
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
        gz.write(data)
    return out.getvalue()


def _gzip(sink: BinaryIO) -> gzip.GzipFile:
    return gzip.GzipFile(filename="", mode="wb", fileobj=sink, mtime=0, compresslevel=6)


def layer(trees: Iterable[tuple[Path, str]], mtime: int = 0) -> Layer:
    """A layer in memory (small layers; tests)."""
    buf = io.BytesIO()
    with _gzip(buf) as gz:
        tar = _Hashing(gz)
        _write_tar(trees, mtime, tar)
    blob = buf.getvalue()
    return Layer("sha256:" + tar.sha.hexdigest(), sha256_digest(blob), len(blob), blob)


def write_tar_layer(fill: Callable[[tarfile.TarFile], None], blobs: Blobs) -> Layer:
    """A layer whose tar `fill` writes member by member (entries from another archive: a
    `.deb`'s data), streamed into the store as `write_layer` does."""
    with blobs.writer(sha256=True) as out, _gzip(out) as gz:  # type: ignore[arg-type]
        tar = _Hashing(gz)
        with tarfile.open(fileobj=tar, mode="w", format=tarfile.PAX_FORMAT) as t:  # type: ignore[call-overload]
            fill(t)
    stored = out.stored()
    assert stored.sha256 is not None  # noqa: S101  (asked for above)
    return Layer("sha256:" + tar.sha.hexdigest(), stored.sha256, stored.size, None,
                 stored.digest)


def write_layer(trees: Iterable[tuple[Path, str]], mtime: int, blobs: Blobs) -> Layer:
    """A layer written straight into the store: the tar is made, hashed (diff_id), gzipped
    and hashed again (digest, BLAKE3) as one stream, so memory does not grow with it."""
    with blobs.writer(sha256=True) as out, _gzip(out) as gz:  # type: ignore[arg-type]
        tar = _Hashing(gz)
        faults.point("layer-writing")
        _write_tar(trees, mtime, tar)
    stored = out.stored()
    assert stored.sha256 is not None  # noqa: S101  (asked for above)
    return Layer("sha256:" + tar.sha.hexdigest(), stored.sha256, stored.size, None,
                 stored.digest)


def cached_layer(store: Store, key: str, what: str) -> Layer | None:
    """A layer made before under `key`, when its note and blob agree and the blob is whole
    (a damaged one is quarantined, and None: built again)."""
    meta = store.layers.path(key)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, StoreError):
        known = json.loads(hashing.read_regular(meta) or b"")
        if store.blobs.by_sha256(known["digest"]) != known["blob"] \
                or store.blobs.path(known["blob"]).stat().st_size != known["size"]:
            raise ValueError("a note that disagrees with its blob: the layer is built again")
        if store.blobs.verify(known["blob"]):
            store.layers.use(key, known["blob"])
            return Layer(known["diff_id"], known["digest"], known["size"], None,
                                 known["blob"])
        store.blobs.quarantine(known["blob"], f"the cached layer of {what} failed its "
                                              "digest; it is built again")
    return None


def note_layer(store: Store, key: str, layer: Layer) -> None:
    """Remember a package layer (built, or pulled) under its key, for the next build."""
    meta = store.layers.path(key)
    if meta.is_dir() and not meta.is_symlink():  # damage in a note's place
        remove_tree(meta)
    if layer.blob is not None:
        store.blobs.alias(layer.digest, layer.blob)
    atomic_write(meta, json.dumps({"diff_id": layer.diff_id, "digest": layer.digest,
                                   "size": layer.size, "blob": layer.blob}).encode())
