"""Leases: what a live command uses in the store, so `cache gc` never removes it.

Envs in use are held with a shared flock on `locks/<id>.use` for the life of the process
(`share`); gc removes an env only under an exclusive one it gets without waiting
(`exclusive`), so an env cannot vanish under a command that uses it.

Each process that notes something takes one lease: a file `leases/<pid>-<random>.lease` it
holds an exclusive flock on for as long as it lives (the kernel drops the lock when the
process dies, by SIGKILL too) and appends one line per item to: `env <id>`, `blob <digest>`,
`path <path>`. gc reads every lease file whose lock it cannot take; one it can take belongs to
a dead process and is removed.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from builder import hashing

_held: dict[Path, TextIO] = {}  # store root → this process's open, locked lease file
_shared: dict[Path, int] = {}  # path → an fd holding a shared flock on it


@atexit.register
def _release() -> None:
    """Let go of every lease on the way out (the kernel would too; this says it cleanly)."""
    for lease in _held.values():
        with contextlib.suppress(OSError):
            Path(lease.name).unlink(missing_ok=True)
            lease.close()
    _held.clear()
    for fd in _shared.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _shared.clear()


class Busy(Exception):
    """A lock another process holds (with a timeout of 0, or after the timeout)."""


def _open_lock(path: Path) -> int:
    """A lock file, opened (made if need be) never through a link: a link planted in the
    store's locks/ would make repro create files wherever it points."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EISDIR):
            raise
        from builder.errors import StoreError  # noqa: PLC0415

        raise StoreError(f"the lock file {path} is " + ("a link, to " + os.readlink(path)
                         if path.is_symlink() else "a folder") + ": repro locks nothing "
                         "through one", path, hint=f"remove {path} (repro makes it again)"
                         ) from None


@contextlib.contextmanager
def locked(path: Path, timeout: float = -1) -> Iterator[None]:
    """Hold an exclusive flock on a lock file for the block: waiting for ever (-1), or up to
    `timeout` seconds (0: not at all), then raising Busy."""
    fd = _open_lock(path)
    try:
        if timeout < 0:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise Busy(str(path)) from None
                    time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def share(path: Path) -> None:
    """Hold a shared flock on `path` for the rest of this process (waits for an exclusive)."""
    if path in _shared:
        return
    fd = _open_lock(path)
    fcntl.flock(fd, fcntl.LOCK_SH)
    _shared[path] = fd


def release(path: Path) -> None:
    """Let go of a shared flock this process holds (before it removes what it guards)."""
    fd = _shared.pop(path, None)
    if fd is not None:
        os.close(fd)


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[bool]:
    """An exclusive flock on `path` if no one holds it shared right now (True), else False."""
    fd = _open_lock(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def hold(path: Path) -> int | None:
    """Take an exclusive flock on a temp file or staging folder this process just made, for
    as long as it writes it (the fd is the caller's to close); None when gc removed it
    before the lock was taken (make another). A lock, not a pid: it holds across pid
    namespaces (a container sharing the store) and dies with its process."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    if os.fstat(fd).st_nlink == 0:
        os.close(fd)
        return None
    return fd


def held(path: Path) -> bool:
    """Whether a live process holds `path` with `hold` (gc leaves it alone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def note(store: Path, kind: str, item: str) -> None:
    """Hold `item` (an env id, a blob digest, a path) for the rest of this process."""
    lease = _held.get(store)
    if lease is None:
        folder = store / "leases"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{os.getpid()}-{os.urandom(4).hex()}.lease"
        lease = path.open("x")  # made here, exclusively: never a file or link already there
        fcntl.flock(lease.fileno(), fcntl.LOCK_EX)
        _held[store] = lease
    lease.write(f"{kind} {item}\n")
    lease.flush()


def live(store: Path, *, prune: bool = True) -> set[tuple[str, str]]:
    """Every item a live process holds; the leases of dead ones are removed (unless not
    `prune`: a dry run changes nothing). What is not a regular lease file is skipped."""
    folder = store / "leases"
    held: set[tuple[str, str]] = set()
    if not folder.is_dir():
        return held
    mine = {Path(f.name).name for f in _held.values()}
    for path in folder.glob("*.lease"):
        try:
            fd = hashing.open_regular(path)
        except OSError:
            continue  # gone, a link, a folder, a FIFO: no live process holds it
        with os.fdopen(fd, "rb") as f:
            if path.name not in mine:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass  # its process lives
                else:
                    if prune:
                        path.unlink(missing_ok=True)  # its process is gone: so is the lease
                    continue
            for line in f.read().decode("utf-8", "replace").splitlines():
                kind, _, item = line.partition(" ")
                held.add((kind, item))
    return held
