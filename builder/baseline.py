"""Baselines: the last known good run(s) of a recipe, in `lockfiles/<name>/baseline.json`."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from builder import env, hashing, run
from builder.errors import InputError
from builder.recipe import Recipe
from builder.store import Store, atomic_write

SCHEMA = "repro.baseline/v1"
FILE = "baseline.json"
_SHARED = ("env", "packages", "code", "data", "params", "hardware_class")


def path_of(recipe: Recipe) -> Path:
    return recipe.lock_dir / FILE


def from_records(recipe: Recipe, records: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """A baseline from successful runs that differ at most in their seed.

    Raises:
        InputError: a run is of another recipe, failed, or differs in more than its seed.
    """
    entries = []
    shared: dict[str, Any] | None = None
    for digest, r in records:
        if r["recipe"]["name"] != recipe.name:
            raise InputError(f"run {digest} is of recipe {r['recipe']['name']!r}, not "
                             f"{recipe.name!r}", hint="give runs of this recipe (`repro runs`)")
        if r["exit_status"] != 0 or "error" in r:
            raise InputError(f"run {digest} failed; a baseline must be a good run",
                             hint="pick a succeeded run from `repro runs`")
        facts = {"env": r["env"], "packages": r["software"]["packages"],
                 "code": r["code"]["digest"],
                 "data": {k: v["digest"] for k, v in r["data"].items()},
                 "params": r["params"], "hardware_class": r["hardware_class"]}
        if shared is not None and facts != shared:
            differs = sorted(k for k in _SHARED if facts[k] != shared[k])
            raise InputError(f"runs of one baseline may differ only in their seed; run {digest} "
                             f"differs in {', '.join(differs)}",
                             hint="give runs made from the same recipe, lock, code and data")
        shared = facts
        entries.append({"seed": r["seed"], "run_key": r["run_key"], "record": digest,
                        "outputs": r["outputs"], "metrics": r["metrics"],
                        "duration": r["duration"]})
    if shared is None:
        raise InputError("no runs given for the baseline")
    return {"schema": SCHEMA, "recipe": recipe.name, "standard":
            recipe.reproducibility.standard, **shared,
            "runs": sorted(entries, key=lambda e: e["seed"])}


def latest_runs(recipe: Recipe, store: Store) -> list[tuple[str, dict[str, Any]]]:
    """The recorded run of each of the recipe's seeds, as the recipe stands now.

    Raises:
        InputError: a seed has no successful run with the current run key.
    """
    found = []
    for seed in run.train_of(recipe).seeds:
        key = run.plan(recipe, store=store, mode="locked", seed=seed).key
        digest = store.run_for_key(key)
        if digest is None:
            raise InputError(f"{recipe.name} has no recorded run for seed {seed} as the recipe "
                             "stands now", hint=f"run `repro run --seed {seed}` first")
        found.append((digest, store.record(digest)))
    return found


def set_baseline(recipe: Recipe, store: Store, refs: Sequence[str] = (),
                 say: Callable[[str], None] = env.noop) -> tuple[Path, dict[str, Any]]:
    """Write `baseline.json` from the given runs, or from the recipe's latest run per seed.

    For a `functional` recipe the evaluation command is run on each baseline run's outputs,
    and its metrics are kept as the baseline's.

    Raises:
        InputError: a run is unknown, failed, of another recipe, or the runs disagree.
    """
    records = []
    for ref in refs:
        digest = store.find_record(ref)
        if digest is None:
            raise InputError(f"no run in {store.root} matches {ref!r}",
                             hint="`repro runs` lists the recorded runs")
        records.append((digest, store.record(digest)))
    base = from_records(recipe, records or latest_runs(recipe, store))
    if recipe.reproducibility.standard == "functional":
        built = env.build(recipe, store=store, mode="locked", say=say)
        for entry in base["runs"]:
            run.restore_outputs(recipe, store, entry)
            entry["evaluation"] = run.evaluate(recipe, store, built, say)
    path = path_of(recipe)
    atomic_write(path, hashing.canonical_json(base) + b"\n")
    return path, base


def load(recipe: Recipe) -> dict[str, Any]:
    """The recipe's committed baseline.

    Raises:
        InputError: none yet (and how to set one), unreadable, or of another recipe.
    """
    path = path_of(recipe)
    if not path.is_file():
        raise InputError(f"{recipe.name} has no baseline yet ({path} does not exist)",
                         hint="run `repro run`, then `repro baseline set` and commit "
                              f"{path.relative_to(recipe.root)}; or verify against a run "
                              "with --against RUN")
    try:
        data: dict[str, Any] = json.loads(path.read_bytes())
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema is {data.get('schema')!r}, not {SCHEMA!r}")
        missing = [k for k in ("recipe", "runs", *_SHARED) if k not in data]
        if missing or not data["runs"]:
            raise ValueError(f"missing {', '.join(missing) or 'runs'}")
    except (ValueError, AttributeError) as exc:
        raise InputError(f"{path} is not a valid baseline: {exc}",
                         hint="restore it from version control, or set it again with "
                              "`repro baseline set`") from exc
    if data["recipe"] != recipe.name:
        raise InputError(f"{path} is a baseline of recipe {data['recipe']!r}, not "
                         f"{recipe.name!r}", hint="set this recipe's own with "
                                                  "`repro baseline set`")
    return data
