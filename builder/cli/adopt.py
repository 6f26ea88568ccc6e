"""`repro audit | init`: bring an existing training project to repro."""

from __future__ import annotations

from typing import Any

import click

from builder.cli.shell import _common, _emit, _sources, cli


@cli.command("audit")
@click.argument("path", required=False, type=click.Path(file_okay=False, exists=True),
                default=".")
@click.option("--fail-on", type=click.Choice(["low", "medium", "high"]), default="high",
              show_default=True, help="Exit 1 when a finding at or above this exists.")
@click.option("--stale-after", type=click.FloatRange(min=0), default=30, show_default=True,
              metavar="DAYS", help="A verification older than this is a finding.")
@_common
def audit_cmd(recipe: str | None, path: str, fail_on: str, stale_after: float) -> None:
    """Find what would stop PATH's model from being re-made: unlocked dependencies, unseeded
    randomness, undeclared data, hard-coded params, outputs that vary per run, no baseline.
    Each finding has a severity, the file and line, and the fix."""
    from pathlib import Path  # noqa: PLC0415

    from builder.audit import SEVERITIES, audit, failing  # noqa: PLC0415

    if recipe and path == ".":  # -r names the project too
        path = str(Path(recipe).parent if Path(recipe).is_file() else Path(recipe))
    found = audit(Path(path), stale_after=stale_after)
    bad = failing(found, fail_on)
    counts = {s: sum(f.severity == s for f in found) for s in SEVERITIES}
    rows = [f"{f.severity:<6}  {f.file + (f':{f.line}' if f.line else '') or '(project)':<28} "
            f"{f.message}\n        fix: {f.fix}" for f in found]
    summary = (f"{len(found)} finding(s): {counts['high']} high, {counts['medium']} medium, "
               f"{counts['low']} low" + (f"; {len(bad)} at or above {fail_on}" if bad else ""))
    _emit({"path": str(Path(path).resolve()), "findings": [f.to_json() for f in found],
           "counts": counts, "fail_on": fail_on, "failed": bool(bad)},
          "\n".join([*rows, summary]) if found else "no findings")
    if bad:
        raise click.exceptions.Exit(1)


@cli.command("init")
@click.argument("path", required=False, type=click.Path(file_okay=False, exists=True),
                default=".")
@click.option("--force", is_flag=True, help="Replace a repro.toml that is there.")
@_common
@_sources
def init_cmd(recipe: str | None, machine: Any, offline: bool, path: str, force: bool) -> None:
    """Write a repro.toml for the project at PATH from its requirements and its training
    script's flags (seed, data, params) and saves (outputs), commented where you decide.
    --find-links: a wheel folder whose torch version pins an unpinned torch."""
    from pathlib import Path  # noqa: PLC0415

    from builder.init import init  # noqa: PLC0415

    if recipe:
        raise click.UsageError("repro init writes PATH/repro.toml: give the project's folder "
                               "as PATH, not -r")
    del offline  # it reads no index
    written = init(Path(path), force=force, find_links=machine.find_links)
    lines = [f"wrote {written.path} (entry {written.entry}, "
             f"{len(written.dependencies)} dependencies, {len(written.data)} data inputs, "
             f"{len(written.params)} params, outputs: {', '.join(written.outputs) or 'none'})"]
    lines += [f"  decide: {n}" for n in written.notes]
    lines.append("  next: repro lock && repro run   (repro audit checks the project)")
    _emit(written.to_json(), "\n".join(lines))
