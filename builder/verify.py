"""`repro verify`: re-run a recipe without the cache, compare with its baseline, explain drift."""

from __future__ import annotations

import datetime as dt
import json
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from builder import baseline as baselines
from builder import proc, run
from builder.errors import InputError, StoreError
from builder.project import Project
from builder.recipe import Recipe, Tolerance
from builder.records import RunRecord
from builder.runner import Runner, VenvRunner, runtime_dir
from builder.verdicts import (
    Baseline,
    BaselineRun,
    Cause,
    Check,
    MetricCheck,
    OutputCheck,
    Verification,
    VerifiedRun,
)

log = logging.getLogger(__name__)
MEAN_TEST = ("mean within tolerance: |mean(re-run) - mean(baseline)| <= "
             "abs + rel*|mean(baseline)| (+ declared nondeterminism)")
TENSOR_FORMATS = (".npy", ".npz", ".safetensors", ".pt", ".pth", ".ckpt")


def _bound(base: float, tol: Tolerance, extra: Sequence[Tolerance] = ()) -> float:
    """How far a value may move from `base`: abs + rel * |base|, widened by declared sources."""
    total = 0.0
    for t in (tol, *extra):
        total += (t.abs or 0.0) + (t.rel or 0.0) * abs(base)
    return total


def _package_changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    out = [f"{n} {old[n]} → {new[n]}" for n in sorted(set(old) & set(new)) if old[n] != new[n]]
    out += [f"+{n} {new[n]}" for n in sorted(set(new) - set(old))]
    out += [f"-{n} {old[n]}" for n in sorted(set(old) - set(new))]
    return out


def causes(base: Baseline, runs: Sequence[BaselineRun], record: RunRecord,
           standard: str) -> list[Cause]:
    """Which identities of the re-run differ from the baseline's: env, code, data, params,
    seed (bitwise and functional), hardware (bitwise: no baseline run of this class)."""
    found = []
    if record.env != base.env:
        changes = _package_changes(base.packages, record.software.packages)
        found.append(Cause("env", "packages: " + ", ".join(changes) if changes
                           else f"env id {base.env[:19]}… → {record.env[:19]}…"))
    if record.code.digest != base.code:
        found.append(Cause("code", f"code digest {base.code[:19]}… → "
                                   f"{record.code.digest[:19]}… (commit {record.code.commit}"
                                   f"{', dirty' if record.code.dirty else ''})"))
    data = {k: v.digest for k, v in record.data.items()}
    for name in sorted(set(data) | set(base.data)):
        if data.get(name) != base.data.get(name):
            found.append(Cause("data", f"data.{name} changed"))
    if record.params != base.params:
        moved = sorted(k for k in set(record.params) | set(base.params)
                       if record.params.get(k) != base.params.get(k))
        found.append(Cause("params", ", ".join(
            f"{k}: {base.params.get(k)!r} → {record.params.get(k)!r}" for k in moved)))
    base_seeds = [r.seed for r in base.runs]
    if standard != "statistical" and record.seed not in base_seeds:
        found.append(Cause("seed", f"seed {base_seeds[0]} → {record.seed}"))
    if standard == "bitwise" and not any(r.hardware_class == record.hardware_class
                                         for r in runs):
        found.insert(0, Cause("hardware", f"{_class_change(base, record)} (the baseline has no "
                                          "run made on this hardware class)"))
    return found


def _class_change(base: Baseline, record: RunRecord) -> str:
    from builder.hardware import class_text  # noqa: PLC0415

    return "; ".join(class_text(c) for c in base.classes) + " → " + \
        class_text(record.hardware_class)


def framework_change(old: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]]) -> str | None:
    """What differs between two runs' framework facts (builder.runtime: CUDA, cuDNN, NCCL,
    TF32, deterministic flags), in words; None when nothing does, or one side has none."""
    if not old or not new or list(old) == list(new):
        return None
    if len(old) != 1 or len(new) != 1:
        return f"{len(old)} → {len(new)} distinct sets of framework facts"
    a, b = old[0], new[0]
    return ", ".join(f"{k} {a.get(k)!r} → {b.get(k)!r}" for k in sorted(set(a) | set(b))
                     if a.get(k) != b.get(k))


def _tensor_diff(project: Project, runner: Runner, name: str, a: Path,
                 b: Path) -> dict[str, Any] | None:
    """Tensor by tensor, what differs between two files of one output (blobs in the store),
    read by the env's interpreter (built here when the run was made in an image)."""
    suffix = Path(name).suffix.lower()
    if suffix not in TENSOR_FORMATS or not a.is_file() or not b.is_file():
        return None
    venv = runner if isinstance(runner, VenvRunner) else VenvRunner(project)
    runtime, _ = runtime_dir(project.store)
    done = proc.run([str(venv.python()), "-m", "builder.tensordiff", str(a),
                     str(b), suffix], env=proc.clean_env({"PYTHONPATH": str(runtime)}),
                    check=False)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": f"the tensor comparison failed: {last[0]}"}
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _output_checks(project: Project, runner: Runner, base_run: BaselineRun,
                   record: RunRecord) -> list[Check]:
    recipe = project.recipe
    new = {o.path: o for o in record.outputs}
    tolerated = [n for n in recipe.reproducibility.nondeterminism if n.metric is None
                 and (n.tolerance.abs is not None or n.tolerance.rel is not None)]
    checks: list[Check] = []
    for out in base_run.outputs:
        got = new.get(out.path)
        if got is None:
            checks.append(OutputCheck(out.path, record.seed, out.digest, False,
                                      "missing from the re-run"))
            continue
        if got.digest == out.digest:
            checks.append(OutputCheck(out.path, record.seed, out.digest, True, "identical",
                                      got.digest))
            continue
        blobs = project.store.blobs
        try:
            diff = _tensor_diff(project, runner, out.path, blobs.checked_path(got.digest),
                                blobs.checked_path(out.digest))
        except StoreError:  # the baseline's file is not here (or failed its digest)
            diff = None
        ok, detail = False, "bytes differ"
        if diff is None:
            detail += " (not a tensor format, or the baseline's file is not in this store)"
        elif "error" in diff:
            detail += f" ({diff['error']})"
        elif "tensors" in diff:
            bad = [t for t in diff["tensors"] if not t.get("equal", False)]
            detail = f"{len(bad)} of {len(diff['tensors'])} tensors differ"
            if bad and all(_tolerated(t, tolerated) for t in bad):
                ok, detail = True, detail + ", within declared nondeterminism"
        checks.append(OutputCheck(out.path, record.seed, out.digest, ok, detail, got.digest,
                                  diff))
    return checks


def _tolerated(tensor: dict[str, Any], declared: Sequence[Any]) -> bool:
    """A differing tensor is accepted when a declared source of nondeterminism bounds it."""
    if "max_abs" not in tensor:
        return False  # missing, or another shape
    return any((n.tolerance.abs is not None and tensor["max_abs"] <= n.tolerance.abs)
               or (n.tolerance.rel is not None and tensor["max_rel"] <= n.tolerance.rel)
               for n in declared)


def _metric_checks(recipe: Recipe, base_values: Sequence[dict[str, Any]],
                   new_values: Sequence[dict[str, Any]]) -> list[Check]:
    repro_ = recipe.reproducibility
    checks: list[Check] = []
    for metric, tol in sorted(repro_.tolerance.items()):
        extra = [n.tolerance for n in repro_.nondeterminism if n.metric == metric]
        for values in [*new_values, *base_values]:
            if metric in values and (not isinstance(values[metric], int | float)
                                     or isinstance(values[metric], bool)):
                raise InputError(
                    f"{recipe.path}: reproducibility.tolerance.{metric}: the metric is "
                    f"{values[metric]!r}, not a number a tolerance can bound",
                    hint=f"log {metric} as a number")
        for values in new_values:
            if metric not in values:
                raise InputError(
                    f"{recipe.path}: reproducibility.tolerance.{metric}: the run does not "
                    f"produce a metric `{metric}` (it has: {', '.join(sorted(values)) or 'none'})",
                    hint="fix the metric name, or make the command log it")
        old = [b[metric] for b in base_values if metric in b]
        new = [v[metric] for v in new_values]
        if not old:
            raise InputError(f"the baseline has no metric `{metric}`",
                             hint="set the baseline again from a run that logs it")
        mean_old, mean_new = statistics.fmean(old), statistics.fmean(new)
        bound = _bound(mean_old, tol, extra)
        checks.append(MetricCheck(
            metric, MEAN_TEST, bound, mean_old, mean_new, abs(mean_new - mean_old),
            statistics.stdev(old) if len(old) > 1 else 0.0,
            statistics.stdev(new) if len(new) > 1 else 0.0, len(old), len(new),
            abs(mean_new - mean_old) <= bound))
    return checks


def _compare(project: Project, runner: Runner, base: Baseline, mine: Sequence[BaselineRun],
             compared: Sequence[BaselineRun], records: Sequence[RunRecord], *,
             other_class: bool) -> tuple[list[Cause], list[Check], list[str]]:
    """The causes, checks and notes of a verification: bytes (bitwise), metrics within the
    tolerances (statistical; bitwise on another hardware class, where the recipe declares
    tolerances), or the evaluation's metrics (functional)."""
    recipe = project.recipe
    standard = recipe.reproducibility.standard
    found = causes(base, mine, records[0], standard)
    checks: list[Check] = []
    notes = []
    if other_class and recipe.reproducibility.tolerance:
        # bits are promised only within a class: the recipe's tolerances say what is enough
        found = [c for c in found if c.kind != "hardware"]
        checks += _metric_checks(recipe, [b.metrics for b in compared],
                                 [r.metrics for r in records])
        notes.append("the hardware class differs, so the outputs were not compared byte for "
                     "byte: the recipe's tolerances were applied to its metrics")
    elif standard == "bitwise":
        by_seed = {b.seed: b for b in compared}
        for r in records:
            checks += _output_checks(project, runner, by_seed.get(r.seed, compared[0]), r)
    elif standard == "statistical":
        checks += _metric_checks(recipe, [b.metrics for b in compared],
                                 [r.metrics for r in records])
    else:
        evaluation = run.evaluate(project, runner, records[0].outputs)  # the re-run's
        checks += _metric_checks(recipe, [b.evaluation or {} for b in compared], [evaluation])
    framework = _framework_note(project, compared, records[0])
    if framework and (found or not all(c.ok for c in checks)):
        found.append(Cause("framework", framework))
    elif framework:
        notes.append(f"the framework's facts differ from the baseline's ({framework}), yet "
                     "the checks pass")
    return found, checks, notes


def _framework_note(project: Project, compared: Sequence[BaselineRun],
                    record: RunRecord) -> str | None:
    """How the re-run's framework facts differ from the baseline run's of its seed, when
    the store holds that record (a baseline file keeps only its digest)."""
    base_run = next((b for b in compared if b.seed == record.seed), None)
    if base_run is None or not project.store.blobs.has(base_run.record):
        return None
    try:
        old = project.store.records.get(base_run.record).framework
    except StoreError:
        return None
    return framework_change(old, record.framework)


def _unvouched(record: RunRecord) -> list[str]:
    """What the re-run could depend on that no identity covers: sources of drift to name."""
    notes = []
    if record.network:
        notes.append("the run could reach the network: what it fetched is in no identity, so "
                     "a change there is drift nothing here can name")
    if record.sandbox == "off":
        notes.append("the run was not sandboxed ([train] sandbox = false): it could read "
                     "project files the recipe does not declare")
    elif record.sandbox == "folder":
        notes.append("the run had only a folder sandbox (no bubblewrap): absolute paths "
                     "reached the machine")
    return notes


def _baseline(project: Project, against: str | None) -> tuple[Baseline, str]:
    recipe, records = project.recipe, project.store.records
    if against is None:
        base = baselines.load(recipe)
        if base.key_format != run.KEY_FORMAT:
            raise InputError(
                f"baseline format changed: {baselines.path_of(recipe)} was made with run keys "
                f"{base.key_format}, this repro makes {run.KEY_FORMAT}; regenerate it with "
                "`repro baseline set`",
                hint="run `repro run` (and `repro run --seed S` for each seed), then "
                     "`repro baseline set` and commit the baseline")
        return base, str(baselines.path_of(recipe).relative_to(recipe.root))
    found = records.find(against)
    if found is None:
        raise InputError(f"no run in {project.store.root} matches {against!r}",
                         hint="`repro runs` lists the recorded runs")
    return baselines.from_records(recipe, [(found, records.get(found))]), f"run {found}"


def verify(project: Project, runner: Runner, *, against: str | None = None,
           seeds: int | None = None, timings: dict[str, float] | None = None,
           note: str = "", seed: int | None = None,
           params: Sequence[str] = ()) -> Verification:
    """Re-run the recipe without the cache and compare it with its baseline (or a run).

    seed, params: re-run this seed with these `key=value` params (reproduce: the run's own,
        which `repro run --seed/--param` may have set apart from the recipe's).
    timings: wall seconds of phases before this one (reproduce's fetch), kept in the report
        beside the environment, training and comparison this measures.
    note: a line for the report about what it was compared with.

    Raises:
        InputError: no baseline, a baseline of another recipe or an older run-key format, a
            tolerance on a missing metric.
        RunFailed: the re-run itself failed.
    """
    from dataclasses import replace  # noqa: PLC0415

    from builder import hardware  # noqa: PLC0415

    recipe = project.recipe
    clock = time.perf_counter()
    phases = dict(timings or {})
    runner.prepare()  # the environment, timed apart from the training
    phases["environment"] = round(time.perf_counter() - clock, 3)
    base, source = _baseline(project, against)
    standard = recipe.reproducibility.standard
    klass = hardware.hardware_class(project.hardware) if standard == "bitwise" else None
    mine = base.for_class(klass) if standard == "bitwise" else list(base.runs)
    compared = mine or base.for_class(base.classes[0])
    if standard == "functional" and any(r.evaluation is None for r in compared):
        evaluated = []
        for entry in compared:  # evaluate the baseline's own outputs first
            if entry.evaluation is None:
                evaluated.append(replace(entry, evaluation=run.evaluate(project, runner,
                                                                         entry.outputs)))
            else:
                evaluated.append(entry)
        compared = evaluated
    train_seeds = list(run.train_of(recipe).seeds)
    if standard == "statistical":
        count = seeds or len(compared)
        # the recipe's seeds first, then the next integers: K seeds, always the same K
        to_run = (train_seeds + list(range(max(train_seeds) + 1,
                                           max(train_seeds) + 1 + count)))[:count]
    else:
        to_run = [seed] if seed is not None else train_seeds[:1]
    started = dt.datetime.now(dt.UTC)
    clock = time.perf_counter()
    results = []
    for one in to_run:
        log.info("Verifying %s: re-running seed %d without the cache", recipe.name, one)
        # a re-run leaves the project's working outputs alone: it is compared from the store
        results.append(run.run(project, runner, seed=one, params=params, use_cache=False,
                               place=False, answers=False))
    phases["training"] = round(time.perf_counter() - clock, 3)
    clock = time.perf_counter()
    records = [r.record for r in results]
    other_class = _class_change(base, records[0]) if standard == "bitwise" and not mine \
        else None
    found_causes, checks, notes = _compare(project, runner, base, mine, compared, records,
                                           other_class=other_class is not None)
    report = Verification(
        recipe=recipe.name,
        standard=standard,
        verdict="reproduced" if not found_causes and all(c.ok for c in checks) else "drifted",
        baseline=source,
        causes=tuple(found_causes),
        checks=tuple(checks),
        runs=tuple(VerifiedRun(r.seed, r.run_key, x.record_digest, r.duration)
                   for r, x in zip(records, results, strict=True)),
        nondeterminism=tuple({"source": n.source, "reason": n.reason, "metric": n.metric,
                              "abs": n.tolerance.abs, "rel": n.tolerance.rel}
                             for n in recipe.reproducibility.nondeterminism),
        duration=round(sum(r.duration for r in records), 3),
        baseline_duration=round(sum(b.duration for b in compared), 3),
        started=started.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        notes=(*([note] if note else []), *notes, *_unvouched(records[0])),
        timings={**phases, "comparison": round(time.perf_counter() - clock, 3)},
        target=recipe.reproducibility.target,
        hardware=other_class,
    )
    project.store.verifications.add(report)
    return report
