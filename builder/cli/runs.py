"""`repro run | lookup | runs | show | export`: training runs and what they made."""

from __future__ import annotations

import json
from typing import Any

import click

from builder import errors
from builder.cli.shell import (
    OUT,
    _common,
    _emit,
    _Group,
    _mode,
    _project,
    _remote_flags,
    _runner,
    _sources,
    _store,
    _with_remote,
    cli,
    echo,
)


@cli.command("run")
@_common
@_sources
@click.option("--locked", is_flag=True, help="Fail if the lock is out of date.")
@click.option("--frozen", is_flag=True, help="Use the lock without checking it.")
@click.option("--seed", type=click.IntRange(min=0), help="Override the recipe's seed.")
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Override a declared param (repeatable).")
@click.option("--no-cache", is_flag=True, help="Train even if this run key is in the store.")
@click.option("--keep-sandbox", is_flag=True,
              help="Keep the run's private folder (what the command wrote besides its "
                   "outputs) and print where it is.")
@click.option("--in", "where", type=click.Choice(["venv", "image", "nix"]), default="venv",
              show_default=True, help="Run in the env's virtualenv, inside its OCI image "
                                      "(through buildah; the image digest joins the run key), "
                                      "or in the lock built by Nix (`build --backend nix`).")
@click.option("--push", "push", is_flag=True,
              help="Push the run (trained or found) to the remote cache.")
@click.option("--no-data", is_flag=True, help="With --push: keep the data inputs off the "
                                              "remote.")
@_remote_flags
def run_cmd(recipe: str | None, machine: Any, offline: bool, locked: bool, frozen: bool,
            seed: int | None, params: tuple[str, ...], no_cache: bool, keep_sandbox: bool,
            where: str, push: bool, no_data: bool, remote: Any) -> None:
    """Train the recipe, or answer from the store (then the remote cache) if this exact run
    already succeeded.

    The run key covers the env id, code and data digests, command, params, seed, and the
    hardware class when the recipe's standard is bitwise.
    """
    from builder.run import run  # noqa: PLC0415

    project = _project(recipe, _mode(locked, frozen), offline=offline, machine=machine)
    cache = _with_remote(project, remote)
    if push and cache is None:
        raise click.UsageError("--push needs a remote: --remote HOST/PATH, REPRO_REMOTE, or "
                               "[remote] url in a config")
    result = run(project, _runner(where, project), seed=seed, params=params,
                 use_cache=not no_cache, keep_sandbox=keep_sandbox)
    r = result.record
    shared = None
    if cache is not None and (push or cache.settings.push) and result.source != "remote":
        shared = cache.safely("the run was not pushed", lambda: cache.push_run(
            result.record_digest, r, project, data=not no_data), None)
    lines = [f"{result.source}: run key {r.run_key}",
             f"  record   {result.record_digest}",
             f"  seed {r.seed}, params {json.dumps(r.params, sort_keys=True)}, "
             f"{r.duration:.2f}s" + (" (when it was trained)" if result.cached else "")]
    lines += [f"  metric   {k} = {v}" for k, v in sorted(r.metrics.items())]
    lines += [f"  output   {o.path}  {o.digest}  -> {result.objects.get(o.path)}"
              for o in r.outputs]
    if shared is not None:
        lines.append(f"  pushed   {shared.blobs} blobs ({shared.bytes} bytes) to {cache.url}")
    elif push and cache is not None and result.source != "remote":
        click.echo(f"warning: the run was not pushed: the remote {cache.url} failed "
                   f"({cache.failed or 'see above'}); push it later with `repro push "
                   f"{r.run_key[7:19]} --remote {cache.url}`", err=True)
    _emit({**result.to_json(), **({"pushed": shared.to_json()} if shared else {})},
          "\n".join(lines))


@cli.command("lookup")
@_common
@click.argument("target", required=False)
@_remote_flags
def lookup_cmd(recipe: str | None, target: str | None, remote: Any) -> None:
    """Find runs by TARGET: a file (which run made it?), a recipe (is it already trained?),
    or a run key; in the store, then the remote cache. Default: the current recipe. Exit 0
    when found, 1 when not."""
    from builder.lookup import lookup  # noqa: PLC0415

    store = _store()
    found = lookup(target, store=store, recipe_hint=recipe,
                   remote=_with_remote(None, remote, store))
    if found.image:
        _emit(found.to_json(), f"image {found.digest}\n" + "\n".join(
            f"  {k:<14} {v}" for k, v in sorted(found.image.items())))
        return
    if not found.found:
        _emit(found.to_json(), f"not found: no recorded run matches {found.kind} "
                               f"{found.target} ({found.digest or 'no such key'})")
        raise click.exceptions.Exit(errors.EXIT_CHECK)
    lines = [f"{found.kind} {found.target} ({found.digest})"]
    lines += _run_lines(found.runs)
    _emit(found.to_json(), "\n".join(lines))


def _run_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in rows:
        metrics = ", ".join(f"{k}={v}" for k, v in sorted(row["metrics"].items()))
        lines.append(f"{row['status']:<9} {row['started'][:19]}  key {row['run_key'][7:19]}  "
                     f"record {row['record'][7:19]}  seed {row['seed']}  "
                     f"{row['duration']:.2f}s  {metrics}")
        if row["status"] == "succeeded" and not row["answers"]:
            lines.append("          not served: " + (
                f"a re-run (verify or reproduce); record {row['answered_by'][7:19]} answers "
                "its key" if row["answered_by"] else "nothing answers its key (its env was "
                                                     "found tampered)"))
        lines += [f"          {o['path']} -> {o['object']}" for o in row["outputs"]]
    return lines


@cli.command("runs")
@_common
def runs_cmd(recipe: str | None) -> None:
    """List the recorded runs of the recipe (failed ones too), oldest first."""
    from builder.lookup import runs_of  # noqa: PLC0415

    r = _project(recipe).recipe
    rows = runs_of(r, store=_store())
    _emit({"recipe": r.name, "runs": rows},
          "\n".join(_run_lines(rows)) or f"no recorded runs of {r.name}")


@cli.command("show")
@_common
@click.argument("run", required=False)
def show_cmd(recipe: str | None, run: str | None) -> None:
    """Print a run record (RUN: a run key or record digest; default: the latest run)."""
    from builder.lookup import describe, show  # noqa: PLC0415

    digest, record = show(run, store=_store(), recipe_hint=recipe)
    if OUT.json:
        _emit({"record": digest, **record.to_json()}, "")
        return
    _emit({}, describe(digest, record))


@cli.command("runbook")
@_common
@_sources
@click.argument("target", required=False, metavar="[RECIPE|RUN]")
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write it to FILE (`-` or none: stdout).")
def runbook_cmd(recipe: str | None, machine: Any, offline: bool, target: str | None,
                output: str | None) -> None:
    """Write a Markdown runbook that takes a person on a fresh machine to a recorded model:
    prerequisites, the commands (fenced sh blocks that run as written, in order), and the env
    id, run key and output digests each step should give. TARGET: a recipe file or folder
    (its latest run), or a run key or record digest (of the recipe given with -r, or here).
    --find-links: the wheel folder the commands name."""
    from pathlib import Path  # noqa: PLC0415

    from builder.lookup import show  # noqa: PLC0415
    from builder.runbook import render  # noqa: PLC0415

    if target is not None and Path(target).exists():
        recipe, target = target, None
    output = None if output == "-" else output
    project = _project(recipe, "locked", offline=offline, machine=machine)
    if output and not Path(output).resolve().parent.is_dir():  # before anything is read
        raise click.BadParameter(f"{Path(output).resolve().parent} does not exist",
                                 param_hint="-o")
    digest, record = show(target, store=project.store, recipe_hint=str(project.recipe.path))
    text = render(project, digest, record, machine)
    if output:
        Path(output).write_text(text)
    _emit({"record": digest, "run_key": record.run_key, **({"output": output} if output
                                                            else {"runbook": text})},
          f"wrote {output}" if output else text.rstrip("\n"))


@cli.group("export", cls=_Group)
def export() -> None:
    """Export a run as provenance, or the image as a Dockerfile."""


@export.command("provenance")
@_common
@click.argument("run", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to a file.")
def export_provenance(recipe: str | None, run: str | None, output: str | None) -> None:
    """Write a run as an in-toto Statement with a SLSA provenance v1 predicate."""
    from builder.lookup import show  # noqa: PLC0415
    from builder.provenance import statement  # noqa: PLC0415

    store = _store()
    digest, record = show(run, store=store, recipe_hint=recipe)
    text = json.dumps(statement(store, digest, record), indent=2, sort_keys=True)
    if output:
        from pathlib import Path  # noqa: PLC0415

        Path(output).write_text(text + "\n")
        _emit({"record": digest, "output": output}, f"wrote {output}")
    elif OUT.json:
        echo(json.dumps(statement(store, digest, record), sort_keys=True))
    else:
        echo(text)


@export.command("nix")
@_common
@click.option("-o", "--output", type=click.Path(file_okay=False), metavar="DIR",
              help="Where to write it [default: nix/ beside the recipe].")
def export_nix(recipe: str | None, output: str | None) -> None:
    """Write the lock as data for Nix (lock.json: every wheel's URL and sha256) with the
    expression that builds it (default.nix) and its builder; `nix-build DIR --option sandbox
    false` builds the environment by hand (the comment in default.nix says more)."""
    import shlex  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from builder.nix import export as write  # noqa: PLC0415

    project = _project(recipe, "locked")
    folder = Path(output).resolve() if output else project.recipe.root / "nix"
    written = write(project, folder)
    _emit({"folder": str(folder), "files": [str(p) for p in written]},
          f"wrote {folder}: {', '.join(p.name for p in written)}\n"
          f"  build it: nix-build {shlex.quote(str(folder))} --option sandbox false")


@export.command("dockerfile")
@_common
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="FILE",
              help="Where to write it [default: Dockerfile beside the recipe].")
def export_dockerfile(recipe: str | None, output: str | None) -> None:
    """Write a Dockerfile equivalent to `repro build --image`: base by digest, every package
    pinned by sha256. Build it from the recipe's folder."""
    from pathlib import Path  # noqa: PLC0415

    from builder.image.dockerfile import export as write  # noqa: PLC0415

    dockerfile, requirements = write(_project(recipe, "locked"),
                                     Path(output).resolve() if output else None)
    _emit({"dockerfile": str(dockerfile), "requirements": str(requirements)},
          f"wrote {dockerfile} and {requirements}")


