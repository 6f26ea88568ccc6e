"""`repro cache ls | gc`: what the store holds, and removing what is no longer used."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

from builder.env import read_manifest
from builder.store import Store, remove_tree


def _size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


def list_envs(store: Store) -> list[dict[str, Any]]:
    """Every complete environment: id, recipe, Python, packages, size, last use."""
    out = []
    for env_id in store.envs.ids():
        path = store.envs.path(env_id)
        manifest = read_manifest(path)
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


def gc(store: Store, *, older_than_days: float, dry_run: bool = False) -> dict[str, Any]:
    """Remove environments unused for `older_than_days`, and leftovers of dead builds.

    An environment being built or used by a build right now (its lock held) is skipped.
    """
    from filelock import Timeout  # noqa: PLC0415

    cutoff = time.time() - older_than_days * 86400
    removed: list[str] = []
    freed = 0
    for leftover in [*store.envs.leftovers(), *store.sandboxes.leftovers()]:
        freed += _size(leftover)
        removed.append(str(leftover))
        if not dry_run:
            remove_tree(leftover)
            leftover.with_name(leftover.name + ".lock").unlink(missing_ok=True)
    for env in list_envs(store):
        if store.envs.last_used(env["env"]) > cutoff:
            continue
        try:
            with store.envs.locked(env["env"], timeout=0):
                if not dry_run:
                    store.envs.remove(env["env"])
        except Timeout:
            continue
        removed.append(env["path"])
        freed += env["size"]
    return {"store": str(store.root), "removed": removed, "freed": freed, "dry_run": dry_run}
