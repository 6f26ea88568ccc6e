"""Baselines: the last known good run(s) of a recipe, in `lockfiles/<name>/baseline.json`.

A `bitwise` run key covers the hardware class, and the same code can make other bytes on
another CPU (the torch example does, on AMD EPYC and Intel Xeon). So a baseline holds one set
of runs per hardware class it was made on: `repro baseline set` on another class of machine
adds that class's runs beside the others, as long as the env, code, data and params agree.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from builder import run
from builder.errors import InputError
from builder.project import Project
from builder.recipe import Recipe
from builder.records import RunRecord
from builder.runner import VenvRunner
from builder.store import atomic_write
from builder.verdicts import Baseline, BaselineRun

log = logging.getLogger(__name__)
FILE = "baseline.json"
_SHARED = ("env", "packages", "code", "data", "params")


def path_of(recipe: Recipe) -> Path:
    return recipe.lock_dir / FILE


def _shared(r: RunRecord) -> dict[str, object]:
    return {"env": r.env, "packages": r.software.packages, "code": r.code.digest,
            "data": {k: v.digest for k, v in r.data.items()}, "params": r.params}


def from_records(recipe: Recipe, records: Sequence[tuple[str, RunRecord]]) -> Baseline:
    """A baseline from successful runs that differ at most in their seed and hardware class.

    Raises:
        InputError: a run is of another recipe, failed, or differs in more than that.
    """
    entries: dict[tuple[int, str], BaselineRun] = {}
    shared: dict[str, object] | None = None
    key_format = ""
    for digest, r in records:
        if r.recipe.name != recipe.name:
            raise InputError(f"run {digest} is of recipe {r.recipe.name!r}, not "
                             f"{recipe.name!r}", hint="give runs of this recipe (`repro runs`)")
        if not r.succeeded:
            raise InputError(f"run {digest} failed; a baseline must be a good run",
                             hint="pick a succeeded run from `repro runs`")
        facts = _shared(r)
        if shared is not None and (facts != shared or r.key_format != key_format):
            differs = sorted(k for k in _SHARED if facts[k] != shared[k]) or ["run-key format"]
            raise InputError(f"runs of one baseline may differ only in their seed; run {digest} "
                             f"differs in {', '.join(differs)}",
                             hint="give runs made from the same recipe, lock, code and data")
        shared, key_format = facts, r.key_format
        entry = BaselineRun(r.seed, r.run_key, digest, r.outputs, r.metrics, r.duration,
                            r.hardware_class)
        entries[(r.seed, repr(r.hardware_class))] = entry  # the last given wins
    if shared is None:
        raise InputError("no runs given for the baseline")
    first = records[0][1]
    runs = sorted(entries.values(), key=lambda e: (repr(e.hardware_class), e.seed))
    return Baseline(recipe.name, recipe.reproducibility.standard, first.env,
                    first.software.packages, first.code.digest,
                    {k: v.digest for k, v in first.data.items()}, first.params, tuple(runs),
                    key_format)


def latest_runs(project: Project, runner: VenvRunner) -> list[tuple[str, RunRecord]]:
    """The recorded run of each of the recipe's seeds, as the recipe stands now.

    Raises:
        InputError: a seed has no successful run with the current run key.
    """
    records = project.store.records
    found = []
    for seed in run.train_of(project.recipe).seeds:
        answer = records.answer(run.plan(project, runner, seed=seed).key)
        if answer is None:
            raise InputError(f"{project.recipe.name} has no recorded run for seed {seed} as the "
                             "recipe stands now", hint=f"run `repro run --seed {seed}` first")
        found.append(answer)
    return found


def _merged(new: Baseline, old: Baseline | None) -> Baseline:
    """`new`, keeping `old`'s runs of other hardware classes when both agree on the rest."""
    if old is None or new.standard != "bitwise" or old.standard != new.standard:
        return new  # only a bitwise run key covers the hardware class
    same = all(getattr(old, k) == getattr(new, k) for k in _SHARED) \
        and old.key_format == new.key_format
    classes = new.classes
    kept = [r for r in old.runs if r.hardware_class not in classes]
    if not kept:
        return new
    if not same:
        differs = [k for k in _SHARED if getattr(old, k) != getattr(new, k)]
        if old.key_format != new.key_format:
            differs.append(f"run-key format ({old.key_format})")
        log.info("The baseline's runs on other hardware (%s) differ in %s: dropped",
                 ", ".join(str(r.hardware_class) for r in kept), ", ".join(differs))
        return new
    log.info("Kept the baseline's runs on other hardware: %s",
             ", ".join(sorted({str(r.hardware_class) for r in kept})))
    runs = sorted([*new.runs, *kept], key=lambda e: (repr(e.hardware_class), e.seed))
    return replace(new, runs=tuple(runs))


def set_baseline(project: Project, runner: VenvRunner,
                 refs: Sequence[str] = ()) -> tuple[Path, Baseline]:
    """Write `baseline.json` from the given runs, or from the recipe's latest run per seed.

    Runs of other hardware classes already in the baseline are kept when they agree with the
    new runs on env, code, data and params. For a `functional` recipe the evaluation command
    is run on each new run's outputs, and its metrics are kept as the baseline's.

    Raises:
        InputError: a run is unknown, failed, of another recipe, or the runs disagree.
    """
    recipe, records = project.recipe, project.store.records
    chosen = []
    for ref in refs:
        digest = records.find(ref)
        if digest is None:
            raise InputError(f"no run in {project.store.root} matches {ref!r}",
                             hint="`repro runs` lists the recorded runs")
        chosen.append((digest, records.get(digest)))
    base = from_records(recipe, chosen or latest_runs(project, runner))
    if recipe.reproducibility.standard == "functional":
        evaluated = []
        for entry in base.runs:
            evaluated.append(replace(entry, evaluation=run.evaluate(project, runner,
                                                                     entry.outputs)))
        base = replace(base, runs=tuple(evaluated))
    path = path_of(recipe)
    previous = None
    if path.is_file():
        try:
            previous = load(recipe)
        except InputError:
            previous = None  # unreadable: replaced whole
    base = _merged(base, previous)
    atomic_write(path, base.encode())
    return path, base


def load(recipe: Recipe) -> Baseline:
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
    data = Baseline.decode(path.read_bytes(), path)
    if data.recipe != recipe.name:
        raise InputError(f"{path} is a baseline of recipe {data.recipe!r}, not "
                         f"{recipe.name!r}", hint="set this recipe's own with "
                                                  "`repro baseline set`")
    return data
