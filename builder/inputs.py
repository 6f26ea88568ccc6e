"""What a run reads: the code tree and the data inputs, digested (through a stat cache)."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder import hashing, proc
from builder.errors import InputError
from builder.recipe import Recipe

# Never code: version control, environments, caches, and repro's own files.
_PRUNED = (".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
           "lockfiles")
_ALWAYS_EXCLUDED = (*(f"{d}/*" for d in _PRUNED), *(f"*/{d}/*" for d in _PRUNED), "*.pyc")


@dataclass(frozen=True)
class CodeState:
    digest: str
    files: int
    commit: str | None
    dirty: bool | None
    paths: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "files": self.files, "commit": self.commit,
                "dirty": self.dirty}


class StatCache:
    """Digests of files keyed by (path, size, mtime, inode, ctime): unchanged files are not read.

    DVC's approach: a file whose stat is unchanged has the same contents. One SQLite file in
    the store; a lost or corrupt cache only costs re-reading.
    """

    def __init__(self, path: Path | None) -> None:
        self.db: sqlite3.Connection | None = None
        self.hits = self.misses = 0
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS stat (path TEXT PRIMARY KEY, "
                            "key TEXT NOT NULL, digest TEXT NOT NULL)")
        except sqlite3.DatabaseError:
            self.db = None

    def digest(self, path: Path, st: os.stat_result) -> str:
        key = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_ctime_ns}"
        name = str(path)
        if self.db is not None:
            row = self.db.execute("SELECT key, digest FROM stat WHERE path = ?", (name,)).fetchone()
            if row is not None and row[0] == key:
                self.hits += 1
                return str(row[1])
        self.misses += 1
        digest = hashing.file_digest(path)
        if self.db is not None:
            with contextlib.suppress(sqlite3.DatabaseError):
                self.db.execute("INSERT OR REPLACE INTO stat VALUES (?, ?, ?)", (name, key, digest))
        return digest

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


@contextlib.contextmanager
def stat_cache(path: Path | None) -> Iterator[StatCache]:
    cache = StatCache(path)
    try:
        if cache.db is not None:
            cache.db.execute("BEGIN")
        yield cache
        if cache.db is not None:
            cache.db.execute("COMMIT")
    finally:
        cache.close()


def _matches(rel: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) for p in patterns)


def _tracked(root: Path) -> list[str] | None:
    """Files git tracks under root (relative), or None outside a git work tree."""
    done = proc.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--", "."],
                    check=False)
    if done.returncode != 0:
        return None
    return sorted(p for p in done.stdout.split("\0") if p)


def _git_facts(root: Path, files: list[str]) -> tuple[str | None, bool | None]:
    head = proc.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=False)
    if head.returncode != 0:
        return None, None
    status = proc.run(["git", "-C", str(root), "status", "--porcelain", "-z", "--", *files],
                      check=False) if files else None
    return head.stdout.strip(), bool(status and status.stdout.strip())


def code_state(recipe: Recipe, cache: StatCache) -> CodeState:
    """The code digest: git-tracked files (all files outside git) matching `[code]`.

    Untracked and ignored files never count; the commit and dirty flag are recorded facts.
    """
    root = recipe.root
    tracked = _tracked(root)
    candidates = tracked if tracked is not None else hashing.walk_files(root, _PRUNED)
    files = [rel for rel in candidates
             if _matches(rel, recipe.code.include)
             and not _matches(rel, recipe.code.exclude + _ALWAYS_EXCLUDED)
             and ((root / rel).is_file() or (root / rel).is_symlink())]
    commit, dirty = _git_facts(root, files) if tracked is not None else (None, None)
    return CodeState(hashing.tree_digest(root, files, cache.digest), len(files), commit, dirty,
                     tuple(files))


def data_digests(recipe: Recipe, cache: StatCache) -> dict[str, str]:
    """The digest of each `[data]` input: a file's contents, or a directory's Merkle digest.

    Raises:
        InputError: an input does not exist.
    """
    out = {}
    for entry in recipe.data:
        path = (recipe.root / entry.path).resolve()
        if path.is_file():
            out[entry.name] = cache.digest(path, path.stat())
        elif path.is_dir():
            out[entry.name] = hashing.tree_digest(path, hashing.walk_files(path), cache.digest)
        else:
            raise InputError(
                f"{recipe.path}: data.{entry.name}: {path} does not exist",
                hint=f"create it, or fix data.{entry.name}.path (relative to {recipe.root})",
            )
    return out
