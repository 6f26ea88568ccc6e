"""`repro diff A B`: what differs between two runs, locks or environments, grouped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from builder import pylock
from builder.errors import InputError
from builder.lock import PYLOCK, REPRO_LOCK, read_lock
from builder.recipe import RECIPE_FILE, find_recipe
from builder.schema import load_recipe
from builder.store import Store


def facets(ref: str, store: Store) -> tuple[str, dict[str, Any]]:
    """One side of a diff, as comparable facets: (what it is, {facet: value}).

    A ref is a run (key or record digest), an env id in the store, or a lock: a recipe, its
    folder, a lockfiles/<name>/ folder, or a repro.lock or pylock.toml file.

    Raises:
        InputError: the ref is none of these.
    """
    path = Path(ref)
    if path.exists():
        if path.is_dir() and (path / REPRO_LOCK).is_file():
            path = path / PYLOCK
        if path.name in (PYLOCK, REPRO_LOCK):
            folder = path.parent
            packages = pylock.loads((folder / PYLOCK).read_text(), folder / PYLOCK)
            return f"lock {folder}", {"packages": {p.name: p.version for p in packages},
                                      "system-packages": _debs(folder / REPRO_LOCK)}
        if path.is_dir() or path.name == RECIPE_FILE:
            current = read_lock(load_recipe(find_recipe(path)))
            return f"lock {current.pylock_path.parent}", {
                "env": current.env_id,
                "packages": {p.name: p.version for p in current.packages},
                "system-packages": {d.name: d.version for d in current.debs}}
    env_id = ref if ref.startswith("blake3:") else f"blake3:{ref}"
    if store.envs.ready(env_id):
        from builder.env import read_manifest  # noqa: PLC0415

        m = read_manifest(store.envs.path(env_id))
        return f"env {m.env}", {"env": m.env, "python": m.python, "packages": m.packages}
    digest = store.records.find(ref)
    if digest is None:
        raise InputError(f"{ref} is not a run, an env id, or a lock",
                         hint="give run keys or record digests (`repro runs`), env ids "
                              "(`repro cache ls`), or lock folders / recipes")
    r = store.records.get(digest)
    return f"run {r.run_key}", {
        "env": r.env,
        "python": r.software.python,
        "packages": r.software.packages,
        "code": {"digest": r.code.digest, "files": r.code.files, "commit": r.code.commit,
                 "dirty": r.code.dirty},
        "data": {k: v.digest for k, v in r.data.items()},
        "params": r.params,
        "seed": r.seed,
        "hardware": r.hardware_class or {"arch": r.hardware["arch"],
                                         "cpu": r.hardware["cpu"]["model"]},
        "outputs": {o.path: o.digest for o in r.outputs},
        "metrics": r.metrics,
    }


def _debs(path: Path) -> dict[str, str]:
    """The Debian packages a repro.lock pins (none when it is unreadable or has none)."""
    import tomllib  # noqa: PLC0415

    from builder.lock import debs_of  # noqa: PLC0415

    try:
        return {d.name: d.version for d in debs_of(tomllib.loads(path.read_text()))}
    except (OSError, tomllib.TOMLDecodeError, InputError):
        return {}


def _changes(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": k, "a": a.get(k), "b": b.get(k)}
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def diff(ref_a: str, ref_b: str, *, store: Store) -> dict[str, Any]:
    """Differences grouped by facet: packages (added, removed, changed), code, data, params,
    seed, hardware, outputs, metrics. Facets only one side has are not compared."""
    what_a, a = facets(ref_a, store)
    what_b, b = facets(ref_b, store)
    groups: dict[str, Any] = {}
    for facet in ("packages", "system-packages"):
        if facet not in a or facet not in b:
            continue
        pa, pb = a[facet], b[facet]
        changes = {
            "added": {n: pb[n] for n in sorted(set(pb) - set(pa))},
            "removed": {n: pa[n] for n in sorted(set(pa) - set(pb))},
            "changed": {n: [pa[n], pb[n]] for n in sorted(set(pa) & set(pb)) if pa[n] != pb[n]},
        }
        if any(changes.values()):
            groups[facet] = changes
    for facet in ("env", "python", "code", "seed", "hardware"):
        if facet in a and facet in b and a[facet] != b[facet]:
            groups[facet] = {"a": a[facet], "b": b[facet]}
    for facet in ("data", "params", "outputs", "metrics"):
        if facet in a and facet in b:
            moved = _changes(a[facet], b[facet])
            if moved:
                groups[facet] = moved
    return {"a": what_a, "b": what_b, "same": not groups, "differences": groups}


def render(result: dict[str, Any]) -> str:
    """The diff for a person: one block per group."""
    lines = [f"a: {result['a']}", f"b: {result['b']}"]
    if result["same"]:
        return "\n".join([*lines, "no differences"])
    for group, change in result["differences"].items():
        lines.append(f"{group}:")
        if group in ("packages", "system-packages"):
            lines += [f"  + {n} {v}" for n, v in change["added"].items()]
            lines += [f"  - {n} {v}" for n, v in change["removed"].items()]
            lines += [f"  ~ {n} {old} -> {new}" for n, (old, new) in change["changed"].items()]
        elif isinstance(change, list):
            lines += [f"  ~ {c['name']}: {c['a']} -> {c['b']}" for c in change]
        else:
            lines.append(f"  {change['a']} -> {change['b']}")
    return "\n".join(lines)
