"""`repro cache ls | verify | gc`: what the store holds, whether every byte is right, and
removing what nothing needs.

verify reads every blob, every sealed env and every record, and lists what is wrong with its
path; `--repair` quarantines damaged blobs, sets damaged envs aside (rebuilt when next
needed), and drops the index entries that pointed at what is gone (so those run keys train
again), and says what it could not repair.

gc is safe under use: it never removes what a live command holds (its lease), whatever
`--older-than` says. It removes unused envs (by last use), leftovers of killed builds and runs
(staging folders, sandboxes, temp files of blob writes), old quarantine, old layer and base
caches, and every blob no record, env, layer, base or committed baseline reaches.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from builder import faults, hashing, leases, seal
from builder.env import read_manifest
from builder.errors import StoreError
from builder.progress import progress
from builder.records import EnvManifest, RunRecord
from builder.store import Envs, Store, remove_tree


def _size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _areas(store: Store) -> dict[str, Envs]:
    """Each backend's environments: virtualenvs, and the Nix backend's manifests."""
    return {"venv": store.envs, "nix": store.nix_envs}


def _files(folder: Path, manifest: EnvManifest) -> Path:
    """Where an env's files are: its folder, or (Nix) its store path."""
    return Path(manifest.nix["path"]) if manifest.nix else folder


def list_envs(store: Store) -> list[dict[str, Any]]:
    """Every complete environment: id, backend, recipe, Python, packages, size, last use."""
    out = []
    for backend, area in _areas(store).items():
        for env_id in area.ids():
            path = area.path(env_id)
            try:
                manifest = read_manifest(path)
            except StoreError as exc:
                out.append({"env": env_id, "backend": backend, "recipe": "?", "python": "?",
                            "packages": 0, "path": str(path), "size": _size(path),
                            "last_used": "", "problem": exc.message})
                continue
            used = dt.datetime.fromtimestamp(area.last_used(env_id), dt.UTC)
            files = _files(path, manifest)
            out.append({
                "env": manifest.env,
                "backend": backend,
                "recipe": manifest.recipe,
                "python": manifest.python,
                "packages": len(manifest.packages),
                "path": str(files),
                "size": _size(files),
                "last_used": used.strftime("%Y-%m-%dT%H:%M:%SZ"),
            })
    return out


# -- verify ---------------------------------------------------------------------------------
class _Report:
    def __init__(self, repair: bool) -> None:
        self.repair = repair
        self.problems: list[dict[str, Any]] = []
        self.checked: dict[str, int] = {}

    def add(self, area: str, path: Path, problem: str, fix: str | None,
            action: Any = None) -> None:
        """A problem, and what --repair did about it (`action`, run with --repair; None: nothing
        could be done here). A repair that fails says why; the others go on."""
        if self.repair and action is not None:
            try:
                action()
            except OSError as exc:
                fix = f"could not repair: {exc.strerror or exc} ({exc.filename or path})"
        self.problems.append({"area": area, "path": str(path), "problem": problem,
                              "repair": fix if self.repair else None})


def _records(store: Store, report: _Report, bad_blobs: set[str]) -> None:
    """Every record readable; every index entry pointing at a record that is, with outputs;
    every run-key pointer naming a record of that key."""
    records, blobs = store.records, store.blobs
    good: dict[str, RunRecord] = {}
    for entry, digest in records.indexed():
        try:
            if digest in bad_blobs:
                raise StoreError("its blob failed its digest")
            good[digest] = records.get(digest, quarantine=report.repair)
        except StoreError as exc:
            report.add("records", blobs.path(digest), f"record {digest}: {exc.message}",
                       "dropped from the index", lambda e=entry: e.unlink(missing_ok=True))
    report.checked["records"] = len(good)
    for pointer in records.pointers():
        problem = None
        key = hashing.PREFIX + pointer.name
        if not hashing.is_digest(key):
            problem = "its name is not a run key"
        else:
            try:
                answer = records.answer(key, quarantine=report.repair)
                record = answer[1] if answer else None
                if record is None:
                    problem = "it is not a file naming a record"
                else:
                    lost = [o.path for o in record.outputs
                            if o.digest in bad_blobs or not blobs.has(o.digest)]
                    if lost:
                        problem = ("its run's outputs are damaged or gone from the store: "
                                   + ", ".join(lost))
            except StoreError as exc:
                problem = exc.message
        if problem:
            report.add("records", pointer, f"run key {pointer.name[:12]}…: {problem}",
                       "dropped: the next `repro run` of that key trains again",
                       lambda p=pointer: _remove(p))


def _odd_indexes(store: Store, report: _Report) -> None:
    for entry in store.records.odd_entries():
        report.add("records", entry, "an index entry whose name is not a record digest",
                   "removed", lambda e=entry: _remove(e))
    for entry in store.records.odd_indexes():
        report.add("records", entry, "an index entry that should be a folder and is not",
                   "removed (made again when next needed)", lambda e=entry: _remove(e))


def _remove(path: Path) -> None:
    """Remove a damaged entry: a file, a link (never followed) or a folder.

    Raises:
        OSError: it is still there (a read-only store).
    """
    if path.is_dir() and not path.is_symlink():
        remove_tree(path)
    else:
        path.unlink(missing_ok=True)
    if os.path.lexists(path):
        raise OSError(errno.EROFS if not os.access(path.parent, os.W_OK) else errno.EPERM,
                      "it could not be removed", str(path))


def _envs(store: Store, report: _Report, advance: Any) -> None:
    count = 0
    for backend, area in _areas(store).items():
        for env_id in area.ids():
            path = where = area.path(env_id)
            count += 1
            try:
                manifest = read_manifest(path)
                if manifest.tree is None:
                    continue  # built before sealing: sealed as it is when next used
                files = where = _files(path, manifest)
                if manifest.nix and not files.is_dir():
                    raise StoreError(f"its Nix store path {files} is gone (collected by Nix's "
                                     "gc?)", files)
                if manifest.nix:
                    _rooted(store, env_id, manifest, report)
                content, _ = seal.tree(files)
                advance(_size(files))
                if content == manifest.tree:
                    continue
                problem = "its files differ from what was sealed when it was built"
            except (StoreError, OSError) as exc:
                problem = getattr(exc, "message", None) or str(exc)
            fix = ("set aside to quarantine/ (rebuilt when next used); the run keys answered "
                   "by runs made in it train again") if backend == "venv" else (
                   "its manifest set aside to quarantine/ (the next build has Nix repair the "
                   "store path); the run keys answered by runs made in it train again")
            runner = None if backend == "venv" else backend
            report.add("envs", where, problem, fix,
                       lambda a=area, e=env_id, r=runner: (
                           a.set_aside(e), store.records.drop_answers(e, runner=r)))
        for stray in area.strays():
            report.add("envs", stray, f"a folder in {area.root.name}/ that is no environment "
                       "(no manifest)", "removed", lambda p=stray: _remove(p))
    report.checked["envs"] = count


def _rooted(store: Store, env_id: str, manifest: EnvManifest, report: _Report) -> None:
    """A Nix env's gc root must be there, or Nix's gc may take the env."""
    root = store.nix_root(env_id)
    if root.is_symlink() and os.readlink(root) == (manifest.nix or {}).get("store_path"):
        return
    from builder import nix  # noqa: PLC0415

    report.add("envs", root, f"the gc root of Nix env {env_id[7:19]} is gone: "
               "nix-collect-garbage may delete the env", "made again",
               lambda: nix.reroot(store, env_id))


def _aliases(store: Store, report: _Report) -> None:
    """Each sha256 alias names a blob the store has, whose bytes have that sha256."""
    blobs = store.blobs
    if not blobs.aliases.is_dir():
        return
    for alias in sorted(blobs.aliases.iterdir()):
        digest = hashing.read_digest(alias)
        problem = None
        if digest is None:
            problem = "it is not a file naming a blob digest"
        elif not blobs.has(digest):
            problem = f"names {digest}, which the store does not hold"
        else:
            with blobs.path(digest).open("rb") as f:
                if hashlib.file_digest(f, "sha256").hexdigest() != alias.name:
                    problem = f"names {digest}, whose sha256 is another"
        if problem:
            report.add("blobs", alias, f"sha256 alias {alias.name[:12]}…: {problem}",
                       "dropped (fetched or built again when next needed)",
                       lambda a=alias: _remove(a))


def _stat_cache(store: Store, report: _Report) -> None:
    """The digests cached for unchanged files (code, data) are still their contents'."""
    import sqlite3  # noqa: PLC0415

    from builder.inputs import stat_cache  # noqa: PLC0415

    if not store.stat_cache.is_file():
        return
    try:
        with stat_cache(store.stat_cache) as cache:
            for name in cache.stale():
                report.add("cache", Path(name), "the digest cached for this file is not its "
                           "contents' (its size and times are unchanged)", "forgotten (read "
                           "again when next used)", lambda n=name: cache.drop(n))
    except sqlite3.Error as exc:
        report.add("cache", store.stat_cache, f"unreadable: {exc}", "removed (rebuilt when "
                   "next used)", lambda: store.stat_cache.unlink(missing_ok=True))


def verify(store: Store, *, repair: bool = False) -> dict[str, Any]:
    """Check every blob, env, alias and record; with `repair`, fix what can be fixed."""
    report = _Report(repair)
    for link in store.links():
        report.add("store", link, f"a link in the store (to {os.readlink(link)}); repro makes "
                   "none there, and gc refuses to run while one is", "removed (the link only)",
                   lambda p=link: p.unlink(missing_ok=True))
    everything = [(digest, path, path.stat().st_size) for digest, path in store.blobs.all()]
    total = sum(size for _, _, size in everything)
    envs = sum(env["size"] for env in list_envs(store))
    started = time.perf_counter()
    bad: set[str] = set()
    for stray in store.blobs.strays():
        report.add("blobs", stray, "not a blob (a link, a device, a folder or a name that is "
                   "no digest)", "removed", lambda p=stray: _remove(p))
    with progress("Verifying the store", total + envs, unit="bytes") as advance:
        for digest, path, size in everything:
            if hashing.file_digest(path, size) != digest:
                bad.add(digest)
                report.add("blobs", path, f"blob {digest}: its bytes no longer have its digest",
                           "moved to quarantine/",
                           lambda d=digest: store.blobs.quarantine(
                               d, "repro cache verify found it damaged", say=False))
            advance(size)
        report.checked["blobs"] = len(everything)
        report.checked["blob_bytes"] = total
        _aliases(store, report)
        _envs(store, report, advance)
    _records(store, report, bad)
    _odd_indexes(store, report)
    _stat_cache(store, report)
    for folder in sorted(store.verifications.root.glob("*")):
        for path in sorted(folder.glob("*.json")):
            try:
                store.verifications.read(path)
            except StoreError as exc:
                report.add("verifications", path, exc.message, "moved to quarantine/",
                           lambda p=path: store.quarantine_file(p))
    seconds = time.perf_counter() - started
    return {"store": str(store.root), "ok": not report.problems, "repaired": repair,
            "checked": report.checked, "problems": report.problems,
            "seconds": round(seconds, 3),
            "throughput": round(total / seconds) if seconds else None}


# -- gc -------------------------------------------------------------------------------------
def _reachable(store: Store, keep: set[str], gone: set[str], dry_run: bool) -> set[str]:
    """Blobs something still needs: records and their outputs, data and pylocks, env
    manifests' pylocks, the layers and base blobs gc keeps, committed baselines' outputs.
    `gone`: paths removed (or, dry, to be removed) already, which reach nothing."""
    reached = set(keep)
    for _, digest in store.records.indexed():
        reached.add(digest)
        with contextlib.suppress(StoreError):
            record = store.records.get(digest, quarantine=not dry_run)
            reached |= {o.digest for o in record.outputs}
            reached |= {d.digest for d in record.data.values()}  # fetched or pulled data
            reached.add(record.software.pylock)
    for area in _areas(store).values():
        for env_id in area.ids():
            if str(area.path(env_id)) not in gone:
                with contextlib.suppress(StoreError):
                    reached.add(read_manifest(area.path(env_id)).pylock)
    for meta in store.layers.root.glob("*.json"):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            if str(meta) not in gone:
                reached.add(json.loads(hashing.read_regular(meta) or b"")["blob"])
    if store.blobs.aliases.is_dir():
        for alias in store.blobs.aliases.iterdir():
            if str(alias) not in gone:
                reached.add(hashing.read_digest(alias) or "")
    return reached


class _Collector:
    """One gc pass: what live commands hold, and what was (or would be) removed."""

    def __init__(self, store: Store, cutoff: float, dry_run: bool) -> None:
        self.store, self.cutoff, self.dry_run = store, cutoff, dry_run
        held = leases.live(store.root, prune=not dry_run)
        self.envs = {item for kind, item in held if kind == "env"}
        self.paths = {item for kind, item in held if kind == "path"}
        self.blobs = {item for kind, item in held if kind == "blob"}
        self.removed: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []  # what could not be removed (a read-only store)

    def drop(self, path: Path, why: str, size: int | None = None) -> None:
        entry = {"path": str(path), "why": why, "bytes": _size(path) if size is None else size}
        if not self.dry_run:
            faults.point("gc-removing")
            try:
                _remove(path)
            except OSError as exc:
                self.failed.append({**entry, "error": exc.strerror or str(exc)})
                return
        self.removed.append(entry)

    def old(self, path: Path) -> bool:
        return path.stat().st_mtime < self.cutoff

    def leftover(self, path: Path, why: str) -> None:
        """Remove what a dead writer left; a live writer holds its temp file or staging
        folder locked (`leases.hold`), so it is in use."""
        if leases.held(path):
            self.paths.add(str(path))
        else:
            self.drop(path, why)

    def unused_envs(self) -> None:
        areas = _areas(self.store)
        for env in list_envs(self.store):
            envs = areas[env["backend"]]
            if envs.last_used(env["env"]) > self.cutoff and "problem" not in env:
                continue
            try:
                with envs.locked(env["env"], timeout=0), envs.claim(env["env"]) as unused:
                    if not unused:
                        self.envs.add(env["env"])  # a command uses it now
                        continue
                    self.removed.append({"path": env["path"], "why": "unused env",
                                         "bytes": env["size"]})
                    if not self.dry_run:
                        envs.remove(env["env"])
                        if env["backend"] == "nix":
                            from builder import nix  # noqa: PLC0415

                            nix.unroot(self.store, env["env"], env["path"])
            except leases.Busy:
                self.envs.add(env["env"])  # being built or checked right now

    def nix_roots(self) -> None:
        """Nix gc roots of envs repro no longer has (so `nix-store --gc` may free them)."""
        roots = self.store.nix_roots
        ready = {e.removeprefix(hashing.PREFIX) for e in self.store.nix_envs.ids()}
        for root in sorted(roots.iterdir()) if roots.is_dir() else []:
            if root.name not in ready and root.is_symlink():
                self.drop(root, "Nix gc root of an env repro no longer has")

    def leftovers(self) -> None:
        """What killed builds, runs and blob writes left (never a live one's)."""
        store = self.store
        for area in _areas(store).values():
            for staging in area.leftovers(min_age=0):  # .tmp-<env>-…, .trash-<env>-…
                self.leftover(staging, "staging folder of a build that died")
            for stray in area.strays():
                self.leftover(stray, f"a folder in {area.root.name}/ that is no environment "
                                     "(no manifest)")
        self.nix_roots()
        for scratch in store.scratches():
            self.leftover(scratch, "scratch folder of a command that died")
        for sandbox in store.sandboxes.leftovers(prune=not self.dry_run):
            self.drop(sandbox, "sandbox of a run that died")
            if not self.dry_run:
                sandbox.with_name(sandbox.name + ".lock").unlink(missing_ok=True)
        for kept in store.sandboxes.kept():
            marker = kept.with_name(kept.name + ".kept")
            if self.old(marker):
                self.drop(kept, "sandbox kept with --keep-sandbox, older than the cutoff")
                if not self.dry_run:
                    marker.unlink(missing_ok=True)
                    kept.with_name(kept.name + ".lock").unlink(missing_ok=True)
        for temp in store.blobs.temp_files():
            if temp.parent.name == "tmp":
                self.leftover(temp, "temp file of a blob write that died")
            elif temp.lstat().st_mtime < time.time() - 3600:  # a temp name from before blobs.py
                self.drop(temp, "temp file of a write that died")

    def strays(self) -> None:
        """What is in the store's areas but is none of their entries (damage, or by hand)."""
        for stray in self.store.blobs.strays():
            self.drop(stray, "not a blob (a link, a device, a folder or a name that is no "
                             "digest)")
        for entry in self.store.records.odd_entries():
            self.drop(entry, "an index entry whose name is not a record digest")
        for entry in self.store.records.odd_indexes():
            self.drop(entry, "an index entry that should be a folder and is not")

    def caches(self) -> None:
        """Quarantine, layers, aliases and base notes not used since the cutoff."""
        store = self.store
        for folder, why in ((store.blobs.quarantined, "quarantined"),
                            (store.layers.root, "image layer not used since the cutoff"),
                            (store.blobs.aliases, "sha256 alias not used since the cutoff")):
            for item in sorted(folder.iterdir()) if folder.is_dir() else []:
                if item.is_dir() and folder == store.layers.root:
                    self.drop(item, "image layer kept before the one blob area")
                elif self.old(item):
                    self.drop(item, why)
        if store.bases.legacy.is_dir():
            self.drop(store.bases.legacy, "base blobs kept before the one blob area")

    def unreachable(self, keep: set[str]) -> None:
        gone = {r["path"] for r in self.removed}
        reached = _reachable(self.store, keep, gone, self.dry_run) | self.blobs
        listed = list(self.store.blobs.all())
        # read again now: a blob written since gc began was leased before it was renamed in
        reached |= {item for kind, item in leases.live(self.store.root, prune=not self.dry_run)
                    if kind == "blob"}
        for digest, path in listed:
            if digest not in reached:
                self.drop(path, "blob nothing needs")
        bases = self.store.bases.root
        gone = {r["path"] for r in self.removed}
        for memo in sorted(bases.glob("*.json")) if bases.is_dir() else []:
            digest = hashing.PREFIX + memo.stem
            if not hashing.is_digest(digest) or not self.store.blobs.has(digest) \
                    or str(self.store.blobs.path(digest)) in gone:
                self.drop(memo, "notes on a base layer whose blob is gone")


def gc(store: Store, *, older_than_days: float, dry_run: bool = False,
       keep: set[str] | None = None) -> dict[str, Any]:
    """Remove what nothing needs; never what a live command holds.

    keep: blob digests to keep whatever else says (the outputs of committed baselines).
    """
    links = store.links()
    if links:
        raise StoreError(f"the store holds links where repro makes none, which gc would "
                         f"follow out of it: {', '.join(map(str, links[:5]))}", links[0],
                         hint="remove them (repro makes its folders again), or run `repro "
                              "cache verify --repair`")
    collector = _Collector(store, time.time() - older_than_days * 86400, dry_run)
    collector.unused_envs()
    collector.leftovers()
    collector.strays()
    collector.caches()
    collector.unreachable(keep or set())
    removed = collector.removed
    return {"store": str(store.root), "removed": [r["path"] for r in removed],
            "failed": collector.failed,
            "details": removed, "dry_run": dry_run, "freed": sum(r["bytes"] for r in removed),
            "kept_for_live_commands": sorted(collector.envs | collector.paths)}
