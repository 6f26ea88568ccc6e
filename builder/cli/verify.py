"""`repro baseline | verify | reproduce | diff | history`: is the model still the model?"""

from __future__ import annotations

from typing import Any

import click

from builder import errors
from builder.cli.shell import (
    _common,
    _emit,
    _Group,
    _project,
    _remote_flags,
    _sources,
    _store,
    _with_remote,
    cli,
)


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
@click.option("--strict", is_flag=True,
              help="Exit 1 when the time to reproduce is over the recipe's target.")
def verify_cmd(recipe: str | None, machine: Any, offline: bool, target: str | None,
               against: str | None, seeds: int | None, report_file: str | None,
               strict: bool) -> None:
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
        _write_report(Path(report_file), result, project.store)
    _emit(result.to_json(), report.text(result))
    _exit(result, strict)


def _write_report(path: Any, result: Any, store: Any) -> None:
    """The Markdown report, with the history chart beside it (FILE.svg) and embedded."""
    from builder import report  # noqa: PLC0415

    history = store.verifications.of(result.recipe)
    plot = path.with_suffix(".svg")
    if plot == path:
        plot = path.with_name(path.name + ".history.svg")
    plot.write_text(report.history_svg(result.recipe, history,
                                       [_metrics(store, h) for h in history]))
    path.write_text(report.markdown(result, history, plot=plot.name))


def _metrics(store: Any, verification: Any) -> dict[str, float]:
    """The mean of each numeric metric over a verification's re-runs (records since
    removed count as none)."""
    from builder.errors import StoreError  # noqa: PLC0415

    values: dict[str, list[float]] = {}
    for run in verification.runs:
        try:
            metrics = store.records.get(run.record).metrics
        except StoreError:
            continue
        for name, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                values.setdefault(name, []).append(float(value))
    return {name: sum(v) / len(v) for name, v in values.items()}


def _exit(result: Any, strict: bool) -> None:
    """Exit 1 on a drift, and with --strict on a time to reproduce over the target."""
    if not result.reproduced or (strict and result.over_target):
        raise click.exceptions.Exit(errors.EXIT_CHECK)


@cli.command("reproduce")
@_common
@_sources
@click.argument("target")
@click.option("-o", "--output", "folder", type=click.Path(file_okay=False), metavar="DIR",
              help="Where to re-make the project (new or empty) [default: a new temp folder, "
                   "kept and printed].")
@click.option("--in", "where", type=click.Choice(["venv", "image"]), default="venv",
              show_default=True, help="Re-train in the env's virtualenv, or inside the run's "
                                      "OCI image (its package layers from the remote).")
@click.option("--data", "data", multiple=True, metavar="NAME=PATH",
              help="A copy of a data input the remote does not hold (pushed with --no-data); "
                   "checked against the run's digest. Repeatable.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False),
              help="Also write a Markdown report to this file.")
@click.option("--strict", is_flag=True,
              help="Exit 1 when the time to reproduce is over the recipe's target.")
@_remote_flags
def reproduce_cmd(recipe: str | None, machine: Any, offline: bool, target: str,
                  folder: str | None, where: str, data: tuple[str, ...],
                  report_file: str | None, strict: bool, remote: Any) -> None:
    """Re-make the run that made TARGET in a fresh folder, and compare.

    TARGET is a model file, an output digest (blake3:… or sha256:…), a run key or a record
    digest. The run is found in the store, then on the remote; its record, code snapshot,
    lock, baseline and data are fetched (each checked), the environment is built from the
    lock, and the command re-trains without the cache. Works in an empty folder with an
    empty store. Exit 0 reproduced, 1 drifted or nothing matches TARGET, 3 a fetch, build or
    re-run failed (naming what was missing).
    """
    from pathlib import Path  # noqa: PLC0415

    from builder import report  # noqa: PLC0415
    from builder.reproduce import reproduce  # noqa: PLC0415

    if folder == "":
        raise click.BadParameter("is empty; leave -o out for a new temp folder",
                                 param_hint="-o")
    supplied = {}
    for item in data:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{item!r} is not NAME=PATH", param_hint="--data")
        supplied[name] = Path(path).resolve()
    if report_file and not Path(report_file).resolve().parent.is_dir():  # before fetching
        raise click.BadParameter(f"{Path(report_file).resolve().parent} does not exist",
                                 param_hint="--report")
    store = _store()
    done = reproduce(target, store=store, remote=_with_remote(None, remote, store),
                     folder=Path(folder) if folder else None, machine=machine,
                     offline=offline, where=where, supplied=supplied)
    result = done.report
    if report_file:
        _write_report(Path(report_file), result, store)
    r = done.found.record
    lines = [f"{result.verdict}: run {r.run_key} of {r.recipe.name} ({result.standard}), found "
             + ("in the store" if done.found.where == "local" else f"on {done.found.where}"),
             f"  folder   {done.folder}"]
    lines += [f"  output   {o['path']}  {o['expected']}  "
              + ("identical" if o["identical"] else f"re-made as {o['remade']}")
              for o in done.outputs()]
    lines += ["", report.text(result)]
    _emit(done.to_json(), "\n".join(lines))
    _exit(result, strict)


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
@click.option("--plot", type=click.Path(dir_okay=False), metavar="FILE.svg",
              help="Also draw verdicts, times to reproduce and metrics over time as SVG.")
def history_cmd(recipe: str | None, plot: str | None) -> None:
    """Verdicts and times to reproduce of the recipe's verifications, oldest first."""
    from pathlib import Path  # noqa: PLC0415

    from builder.report import history_svg, phases, sparkline  # noqa: PLC0415

    r = _project(recipe).recipe
    store = _store()
    rows = store.verifications.of(r.name)
    if plot:
        if not Path(plot).resolve().parent.is_dir():
            raise click.BadParameter(f"{Path(plot).resolve().parent} does not exist",
                                     param_hint="--plot")
        Path(plot).write_text(history_svg(r.name, rows, [_metrics(store, h) for h in rows]))
    lines = [f"{h.started}  {h.verdict:<10} {h.total:8.2f}s"
             + (" over target" if h.over_target else "")
             + (f"  ({phases(h)})" if h.timings else "") + "  "
             + "; ".join(f"{c.kind}: {c.detail}" for c in h.causes) for h in rows]
    if rows:
        lines.append(f"time to reproduce: {sparkline([h.total for h in rows])}  "
                     f"(oldest {rows[0].total:.2f}s, latest {rows[-1].total:.2f}s"
                     + (f", target {r.reproducibility.target:g}s"
                        if r.reproducibility.target is not None else "") + ")")
    _emit({"recipe": r.name, "verifications": [h.to_json() for h in rows]},
          "\n".join(lines) or f"{r.name} has not been verified yet")


