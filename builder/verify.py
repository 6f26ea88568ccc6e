"""`repro verify`: re-run a recipe without the cache, compare with its baseline, explain drift."""

from __future__ import annotations

import datetime as dt
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from builder import baseline as baselines
from builder import env, proc, run
from builder.errors import InputError
from builder.recipe import Recipe, Tolerance
from builder.resolve import NO_MACHINE_SOURCES, MachineSources
from builder.store import Store

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


def causes(base: dict[str, Any], record: dict[str, Any], standard: str) -> list[dict[str, str]]:
    """Which identities of the re-run differ from the baseline's: env, code, data, params,
    seed (bitwise and functional), hardware (bitwise)."""
    found = []
    if record["env"] != base["env"]:
        changes = _package_changes(base["packages"], record["software"]["packages"])
        found.append({"kind": "env", "detail": "packages: " + ", ".join(changes) if changes
                      else f"env id {base['env'][:19]}… → {record['env'][:19]}…"})
    if record["code"]["digest"] != base["code"]:
        found.append({"kind": "code", "detail": f"code digest {base['code'][:19]}… → "
                      f"{record['code']['digest'][:19]}… (commit {record['code']['commit']}"
                      f"{', dirty' if record['code']['dirty'] else ''})"})
    data = {k: v["digest"] for k, v in record["data"].items()}
    for name in sorted(set(data) | set(base["data"])):
        if data.get(name) != base["data"].get(name):
            found.append({"kind": "data", "detail": f"data.{name} changed"})
    if record["params"] != base["params"]:
        moved = sorted(k for k in set(record["params"]) | set(base["params"])
                       if record["params"].get(k) != base["params"].get(k))
        found.append({"kind": "params", "detail": ", ".join(
            f"{k}: {base['params'].get(k)!r} → {record['params'].get(k)!r}" for k in moved)})
    base_seeds = [r["seed"] for r in base["runs"]]
    if standard != "statistical" and record["seed"] not in base_seeds:
        found.append({"kind": "seed", "detail": f"seed {base_seeds[0]} → {record['seed']}"})
    if standard == "bitwise" and record["hardware_class"] != base["hardware_class"]:
        found.append({"kind": "hardware", "detail": f"{base['hardware_class']} → "
                                                    f"{record['hardware_class']}"})
    return found


def _tensor_diff(recipe: Recipe, store: Store, built: env.BuildResult, a: Path,
                 b: Path) -> dict[str, Any] | None:
    if a.suffix.lower() not in TENSOR_FORMATS or not a.is_file() or not b.is_file():
        return None
    runtime, _ = run.runtime_dir(store)
    done = proc.run([str(built.path / "bin" / "python"), "-m", "builder.tensordiff", str(a),
                     str(b), a.suffix], env=proc.clean_env({"PYTHONPATH": str(runtime)}),
                    check=False)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": f"the tensor comparison failed: {last[0]}"}
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _output_checks(recipe: Recipe, store: Store, built: env.BuildResult,
                   base_run: dict[str, Any], record: dict[str, Any]) -> list[dict[str, Any]]:
    new = {o["path"]: o for o in record["outputs"]}
    tolerated = [n for n in recipe.reproducibility.nondeterminism if n.metric is None
                 and (n.tolerance.abs is not None or n.tolerance.rel is not None)]
    checks = []
    for out in base_run["outputs"]:
        check: dict[str, Any] = {"kind": "output", "name": out["path"], "seed": record["seed"],
                                 "baseline": out["digest"]}
        got = new.get(out["path"])
        if got is None:
            checks.append({**check, "ok": False, "detail": "missing from the re-run"})
            continue
        check["reproduced"] = got["digest"]
        if got["digest"] == out["digest"]:
            checks.append({**check, "ok": True, "detail": "identical"})
            continue
        base_obj = store.object_path(out["digest"])
        diff = _tensor_diff(recipe, store, built, recipe.root / out["path"], base_obj)
        check["tensors"] = diff
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
        checks.append({**check, "ok": ok, "detail": detail})
    return checks


def _tolerated(tensor: dict[str, Any], declared: Sequence[Any]) -> bool:
    """A differing tensor is accepted when a declared source of nondeterminism bounds it."""
    if "max_abs" not in tensor:
        return False  # missing, or another shape
    return any((n.tolerance.abs is not None and tensor["max_abs"] <= n.tolerance.abs)
               or (n.tolerance.rel is not None and tensor["max_rel"] <= n.tolerance.rel)
               for n in declared)


def _metric_checks(recipe: Recipe, base: dict[str, Any], records: list[dict[str, Any]],
                   key: str = "metrics") -> list[dict[str, Any]]:
    repro_ = recipe.reproducibility
    checks = []
    for metric, tol in sorted(repro_.tolerance.items()):
        extra = [n.tolerance for n in repro_.nondeterminism if n.metric == metric]
        for r in records:
            if metric not in r[key]:
                raise InputError(
                    f"{recipe.path}: reproducibility.tolerance.{metric}: the run does not "
                    f"produce a metric `{metric}` (it has: {', '.join(sorted(r[key])) or 'none'})",
                    hint="fix the metric name, or make the command log it")
        old = [b[key][metric] for b in base["runs"] if metric in b[key]]
        new = [r[key][metric] for r in records]
        if not old:
            raise InputError(f"the baseline has no metric `{metric}`",
                             hint="set the baseline again from a run that logs it")
        mean_old, mean_new = statistics.fmean(old), statistics.fmean(new)
        bound = _bound(mean_old, tol, extra)
        checks.append({
            "kind": "metric", "name": metric,
            "test": MEAN_TEST,
            "threshold": bound, "baseline_mean": mean_old, "mean": mean_new,
            "difference": abs(mean_new - mean_old),
            "baseline_spread": statistics.stdev(old) if len(old) > 1 else 0.0,
            "spread": statistics.stdev(new) if len(new) > 1 else 0.0,
            "n_baseline": len(old), "n": len(new),
            "ok": abs(mean_new - mean_old) <= bound,
        })
    return checks


def verify(
    recipe: Recipe, *, store: Store, against: str | None = None, seeds: int | None = None,
    mode: str = "auto", machine: MachineSources = NO_MACHINE_SOURCES, offline: bool = False,
    say: Callable[[str], None] = env.noop,
) -> dict[str, Any]:
    """Re-run the recipe without the cache and compare it with its baseline (or a run).

    Returns the report; its `verdict` is `reproduced` or `drifted`.

    Raises:
        InputError: no baseline, a baseline of another recipe, a tolerance on a missing metric.
        RunFailed: the re-run itself failed.
    """
    if against is not None:
        found = store.find_record(against)
        if found is None:
            raise InputError(f"no run in {store.root} matches {against!r}",
                             hint="`repro runs` lists the recorded runs")
        base = baselines.from_records(recipe, [(found, store.record(found))])
        source = f"run {found}"
    else:
        base = baselines.load(recipe)
        source = str(baselines.path_of(recipe).relative_to(recipe.root))
    standard = recipe.reproducibility.standard
    if standard == "functional" and any("evaluation" not in e for e in base["runs"]):
        built = env.build(recipe, store=store, mode=mode, machine=machine, offline=offline)
        for entry in base["runs"]:  # evaluate the baseline's own outputs first
            run.restore_outputs(recipe, store, entry)
            entry["evaluation"] = run.evaluate(recipe, store, built, say)
    train_seeds = list(run.train_of(recipe).seeds)
    if standard == "statistical":
        count = seeds or len(base["runs"])
        # the recipe's seeds first, then the next integers: K seeds, always the same K
        to_run = (train_seeds + list(range(max(train_seeds) + 1,
                                           max(train_seeds) + 1 + count)))[:count]
    else:
        to_run = train_seeds[:1]
    started = dt.datetime.now(dt.UTC)
    results = []
    for seed in to_run:
        say(f"Verifying {recipe.name}: re-running seed {seed} without the cache")
        results.append(run.run(recipe, store=store, mode=mode, machine=machine, offline=offline,
                               seed=seed, use_cache=False, say=say))
    records = [r.record for r in results]
    built = env.build(recipe, store=store, mode="frozen", machine=machine, offline=offline)
    found_causes = causes(base, records[0], standard)
    checks: list[dict[str, Any]] = []
    if standard == "bitwise":
        by_seed = {b["seed"]: b for b in base["runs"]}
        for r in records:
            checks += _output_checks(recipe, store, built, by_seed.get(r["seed"], base["runs"][0]),
                                     r)
    elif standard == "statistical":
        checks += _metric_checks(recipe, base, records)
    else:
        evaluated = [{"evaluation": run.evaluate(recipe, store, built, say)}]  # on the re-run
        checks += _metric_checks(recipe, base, evaluated, key="evaluation")
    duration = sum(r["duration"] for r in records)
    report = {
        "schema": "repro.verify/v1",
        "recipe": recipe.name,
        "standard": standard,
        "verdict": "reproduced" if not found_causes and all(c["ok"] for c in checks)
        else "drifted",
        "baseline": source,
        "causes": found_causes,
        "checks": checks,
        "runs": [{"seed": r["seed"], "run_key": r["run_key"], "record": x.record_digest,
                  "duration": r["duration"]} for r, x in zip(records, results, strict=True)],
        "nondeterminism": [{"source": n.source, "reason": n.reason, "metric": n.metric,
                            "abs": n.tolerance.abs, "rel": n.tolerance.rel}
                           for n in recipe.reproducibility.nondeterminism],
        "duration": round(duration, 3),
        "baseline_duration": round(sum(b["duration"] for b in base["runs"]), 3),
        "started": started.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }
    store.add_verification(recipe.name, report)
    return report
