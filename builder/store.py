"""The content-addressed store, handed out as named areas; no caller composes paths under it.

    area                 $REPRO_HOME/...
    store.blobs          objects/<2 hex>/<62 hex>     every blob, named by its BLAKE3 (blobs.py)
                         sha256/<64 hex>              OCI sha256 → the blob it names
                         quarantine/                  blobs that failed their digest
    store.envs           envs/<64 hex>/               complete environments, by env id
                         envs/.tmp-*                  builds in progress (or interrupted)
                         locks/<64 hex>.lock          held while an env is built or removed
    store.records        runs/<64 hex>                run key → record of its last success
                         by-output/<hex>/<hex>        artefact → records of runs that made it
                         by-recipe/<name>/<hex>       recipe → records of its runs (failed too)
    store.verifications  verifications/<name>/*.json  verification reports, oldest first
    store.layers         layers/<64 hex>/             image layers, named by what they hold
    store.bases          bases/<64 hex>.json          a base layer's file list and diff_id
                         blobs/sha256/<64 hex>        base blobs kept before the one blob area
    store.images         images/by-digest/<hex>.json  what an image repro built is made of
                         images/<recipe>/             default layout of `build --image`
    store.stat_cache     cache/stat.sqlite            file digests by stat
    store.runtime        runtime/<64 hex>/builder/    builder.runtime for runs' PYTHONPATH
    store.buildah        buildah/                     buildah's storage (`run --in image`)
    store.scratch()      tmp/                         scratch space of commands in progress
    store.logs           logs/                        tracebacks of repro's own bugs (exit 4)
    store.sandboxes      sandbox/<name>/              one private folder per run in progress
                         sandbox/<name>.lock          held while its run lives
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from builder import faults, hashing
from builder.blobs import Blobs
from builder.errors import StoreError

if TYPE_CHECKING:
    from builder.records import RunRecord
    from builder.verdicts import Verification

log = logging.getLogger(__name__)
MANIFEST = "repro-env.json"


def default_home() -> Path:
    """`$REPRO_HOME`, else the platform's user cache directory."""
    home = os.environ.get("REPRO_HOME")
    if home:
        return Path(home).expanduser().resolve()
    from platformdirs import user_cache_dir  # noqa: PLC0415

    return Path(user_cache_dir("repro"))


@contextlib.contextmanager
def replacing(path: Path, mode: int = 0o644) -> Iterator[Path]:
    """A temp file beside `path` to fill; renamed over `path` (whole or not at all) on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file whole or not at all: a temp file in the same folder, then rename."""
    with replacing(path) as tmp, tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# Every area of the store (and objects/tmp): `Store.open` refuses a store where one is a link.
AREAS = ("objects", "objects/tmp", "sha256", "quarantine", "envs", "locks", "leases", "runs",
         "by-recipe", "by-output", "verifications", "layers", "bases", "images", "sandbox",
         "tmp", "cache", "runtime", "logs", "buildah", "blobs", "nix", "nix/envs",
         "nix/roots", "nix/locks")


def _hex(digest: str) -> str:
    return digest.removeprefix(hashing.PREFIX)


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def _listing(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return [hashing.PREFIX + p.name for p in sorted(folder.iterdir())
            if hashing.is_digest(hashing.PREFIX + p.name)]


def _file_lock(path: Path, timeout: float) -> contextlib.AbstractContextManager[None]:
    from builder import leases  # noqa: PLC0415

    return leases.locked(path, timeout)


class Envs:
    """Materialised environments: `<env id>/`, staged beside and published by one rename."""

    __slots__ = ("locks", "quarantine", "root")

    def __init__(self, root: Path, locks: Path, quarantine: Path) -> None:
        self.root = root
        self.locks = locks
        self.quarantine = quarantine

    def path(self, env_id: str) -> Path:
        return self.root / _hex(env_id)

    def ready(self, env_id: str) -> bool:
        """True when the environment was built to the end (its manifest is the last thing in)."""
        return (self.path(env_id) / MANIFEST).is_file()

    def ids(self) -> list[str]:
        """Every complete environment's id."""
        if not self.root.is_dir():
            return []
        return [hashing.PREFIX + p.name for p in sorted(self.root.iterdir())
                if hashing.is_digest(hashing.PREFIX + p.name) and (p / MANIFEST).is_file()]

    def strays(self) -> list[Path]:
        """Folders in envs/ that are no environment (no manifest, or a name that is no env
        id): damage or leftovers, never used."""
        if not self.root.is_dir():
            return []
        return [p for p in sorted(self.root.iterdir()) if not p.name.startswith(".")
                and not (hashing.is_digest(hashing.PREFIX + p.name)
                         and (p / MANIFEST).is_file())]

    def last_used(self, env_id: str) -> float:
        return (self.path(env_id) / MANIFEST).stat().st_mtime

    def touch(self, env_id: str) -> None:
        """Mark an environment used now, for `cache gc --older-than`."""
        with contextlib.suppress(OSError):
            os.utime(self.path(env_id) / MANIFEST)

    @contextlib.contextmanager
    def locked(self, env_id: str, *, timeout: float = -1) -> Iterator[None]:
        """Hold the lock of one environment: concurrent builders of it wait for one another."""
        with _file_lock(self.locks / f"{_hex(env_id)}.lock", timeout):
            yield

    def use(self, env_id: str) -> None:
        """Hold the env for the rest of this command (gc waits for no one, it skips it)."""
        from builder import leases  # noqa: PLC0415

        leases.share(self.locks / f"{_hex(env_id)}.use")

    def claim(self, env_id: str) -> contextlib.AbstractContextManager[bool]:
        """The env to remove: True when no command uses it (held until the block ends)."""
        from builder import leases  # noqa: PLC0415

        return leases.exclusive(self.locks / f"{_hex(env_id)}.use")

    @contextlib.contextmanager
    def staging(self, env_id: str) -> Iterator[Path]:
        """A temp folder beside `<id>/`, held (a flock on the folder, so gc leaves it) until
        it is moved into place or, unless it was, removed."""
        from builder import leases  # noqa: PLC0415

        self.root.mkdir(parents=True, exist_ok=True)
        lock = None
        while lock is None:
            tmp = Path(tempfile.mkdtemp(dir=self.root,
                                        prefix=f".tmp-{_hex(env_id)[:12]}-{os.getpid()}-"))
            lock = leases.hold(tmp)
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            os.close(lock)

    def publish(self, staged: Path, env_id: str) -> Path:
        """Move a finished staging folder to its final name in one rename (a damaged env,
        one without its manifest, is moved away first)."""
        final = self.path(env_id)
        if final.exists() and not self.ready(env_id):
            self.remove(env_id)
        os.rename(staged, final)
        return final

    def set_aside(self, env_id: str) -> Path:
        """Move a damaged environment to quarantine/ (for a look; gc removes it later)."""
        import datetime as dt  # noqa: PLC0415

        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        dest = self.quarantine / f"env-{_hex(env_id)[:12]}-{stamp}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.path(env_id), dest)
        return dest

    def remove(self, env_id: str) -> None:
        """Remove an environment: renamed away first, so it never looks half there."""
        trash = self.root / f".trash-{_hex(env_id)[:12]}-{os.getpid()}"
        os.rename(self.path(env_id), trash)
        faults.point("gc-removing")
        remove_tree(trash)

    def leftovers(self, min_age: float = 3600) -> list[Path]:
        """Staging folders of builds that died without cleaning up, older than `min_age` s."""
        if not self.root.is_dir():
            return []
        now = time.time()
        return [p for p in self.root.iterdir()
                if p.name.startswith((".tmp-", ".trash-")) and now - p.stat().st_mtime > min_age]


class Records:
    """Run records (as blobs) and their indexes: by run key, by recipe, by output digest."""

    __slots__ = ("blobs", "root")

    def __init__(self, root: Path, blobs: Blobs) -> None:
        self.root = root
        self.blobs = blobs

    def add(self, record: RunRecord, *, answers: bool = True) -> str:
        """Store a record and index it; only a success answers its run key (without
        `answers`, only where no record does yet)."""
        digest = self.blobs.put(record.encode())
        faults.point("record-stored")
        self.index(digest, record, answers=answers)
        return digest

    def index(self, digest: str, record: RunRecord, *, answers: bool = True) -> None:
        """Index a stored record (one pulled from a remote, or just added)."""
        h = _hex(digest)
        _touch(self.root / "by-recipe" / record.recipe.name / h)
        if record.succeeded:
            for out in record.outputs:
                folder = self.root / "by-output" / _hex(out.digest)
                if os.path.lexists(folder) and not folder.is_dir():  # damaged: not a folder
                    folder.unlink()
                _touch(folder / h)
            pointer = self.root / "runs" / _hex(record.run_key)
            if not answers and pointer.is_file() and not pointer.is_symlink():
                return  # a verification's re-run: the answer it was compared with stays
            if pointer.is_dir() and not pointer.is_symlink():  # damaged: a folder in its place
                remove_tree(pointer)
            atomic_write(pointer, digest.encode())

    def get(self, digest: str, *, quarantine: bool = True) -> RunRecord:
        """A record, checked against its digest (a damaged one is quarantined, unless
        `quarantine` is False: a dry run changes nothing).

        Raises:
            StoreError: it is missing, damaged, or not a run record.
        """
        from builder.records import RunRecord  # noqa: PLC0415

        return RunRecord.decode(self.blobs.get(digest, quarantine=quarantine),
                                self.blobs.path(digest))

    def for_key(self, run_key: str) -> str | None:
        """The record digest that answers a run key, if any.

        Raises:
            StoreError: the pointer is not a record digest (damaged, or written by hand).
        """
        path = self.root / "runs" / _hex(run_key)
        if not os.path.lexists(path):
            return None
        text = hashing.read_digest(path)
        if text is None:
            raise StoreError(f"{path} should name a record (blake3:<64 hex>) but does not: "
                             "it is damaged", path)
        return text

    def answer(self, run_key: str, *, quarantine: bool = True) -> tuple[str, RunRecord] | None:
        """The record that answers a run key (its digest and itself), if any: a record of
        another key, or a failed one, in its place is damage, never an answer.

        Raises:
            StoreError: the pointer or the record it names is damaged.
        """
        digest = self.for_key(run_key)
        if digest is None:
            return None
        record = self.get(digest, quarantine=quarantine)
        if record.run_key != run_key or not record.succeeded:
            path = self.root / "runs" / _hex(run_key)
            raise StoreError(f"{path} names record {digest}, which is "
                             + (f"the answer of run key {record.run_key}"
                                if record.run_key != run_key else "a failed run")
                             + ": the pointer is damaged", path)
        return digest, record

    def drop_answers(self, env_id: str, *, runner: str | None = None) -> list[Path]:
        """Stop every record made in an env (by `runner`, or any) from answering its key
        (the env was found tampered: what ran in it is not trusted, so those keys train
        again). The records stay, as history. Returns the pointers removed."""
        dropped = []
        for pointer in self.pointers():
            digest = hashing.read_digest(pointer)
            try:
                record = self.get(digest) if digest else None
            except StoreError:
                continue
            if record is not None and record.env == env_id \
                    and runner in (None, record.runner):
                pointer.unlink(missing_ok=True)
                dropped.append(pointer)
        return dropped

    def odd_indexes(self) -> list[Path]:
        """by-output/ and by-recipe/ entries that should be folders and are not."""
        return [p for area in ("by-output", "by-recipe")
                for p in sorted((self.root / area).glob("*"))
                if not p.is_dir() or p.is_symlink()]

    def of_recipe(self, recipe_name: str) -> list[str]:
        return _listing(self.root / "by-recipe" / recipe_name)

    def producing(self, artefact: str) -> list[str]:
        return _listing(self.root / "by-output" / _hex(artefact))

    @contextlib.contextmanager
    def locked(self, run_key: str) -> Iterator[None]:
        """Hold one run key: concurrent runs of the same key wait, then answer from the store."""
        with _file_lock(self.root / "locks" / f"run-{_hex(run_key)}.lock", -1):
            yield

    def indexed(self) -> list[tuple[Path, str]]:
        """Every record the by-recipe index names: (its index entry, the record digest)."""
        return [(entry, hashing.PREFIX + entry.name)
                for entry in sorted((self.root / "by-recipe").glob("*/*"))
                if hashing.is_digest(hashing.PREFIX + entry.name)]

    def odd_entries(self) -> list[Path]:
        """Index entries whose names are not digests (damage, or put there by hand)."""
        return [entry for entry in sorted((self.root / "by-recipe").glob("*/*"))
                if not hashing.is_digest(hashing.PREFIX + entry.name)]

    def pointers(self) -> list[Path]:
        """Every run-key pointer (`runs/<key>`, naming the record that answers it)."""
        return sorted((self.root / "runs").glob("*"))

    def find(self, ref: str) -> str | None:
        """A record digest from a run key or record digest, whole or a prefix (8+ hex)."""
        h = _hex(ref.strip()).lower()
        if len(h) < 8 or not all(c in "0123456789abcdef" for c in h):
            return None
        keys = self.root / "runs"
        if keys.is_dir():
            names = [p.name for p in keys.iterdir() if p.name.startswith(h)]
            if len(names) == 1:
                named = hashing.read_digest(keys / names[0])
                if named is None:
                    raise StoreError(f"{keys / names[0]} should name a record (blake3:<64 "
                                     "hex>) but does not: it is damaged", keys / names[0])
                return named
        found = [d for d in self.blobs.matching(h) if self._is_record(d)]
        return found[0] if len(found) == 1 else None

    def _is_record(self, digest: str) -> bool:
        """A small JSON object with a run schema (artefacts share the blobs; skip big ones)."""
        path = self.blobs.path(digest)
        if not self.blobs.has(digest) or path.stat().st_size > 1 << 20:
            return False
        from builder.records import is_run_record  # noqa: PLC0415

        return is_run_record(path.read_bytes())


class Verifications:
    """Verification reports per recipe, named so that listing order is time order."""

    __slots__ = ("root",)

    def __init__(self, root: Path) -> None:
        self.root = root

    def add(self, report: Verification) -> Path:
        data = report.encode()
        stamp = report.started.replace(":", "").replace("-", "")
        path = (self.root / report.recipe
                / f"{stamp}-{_hex(hashing.digest_bytes(data))[:12]}.json")
        atomic_write(path, data)
        return path

    def read(self, path: Path) -> Verification:
        from builder.verdicts import Verification  # noqa: PLC0415

        return Verification.decode(path.read_bytes(), path)

    def of(self, recipe_name: str) -> list[Verification]:
        from builder.verdicts import Verification  # noqa: PLC0415

        folder = self.root / recipe_name
        if not folder.is_dir():
            return []
        found = []
        for path in sorted(folder.glob("*.json")):
            try:
                found.append(Verification.decode(path.read_bytes(), path))
            except (StoreError, OSError) as exc:
                log.warning("skipped %s: %s", path, getattr(exc, "message", exc))
        return found


class Layers:
    """Image layers built from one package each, named by what they hold: a small JSON of
    their identities and the blob that holds them (`layers/<key>.json`)."""

    __slots__ = ("root",)

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / f"{_hex(key)}.json"

    def use(self, key: str, blob: str) -> None:
        """Mark a layer used now (for gc's age), and hold its blob for this command."""
        from builder import leases  # noqa: PLC0415

        with contextlib.suppress(OSError):
            os.utime(self.path(key))
        leases.note(self.root.parent, "blob", blob)


class Bases:
    """What repro learnt of base-image layers (their blobs live in the one blob area)."""

    __slots__ = ("legacy", "root")

    def __init__(self, root: Path, legacy: Path) -> None:
        self.root = root
        self.legacy = legacy

    def scan(self, blob: str) -> Path:
        """The file list and checked diff_id of a base layer, by the layer's blob."""
        return self.root / f"{_hex(blob)}.json"

    def path(self, digest: str) -> Path:
        """A base blob as repro kept them before the one blob area (read, then moved in)."""
        return self.legacy / digest.removeprefix("sha256:")


class Images:
    """What the images repro built say about themselves, and where layouts go by default."""

    __slots__ = ("root",)

    def __init__(self, root: Path) -> None:
        self.root = root

    def facts(self, digest: str) -> Path:
        return self.root / "by-digest" / f"{digest.removeprefix('sha256:')}.json"

    def layout(self, recipe_name: str) -> Path:
        return self.root / recipe_name


class Sandboxes:
    """Private folders of runs in progress, each held by a lock file while its run lives."""

    __slots__ = ("root",)

    def __init__(self, root: Path) -> None:
        self.root = root

    @contextlib.contextmanager
    def create(self, *, keep: bool = False) -> Iterator[Path]:
        """A new, empty sandbox folder; removed afterwards unless `keep` (then marked kept, so
        gc leaves it until it is older than its cutoff)."""
        from builder import leases  # noqa: PLC0415

        self.root.mkdir(parents=True, exist_ok=True)
        folder = self.root / f"run-{os.getpid()}-{os.urandom(6).hex()}"
        lock = folder.with_name(folder.name + ".lock")
        try:
            with leases.locked(lock):  # held before the folder exists: gc never sees it unheld
                folder.mkdir(mode=0o700)
                try:
                    yield folder
                finally:
                    if keep:
                        folder.with_name(folder.name + ".kept").touch()
                    else:
                        remove_tree(folder)
        finally:
            if not keep:
                lock.unlink(missing_ok=True)

    def leftovers(self, *, prune: bool = True) -> list[Path]:
        """Sandboxes whose run is gone (killed before it could clean up): their lock is free.
        With `prune`, locks whose sandbox is gone are removed too."""
        from builder import leases  # noqa: PLC0415

        if not self.root.is_dir():
            return []
        dead = []
        for lock in self.root.glob("*.lock") if prune else []:  # a lock whose sandbox is gone
            if not lock.with_suffix("").exists():
                with contextlib.suppress(leases.Busy, OSError), leases.locked(lock, 0):
                    lock.unlink(missing_ok=True)
        for folder in sorted(p for p in self.root.iterdir()
                             if p.is_dir() and not p.is_symlink()):
            if folder.with_name(folder.name + ".kept").exists():
                continue  # --keep-sandbox: a cache of its own, gc'd by age
            try:
                with leases.locked(folder.with_name(folder.name + ".lock"), 0):
                    dead.append(folder)
            except (leases.Busy, OSError):
                continue
        return dead

    def kept(self) -> list[Path]:
        """Sandboxes kept with --keep-sandbox (their marker's age is theirs)."""
        if not self.root.is_dir():
            return []
        return sorted(p.with_suffix("") for p in self.root.glob("*.kept"))


def remove_tree(path: Path) -> None:
    """Remove a folder a command wrote, whatever modes it left (read-only folders too); a
    link in its place is removed, never followed."""
    if path.is_symlink():
        path.unlink(missing_ok=True)
        return
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                with contextlib.suppress(OSError):
                    os.chmod(full, 0o700)
    shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Store:
    root: Path

    @classmethod
    def open(cls, root: Path | None = None, *, check: bool = True) -> Store:
        """The store at `root` (REPRO_HOME, or the platform's cache folder).

        Raises:
            StoreError: one of its areas is a link (unless not `check`: `cache verify` opens
                it anyway, to list and repair).
        """
        store = cls((root or default_home()).resolve())
        if check:
            linked = [p for p in (store.root / a for a in AREAS) if p.is_symlink()]
            if linked:
                raise StoreError(f"{linked[0]} is a link, to {os.readlink(linked[0])}: the "
                                 "store's areas are folders repro makes, and it writes "
                                 "nothing through a link", linked[0],
                                 hint="remove the link (or run `repro cache verify --repair`)")
        return store

    @functools.cached_property
    def blobs(self) -> Blobs:
        return Blobs(self.root / "objects", self.root / "sha256", self.root / "quarantine")

    @functools.cached_property
    def envs(self) -> Envs:
        return Envs(self.root / "envs", self.root / "locks", self.root / "quarantine")

    @functools.cached_property
    def nix_envs(self) -> Envs:
        """Nix environments: `nix/envs/<env id>/` holds the manifest and the expression; the
        files are in the Nix store, kept by the gc root `nix/roots/<env id>`."""
        return Envs(self.root / "nix" / "envs", self.root / "nix" / "locks",
                    self.root / "quarantine")

    @property
    def nix_roots(self) -> Path:
        """The gc roots (`nix-build --out-link`) that keep Nix envs in the Nix store."""
        return self.root / "nix" / "roots"

    def nix_root(self, env_id: str) -> Path:
        return self.nix_roots / _hex(env_id)

    @functools.cached_property
    def records(self) -> Records:
        return Records(self.root, self.blobs)

    @functools.cached_property
    def verifications(self) -> Verifications:
        return Verifications(self.root / "verifications")

    @functools.cached_property
    def layers(self) -> Layers:
        return Layers(self.root / "layers")

    @functools.cached_property
    def bases(self) -> Bases:
        return Bases(self.root / "bases", self.root / "blobs" / "sha256")

    @functools.cached_property
    def images(self) -> Images:
        return Images(self.root / "images")

    @functools.cached_property
    def sandboxes(self) -> Sandboxes:
        return Sandboxes(self.root / "sandbox")

    def links(self) -> list[Path]:
        """Links in the store's top two levels (its areas and what they hold directly), where
        repro makes none: gc would follow one out of the store, so it refuses while any is."""
        found: list[Path] = []
        if not self.root.is_dir():
            return found
        for area in sorted(self.root.iterdir()):
            if area.is_symlink():
                found.append(area)
            elif area.is_dir():
                found += [p for p in sorted(area.iterdir()) if p.is_symlink()]
        return found

    @property
    def stat_cache(self) -> Path:
        return self.root / "cache" / "stat.sqlite"

    @property
    def runtime(self) -> Path:
        return self.root / "runtime"

    @property
    def buildah(self) -> Path:
        return self.root / "buildah"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def quarantine_file(self, path: Path) -> Path:
        """Move a damaged file of the store to quarantine/ (gc removes it later)."""
        import datetime as dt  # noqa: PLC0415

        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        dest = self.root / "quarantine" / f"{stamp}-{path.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
        return dest

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A private temp folder on the store's filesystem, removed afterwards; held (a flock)
        while it is used, so gc removes only a dead command's."""
        from builder import leases  # noqa: PLC0415

        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        lock = None
        while lock is None:
            tmp = Path(tempfile.mkdtemp(dir=self.root / "tmp"))
            lock = leases.hold(tmp)
        try:
            yield tmp
        finally:
            remove_tree(tmp)
            os.close(lock)

    def scratches(self) -> list[Path]:
        """Every scratch folder, a live command's or a dead one's."""
        folder = self.root / "tmp"
        return sorted(folder.iterdir()) if folder.is_dir() else []
