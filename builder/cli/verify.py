"""`repro baseline | verify | diff | history`: is the model still the model?"""

from __future__ import annotations

from typing import Any

import click

from builder import errors
from builder.cli.shell import _common, _emit, _Group, _project, _sources, _store, cli


@cli.group("baseline", cls=_Group)
def baseline() -> None:
    """The recipe's baseline: its last known good run(s), committed next to its lock."""


@baseline.command("set")
@_common
@click.argument("runs", nargs=-1)
def baseline_set(recipe: str | None, runs: tuple[str, ...]) -> None:
    """Mark RUNS (default: the latest run of each of the recipe's seeds) as the baseline,
    in lockfiles/<name>/baseline.json."""
    from builder.baseline import set_baseline  # noqa: PLC0415
    from builder.runner import VenvRunner  # noqa: PLC0415

    project = _project(recipe, "locked")
    path, base = set_baseline(project, VenvRunner(project), runs)
    _emit({"baseline": str(path), **base.to_json()},
          f"baseline of {base.recipe}: {len(base.runs)} run(s) -> {path}")


@cli.command("verify")
@_common
@_sources
@click.argument("target", required=False)
@click.option("--against", metavar="RUN", help="Compare with this run, not the baseline.")
@click.option("--seeds", type=click.IntRange(min=1), help="Runs to compare (statistical).")
@click.option("--report", "report_file", type=click.Path(dir_okay=False),
              help="Also write a Markdown report to this file.")
def verify_cmd(recipe: str | None, machine: Any, offline: bool, target: str | None,
               against: str | None, seeds: int | None, report_file: str | None) -> None:
    """Re-run the recipe without the cache and compare with its baseline.

    TARGET is a recipe (file or folder) or a run to compare with (like --against).
    Exit 0 reproduced, 1 drifted, 3 the re-run failed.
    """
    from pathlib import Path  # noqa: PLC0415

    from builder import report  # noqa: PLC0415
    from builder.verify import verify  # noqa: PLC0415

    if target and (Path(target).exists() or target.endswith(".toml")):
        recipe = target
    elif target:
        against = against or target
    from builder.runner import VenvRunner  # noqa: PLC0415

    project = _project(recipe, offline=offline, machine=machine)
    if report_file and not Path(report_file).resolve().parent.is_dir():  # before training
        raise click.BadParameter(f"{Path(report_file).resolve().parent} does not exist",
                                 param_hint="--report")
    result = verify(project, VenvRunner(project), against=against, seeds=seeds)
    if report_file:
        Path(report_file).write_text(report.markdown(
            result, project.store.verifications.of(project.recipe.name)))
    _emit(result.to_json(), report.text(result))
    if not result.reproduced:
        raise click.exceptions.Exit(errors.EXIT_CHECK)


@cli.command("diff")
@_common
@click.argument("a")
@click.argument("b")
def diff_cmd(recipe: str | None, a: str, b: str) -> None:
    """What differs between two runs, locks or environments (packages, code, data, params,
    seed, hardware, outputs, metrics)."""
    from builder.diff import diff, render  # noqa: PLC0415

    result = diff(a, b, store=_store())
    _emit(result, render(result))


@cli.command("history")
@_common
def history_cmd(recipe: str | None) -> None:
    """Verdicts and times to reproduce of the recipe's verifications, oldest first."""
    from builder.report import sparkline  # noqa: PLC0415

    r = _project(recipe).recipe
    rows = _store().verifications.of(r.name)
    lines = [f"{h.started}  {h.verdict:<10} {h.duration:8.2f}s  "
             + "; ".join(f"{c.kind}: {c.detail}" for c in h.causes) for h in rows]
    if rows:
        lines.append(f"time to reproduce: {sparkline([h.duration for h in rows])}")
    _emit({"recipe": r.name, "verifications": [h.to_json() for h in rows]},
          "\n".join(lines) or f"{r.name} has not been verified yet")


