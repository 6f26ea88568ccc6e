"""What a run reads: the code tree and the data inputs, digested (through a stat cache)."""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder import hashing, proc
from builder.errors import InputError
from builder.recipe import Recipe

if TYPE_CHECKING:
    from builder.store import Store

log = logging.getLogger(__name__)
# Never code: version control, environments, caches, and repro's own files.
_PRUNED = (".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
           "lockfiles", ".repro")
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
            self.db.execute("CREATE TABLE IF NOT EXISTS said (note TEXT PRIMARY KEY)")
        except sqlite3.Error:
            self.forget()

    @staticmethod
    def key(st: os.stat_result) -> str:
        return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_ctime_ns}"

    def stale(self) -> list[str]:
        """Paths whose cached digest is wrong though their stat still matches (a hand-edited
        cache, or a file changed with its stat put back): re-read, for `repro cache verify`."""
        if self.db is None:
            return []
        wrong = []
        for name, key, digest in self.db.execute("SELECT path, key, digest FROM stat"):
            try:
                st = os.stat(name)
                if stat.S_ISREG(st.st_mode) and self.key(st) == key \
                        and hashing.file_digest(name, st.st_size) != digest:
                    wrong.append(name)
            except OSError:
                continue  # gone or changed: never used again as it is
        return wrong

    def drop(self, name: str) -> None:
        if self.db is not None:
            self.db.execute("DELETE FROM stat WHERE path = ?", (name,))

    def digest(self, path: Path, st: os.stat_result) -> str:
        key = self.key(st)
        name = str(path)
        if self.db is not None:
            try:
                row = self.db.execute("SELECT key, digest FROM stat WHERE path = ?",
                                      (name,)).fetchone()
            except sqlite3.Error:
                self.forget()
                row = None
            if row is not None and row[0] == key:
                self.hits += 1
                return str(row[1])
        self.misses += 1
        digest = hashing.file_digest(path)
        if self.db is not None:
            try:
                self.db.execute("INSERT OR REPLACE INTO stat VALUES (?, ?, ?)",
                                (name, key, digest))
            except sqlite3.Error:  # a full disk, a damaged file: a cache, so go on without
                self.forget()
        return digest

    def forget(self) -> None:
        """Stop using the cache for this command (it only ever saves re-reading)."""
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
        self.db = None

    def first_time(self, note: str) -> bool:
        """True the first time `note` is asked about (for warnings said once, not per run)."""
        if self.db is None:
            return True
        try:
            return self.db.execute("INSERT OR IGNORE INTO said VALUES (?)",
                                   (note,)).rowcount == 1
        except sqlite3.Error:
            self.forget()
            return True

    def close(self) -> None:
        self.forget()


@contextlib.contextmanager
def stat_cache(path: Path | None) -> Iterator[StatCache]:
    cache = StatCache(path)
    try:
        if cache.db is not None:
            try:
                cache.db.execute("BEGIN")
            except sqlite3.Error:
                cache.forget()
        yield cache
        if cache.db is not None:
            try:
                cache.db.execute("COMMIT")
            except sqlite3.Error:
                cache.forget()
    finally:
        cache.close()


def _matches(rel: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) for p in patterns)


def selects(recipe: Recipe, rel: str) -> bool:
    """Whether `[code]` makes the file at `rel` code (if it is tracked)."""
    return _matches(rel, recipe.code.include) \
        and not _matches(rel, recipe.code.exclude + _ALWAYS_EXCLUDED)


def _tracked(root: Path) -> tuple[list[str], list[str]] | None:
    """Files under root (relative) that git tracks, and those it neither tracks nor
    ignores; None outside a git work tree. One `git ls-files` call."""
    done = proc.run(["git", "-C", str(root), "ls-files", "-z", "-t", "--cached", "--others",
                     "--exclude-standard", "--", "."], check=False)
    if done.returncode != 0:
        return None
    entries = [e for e in done.stdout.split("\0") if len(e) > 2]
    return (sorted(e[2:] for e in entries if e[0] != "?"),
            sorted(e[2:] for e in entries if e[0] == "?"))


def _git_facts(root: Path, files: list[str]) -> tuple[str | None, bool | None]:
    head = proc.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=False)
    if head.returncode != 0:
        return None, None
    status = proc.run(["git", "-C", str(root), "status", "--porcelain", "-z", "--", *files],
                      check=False) if files else None
    return head.stdout.strip(), bool(status and status.stdout.strip())


def _made_by_runs(recipe: Recipe, store: Path | None) -> tuple[set[str], list[str]]:
    """What runs write in the project folder, never code: (declared files, folders)."""
    root = recipe.root
    train = recipe.train
    files = set(train.outputs) | ({train.metrics} if train and train.metrics else set()) \
        if train else set()
    folders = []
    if store is not None and store.is_relative_to(root) and store != root:
        folders.append(store.relative_to(root).as_posix())  # $REPRO_HOME inside the project
    return files, folders


def code_state(recipe: Recipe, cache: StatCache, store: Path | None = None) -> CodeState:
    """The code digest: git-tracked files (all files outside git) matching `[code]`.

    Untracked and ignored files never count; the commit and dirty flag are recorded facts.
    Outside git, neither do the run's declared outputs and metrics file, `.repro/`, or the
    store when it lies inside the project; a warning (once per set of files) names the files.
    """
    root = recipe.root
    listed = _tracked(root)
    tracked = listed[0] if listed is not None else None
    made, stores = _made_by_runs(recipe, store)
    if listed is not None:
        candidates = listed[0]
        _untracked_code(recipe, cache, [rel for rel in listed[1] if rel not in made])
    else:
        candidates = [rel for rel in hashing.walk_files(root, _PRUNED)
                      if rel not in made and not any(rel.startswith(f"{s}/") for s in stores)]
    files = [rel for rel in candidates if selects(recipe, rel)
             and ((root / rel).is_file() or (root / rel).is_symlink())]
    if tracked is None and cache.first_time(f"not-git {root} {hashing.digest_json(files)}"):
        shown = ", ".join(files[:8]) + (f", … ({len(files)} in all)" if len(files) > 8 else "")
        log.warning("%s is not a git repository: the code digest covers the %d files "
                    "matching [code] include: %s (never the run's outputs, metrics file or "
                    "the store). Narrow [code] include if that is more than the code",
                    root, len(files), shown or "none")
    commit, dirty = _git_facts(root, files) if tracked is not None else (None, None)
    return CodeState(hashing.tree_digest(root, files, cache.digest), len(files), commit, dirty,
                     tuple(files))


def _untracked_code(recipe: Recipe, cache: StatCache, untracked: list[str]) -> None:
    """Warn (once per set) of files [code] include names that git does not track."""
    matching = [rel for rel in untracked if selects(recipe, rel)]
    if matching and cache.first_time(f"untracked {recipe.root} "
                                     f"{hashing.digest_json(matching)}"):
        shown = ", ".join(matching[:8]) + (", …" if len(matching) > 8 else "")
        log.warning("%d file%s [code] include but git does not track %s, so %s not "
                    "code and a run cannot see %s: %s (`git add` what the training needs)",
                    len(matching), "s match" if len(matching) > 1 else " matches",
                    "them" if len(matching) > 1 else "it",
                    "they are" if len(matching) > 1 else "it is",
                    "them" if len(matching) > 1 else "it", shown)


def _contained(recipe: Recipe, name: str, root: Path, files: list[str]) -> None:
    """A data folder must hold what a run reads: no symlink out of it (its digest would count
    the link, not what it names, and a sandbox holds the folder alone), no pipe or device.

    Raises:
        InputError: the first that is not.
    """
    for rel in files:
        path = root / rel
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            try:
                target = path.resolve(strict=True)
            except (OSError, RuntimeError):
                target = None
            if target is None or not target.is_relative_to(root):
                raise InputError(
                    f"{recipe.path}: data.{name}: {path} links to {os.readlink(path)}, outside "
                    "the input (or nowhere): its digest would not cover what it names, and a "
                    "run's sandbox holds the input alone",
                    hint="declare the target as a [data] input of its own, or copy it in")
        elif not stat.S_ISREG(st.st_mode):
            raise InputError(f"{recipe.path}: data.{name}: {path} is neither a file nor a "
                             "folder (a pipe, socket or device)", hint="remove it from the input")


def data_digests(recipe: Recipe, cache: StatCache, store: Store | None = None) -> dict[str, str]:
    """The digest of each `[data]` input: a file's contents, or a directory's Merkle digest;
    for an input named by URL, its content digest (builder/download.py: the declared BLAKE3,
    or the stored copy's, fetched first when the store has none).

    Raises:
        InputError: an input does not exist (or a URL input is read without a store).
        FetchError: a URL input could not be fetched.
    """
    out = {}
    for entry in recipe.data:
        if entry.url:
            if store is None:
                raise InputError(f"{recipe.path}: data.{entry.name} is fetched from a URL, "
                                 "which needs a store to keep it")
            from builder import download  # noqa: PLC0415

            out[entry.name] = download.identity(store, recipe, entry)
            continue
        try:
            path = (recipe.root / entry.path).resolve()
        except (OSError, RuntimeError) as exc:
            raise InputError(f"{recipe.path}: data.{entry.name}: {entry.path} cannot be "
                             f"resolved: {exc}", hint="fix the symlinks on the way") from exc
        if path.exists() and not (path.is_file() or path.is_dir()):
            raise InputError(f"{recipe.path}: data.{entry.name}: {path} is neither a file "
                             "nor a folder (a device or a pipe?)",
                             hint="declare a regular file or a folder")
        if path.is_file():
            out[entry.name] = cache.digest(path, path.stat())
        elif path.is_dir():
            files = hashing.walk_files(path)
            _contained(recipe, entry.name, path, files)
            out[entry.name] = hashing.tree_digest(path, files, cache.digest)
        else:
            raise InputError(
                f"{recipe.path}: data.{entry.name}: {path} does not exist",
                hint=f"create it, or fix data.{entry.name}.path (relative to {recipe.root})",
            )
    return out
