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
from builder.records import RunRecord
from builder.store import Store, remove_tree


def _size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def list_envs(store: Store) -> list[dict[str, Any]]:
    """Every complete environment: id, recipe, Python, packages, size, last use."""
    out = []
    for env_id in store.envs.ids():
        path = store.envs.path(env_id)
        try:
            manifest = read_manifest(path)
        except StoreError as exc:
            out.append({"env": env_id, "recipe": "?", "python": "?", "packages": 0,
                        "path": str(path), "size": _size(path), "last_used": "",
                        "problem": exc.message})
            continue
        used = dt.datetime.fromtimestamp(store.envs.last_used(env_id), dt.UTC)
        out.append({
            "env": manifest.env,
            "recipe": manifest.recipe,
            "python": manifest.python,
            "packages": len(manifest.packages),
            "path": str(path),
            "size": _size(path),
            "last_used": used.strftime("%Y-%m-%dT%H:%M:%SZ"),
        })
    return out


# -- verify ---------------------------------------------------------------------------------
class _Report:
    def __init__(self, repair: bool) -> None:
        self.repair = repair
        self.problems: list[dict[str, Any]] = []
        self.checked: dict[str, int] = {}

    def add(self, area: str, path: Path, problem: str, fix: str | None) -> None:
        """A problem, and what --repair did about it (None: nothing could be done here)."""
        self.problems.append({"area": area, "path": str(path), "problem": problem,
                              "repair": fix if self.repair else None})


def _records(store: Store, report: _Report, bad_blobs: set[str]) -> None:
    """Every record readable; every index entry pointing at a record that is, with outputs."""
    records, blobs = store.records, store.blobs
    good: dict[str, RunRecord] = {}
    for entry, digest in records.indexed():
        try:
            if digest in bad_blobs:
                raise StoreError("its blob failed its digest")
            good[digest] = records.get(digest)
        except StoreError as exc:
            report.add("records", blobs.path(digest), f"record {digest}: {exc.message}",
                       "dropped from the index")
            if report.repair:
                entry.unlink(missing_ok=True)
    report.checked["records"] = len(good)
    for pointer in records.pointers():
        problem = None
        try:
            named = records.for_key(hashing.PREFIX + pointer.name)
            record = good.get(named or "")
            if record is None:
                problem = f"names {named}, which is not a readable record"
            else:
                lost = [o.path for o in record.outputs
                        if o.digest in bad_blobs or not blobs.has(o.digest)]
                if lost:
                    problem = f"its run's outputs are gone from the store: {', '.join(lost)}"
        except StoreError as exc:
            problem = exc.message
        if problem:
            report.add("records", pointer, f"run key {pointer.name[:12]}…: {problem}",
                       "dropped: the next `repro run` of that key trains again")
            if report.repair:
                pointer.unlink(missing_ok=True)


def _envs(store: Store, report: _Report, advance: Any) -> None:
    count = 0
    for env_id in store.envs.ids():
        path = store.envs.path(env_id)
        count += 1
        try:
            manifest = read_manifest(path)
            if manifest.tree is None:
                continue  # built before sealing: sealed as it is when next used
            content, _ = seal.tree(path)
            advance(_size(path))
            if content == manifest.tree:
                continue
            problem = "its files differ from what was sealed when it was built"
        except StoreError as exc:
            problem = exc.message
        report.add("envs", path, problem, "set aside to quarantine/ (rebuilt when next used)")
        if report.repair:
            store.envs.set_aside(env_id)
    report.checked["envs"] = count


def _aliases(store: Store, report: _Report) -> None:
    """Each sha256 alias names a blob the store has, whose bytes have that sha256."""
    blobs = store.blobs
    if not blobs.aliases.is_dir():
        return
    for alias in sorted(blobs.aliases.iterdir()):
        digest = alias.read_text(errors="replace").strip()
        problem = None
        if not blobs.has(digest):
            problem = f"names {digest}, which the store does not hold"
        else:
            with blobs.path(digest).open("rb") as f:
                if hashlib.file_digest(f, "sha256").hexdigest() != alias.name:
                    problem = f"names {digest}, whose sha256 is another"
        if problem:
            report.add("blobs", alias, f"sha256 alias {alias.name[:12]}…: {problem}",
                       "dropped (fetched or built again when next needed)")
            if report.repair:
                alias.unlink(missing_ok=True)


def verify(store: Store, *, repair: bool = False) -> dict[str, Any]:
    """Check every blob, env, alias and record; with `repair`, fix what can be fixed."""
    report = _Report(repair)
    everything = list(store.blobs.all())
    total = sum(p.stat().st_size for _, p in everything)
    envs = sum(_size(store.envs.path(e)) for e in store.envs.ids())
    started = time.perf_counter()
    bad: set[str] = set()
    with progress("Verifying the store", total + envs, unit="bytes") as advance:
        for digest, path in everything:
            size = path.stat().st_size
            if hashing.file_digest(path) != digest:
                bad.add(digest)
                report.add("blobs", path, f"blob {digest}: its bytes no longer have its digest",
                           "moved to quarantine/")
                if repair:
                    store.blobs.quarantine(digest, "repro cache verify found it damaged")
            advance(size)
        report.checked["blobs"] = len(everything)
        report.checked["blob_bytes"] = total
        _aliases(store, report)
        _envs(store, report, advance)
    _records(store, report, bad)
    for folder in sorted(store.verifications.root.glob("*")):
        for path in sorted(folder.glob("*.json")):
            try:
                store.verifications.read(path)
            except StoreError as exc:
                report.add("verifications", path, exc.message, "moved to quarantine/")
                if repair:
                    store.quarantine_file(path)
    seconds = time.perf_counter() - started
    return {"store": str(store.root), "ok": not report.problems, "repaired": repair,
            "checked": report.checked, "problems": report.problems,
            "seconds": round(seconds, 3),
            "throughput": round(total / seconds) if seconds else None}


# -- gc -------------------------------------------------------------------------------------
def _reachable(store: Store, keep: set[str], gone: set[str]) -> set[str]:
    """Blobs something still needs: records and their outputs and pylocks, env manifests'
    pylocks, the layers and base blobs gc keeps, committed baselines' outputs.
    `gone`: paths removed (or, dry, to be removed) already, which reach nothing."""
    reached = set(keep)
    for _, digest in store.records.indexed():
        reached.add(digest)
        with contextlib.suppress(StoreError):
            record = store.records.get(digest)
            reached |= {o.digest for o in record.outputs}
            reached.add(record.software.pylock)
    for env_id in store.envs.ids():
        if str(store.envs.path(env_id)) not in gone:
            with contextlib.suppress(StoreError):
                reached.add(read_manifest(store.envs.path(env_id)).pylock)
    for meta in store.layers.root.glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            if str(meta) not in gone:
                reached.add(json.loads(meta.read_text())["blob"])
    if store.blobs.aliases.is_dir():
        for alias in store.blobs.aliases.iterdir():
            if str(alias) not in gone:
                reached.add(alias.read_text().strip())
    return reached


def _writer(name: str, field: int) -> int | None:
    """The pid a leftover's name carries as its `field`-th dash-separated part (its writer),
    or None for a name from before they carried one."""
    parts = name.lstrip(".").split("-")
    return int(parts[field]) if len(parts) > field and parts[field].isdigit() else None


class _Collector:
    """One gc pass: what live commands hold, and what was (or would be) removed."""

    def __init__(self, store: Store, cutoff: float, dry_run: bool) -> None:
        self.store, self.cutoff, self.dry_run = store, cutoff, dry_run
        held = leases.live(store.root)
        self.envs = {item for kind, item in held if kind == "env"}
        self.paths = {item for kind, item in held if kind == "path"}
        self.blobs = {item for kind, item in held if kind == "blob"}
        self.removed: list[dict[str, Any]] = []

    def drop(self, path: Path, why: str, size: int | None = None) -> None:
        self.removed.append({"path": str(path), "why": why,
                             "bytes": _size(path) if size is None else size})
        if not self.dry_run:
            faults.point("gc-removing")
            if path.is_dir() and not path.is_symlink():
                remove_tree(path)
            else:
                path.unlink(missing_ok=True)

    def old(self, path: Path) -> bool:
        return path.stat().st_mtime < self.cutoff

    def leftover(self, path: Path, writer: int | None, why: str) -> None:
        """Remove what a dead writer left; a live writer's is in use. A name without a writer
        (made before names carried one) goes after an hour without change."""
        if writer is not None and leases.alive(writer):
            self.paths.add(str(path))
        elif writer is not None or path.stat().st_mtime < time.time() - 3600:
            self.drop(path, why)

    def unused_envs(self) -> None:
        from filelock import Timeout  # noqa: PLC0415

        envs = self.store.envs
        for env in list_envs(self.store):
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
            except Timeout:
                self.envs.add(env["env"])  # being built or checked right now

    def leftovers(self) -> None:
        """What killed builds, runs and blob writes left (never a live one's)."""
        store = self.store
        for staging in store.envs.leftovers(min_age=0):  # .tmp-<env>-<pid>-<random>
            self.leftover(staging, _writer(staging.name, 2),
                          "staging folder of a build that died")
        for sandbox in store.sandboxes.leftovers():
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
        for temp in store.blobs.temp_files():  # <pid>-<random>
            self.leftover(temp, _writer(temp.name, 0), "temp file of a blob write that died")

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
        reached = _reachable(self.store, keep, gone) | self.blobs
        listed = list(self.store.blobs.all())
        # read again now: a blob written since gc began was leased before it was renamed in
        reached |= {item for kind, item in leases.live(self.store.root) if kind == "blob"}
        for digest, path in listed:
            if digest not in reached:
                self.drop(path, "blob nothing needs")
        bases = self.store.bases.root
        gone = {r["path"] for r in self.removed}
        for memo in sorted(bases.glob("*.json")) if bases.is_dir() else []:
            blob = self.store.blobs.path(hashing.PREFIX + memo.stem)
            if not blob.is_file() or str(blob) in gone:
                self.drop(memo, "notes on a base layer whose blob is gone")


def gc(store: Store, *, older_than_days: float, dry_run: bool = False,
       keep: set[str] | None = None) -> dict[str, Any]:
    """Remove what nothing needs; never what a live command holds.

    keep: blob digests to keep whatever else says (the outputs of committed baselines).
    """
    collector = _Collector(store, time.time() - older_than_days * 86400, dry_run)
    collector.unused_envs()
    collector.leftovers()
    collector.caches()
    collector.unreachable(keep or set())
    removed = collector.removed
    return {"store": str(store.root), "removed": [r["path"] for r in removed],
            "details": removed, "dry_run": dry_run, "freed": sum(r["bytes"] for r in removed),
            "kept_for_live_commands": sorted(collector.envs | collector.paths)}
