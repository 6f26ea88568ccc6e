"""Sealed environments: what a built env holds is written down, and its files made read-only.

    tree         BLAKE3 over every entry (path, type, mode, content digest or link target):
                 what `repro cache verify` checks, reading every byte
    fingerprint  BLAKE3 over every entry's path, type, mode, size, mtime and ctime: what
                 `repro build` and `repro run` check before they use an env (a stat per file,
                 no reads). The ctime cannot be set back (`touch` sets the mtime, and moves
                 the ctime to now), so an edit that keeps the size and mtime is still seen;
                 copying the store elsewhere changes every ctime, and its envs are rebuilt.

Both leave out the manifest (written after sealing, touched on every use), and nothing else:
bytecode under `__pycache__` is what Python runs, so it counts. The build compiles every
module, and every command repro starts in an env has PYTHONDONTWRITEBYTECODE=1, so nothing
adds bytecode later. A tampered env is set aside and rebuilt, never used.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import NamedTuple

from builder import hashing
from builder.store import MANIFEST


class Seal(NamedTuple):
    tree: str
    fingerprint: str
    files: int


Entries = list[tuple[str, os.stat_result]]


def _walk(root: Path) -> Entries:
    """Every entry below root (relative path, lstat), sorted; the manifest left out."""
    found: Entries = []

    def scan(folder: str, prefix: str) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                rel = prefix + entry.name
                if rel != MANIFEST:
                    found.append((rel, entry.stat(follow_symlinks=False)))
                if entry.is_dir(follow_symlinks=False):
                    scan(entry.path, rel + "/")

    scan(str(root), "")
    return sorted(found)


def _digest(lines: list[str]) -> str:
    """BLAKE3 of entry lines (NUL-separated fields: paths may hold anything but NUL)."""
    return hashing.digest_bytes("".join(lines).encode("utf-8", "surrogateescape"))


def fingerprint(root: Path, entries: Entries | None = None) -> str:
    """Paths, types, modes, sizes, mtimes and ctimes (no contents)."""
    return _digest([f"{rel}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n"
                    for rel, st in (_walk(root) if entries is None else entries)])


def tree(root: Path, entries: Entries | None = None) -> tuple[str, int]:
    """(the content digest of every entry, how many entries)."""
    lines = []
    base = str(root)
    for rel, st in _walk(root) if entries is None else entries:
        full = os.path.join(base, rel)
        if stat.S_ISLNK(st.st_mode):
            what = "link\0" + os.readlink(full)
        elif stat.S_ISREG(st.st_mode):
            what = f"{stat.S_IMODE(st.st_mode)}\0{hashing.file_digest(full, st.st_size)}"
        else:
            what = f"{stat.S_IMODE(st.st_mode)}\0{stat.S_IFMT(st.st_mode)}"
        lines.append(f"{rel}\0{what}\n")
    return _digest(lines), len(lines)


def seal(root: Path) -> Seal:
    """Make every file and folder below `root` read-only (the root itself stays writable, so
    the env can be renamed and its manifest written), then write down what it holds."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in [*filenames, *dirnames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o222)
    entries = _walk(root)  # one walk for both
    content, files = tree(root, entries)
    return Seal(content, fingerprint(root, entries), files)
