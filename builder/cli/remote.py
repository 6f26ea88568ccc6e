"""`repro push | pull | remote | key`: the remote cache, and the keys that sign what it holds."""

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
    _store,
    _with_remote,
    cli,
)


def _required(remote: Any) -> Any:
    if remote is None:
        raise click.UsageError("no remote: give --remote HOST/PATH, set REPRO_REMOTE, or "
                               "[remote] url in .repro/config.toml or your config")
    return remote


def _moved_line(verb: str, moved: Any, url: str) -> str:
    return (f"{verb} {moved.blobs} blobs ({moved.bytes} bytes); {moved.skipped} already "
            f"there; {url}: {', '.join(moved.tags) or 'no tags'}")


@cli.command("push")
@_common
@click.argument("target", required=False)
@click.option("--env", "env", is_flag=True, help="Push the recipe's environment (its package "
                                                 "layers, built here first if needed).")
@click.option("--all", "every", is_flag=True, help="Push every successful run of the recipe, "
                                                   "and its environment.")
@click.option("--no-data", is_flag=True, help="Keep the data inputs off the remote.")
@_remote_flags
def push_cmd(recipe: str | None, target: str | None, env: bool, every: bool, no_data: bool,
             remote: Any) -> None:
    """Push a run (TARGET: a run key or record digest; default: the recipe's latest run the
    store serves, never a verify or reproduce re-run) to
    the remote cache, signed with --sign-key: its record, outputs, data, recipe, lock and
    code, then its tags; or the recipe's environment (--env, or TARGET its env id). Exit 3
    when the remote fails."""
    from builder.errors import InputError  # noqa: PLC0415
    from builder.lookup import runs_of, show  # noqa: PLC0415
    from builder.remote import Moved  # noqa: PLC0415

    project = _project(recipe, "locked")
    cache = _required(_with_remote(project, remote))
    store = project.store
    if cache.signer is None:
        click.echo(f"warning: nothing is signed (no --sign-key): only stores that trust "
                   f"{cache.url} itself will use what is pushed", err=True)
    total = Moved()
    if every:
        targets = [row["record"] for row in runs_of(project.recipe, store=store)
                   if row["answers"]]
    elif env or (target and target.removeprefix("blake3:") ==
                 project.lock.env_id.removeprefix("blake3:")):
        targets, env = [], True
    elif target is None:  # the latest run the store serves, never a verification's re-run
        rows = [row for row in runs_of(project.recipe, store=store) if row["answers"]]
        if not rows:
            raise InputError(f"{project.recipe.name} has no successful run to push",
                             hint="run `repro run` first")
        targets = [rows[-1]["record"]]
    else:
        targets = [show(target, store=store, recipe_hint=recipe)[0]]
    for digest in targets:
        record = store.records.get(digest)
        moved = cache.push_run(digest, record, project, data=not no_data)
        total.add(moved)
    if env or every:
        total.add(cache.push_env(project))
    _emit({"remote": cache.url, **total.to_json()}, _moved_line("pushed", total, cache.url))


@cli.command("pull")
@_common
@click.argument("target", required=False)
@click.option("--env", "env", is_flag=True,
              help="Pull the recipe's environment layers (for `build --image`).")
@click.option("--all", "every", is_flag=True, help="Pull every run the remote holds (lists "
                                                   "its tags).")
@_remote_flags
def pull_cmd(recipe: str | None, target: str | None, env: bool, every: bool,
             remote: Any) -> None:
    """Pull a run or an environment (TARGET: a whole run key or env id; default: the
    recipe's current run key) from the remote cache into the store, with everything it was
    made from, each byte checked. Exit 1 when the remote has no such thing, or it is not
    signed by a trusted key."""
    from builder.remote import Moved, Untrusted  # noqa: PLC0415

    total = Moved()
    cache, keys, envs = _pull_targets(recipe, target, env, every, remote)
    pulled: list[str] = []
    missing: list[str] = []
    refused: list[str] = []
    for key in keys:
        try:
            found = cache.pull_run(key, everything=True, moved=total)
        except Untrusted as exc:
            if not every:
                raise
            click.echo(f"warning: {exc.message}", err=True)  # the others are still pulled
            refused.append(key)
            continue
        if found is not None:
            pulled.append(key)
        elif target is not None:
            envs.append(key)  # not a run: perhaps an env id
        else:
            missing.append(key)
    for env_id in envs:
        (pulled if cache.pull_env(env_id, total) else missing).append(env_id)
    result = {"remote": cache.url, "pulled": pulled, "missing": missing, "untrusted": refused,
              **total.to_json()}
    lines = [f"pulled {total.blobs} blobs ({total.bytes} bytes) from {cache.url}; "
             f"{total.skipped} were here already"]
    lines += [f"pulled {p}" for p in pulled]
    lines += [f"not on the remote: {m}" for m in missing]
    lines += [f"not signed by a trusted key, not pulled: {m}" for m in refused]
    _emit(result, "\n".join(lines))
    if missing or refused:
        raise click.exceptions.Exit(errors.EXIT_CHECK)


def _pull_targets(recipe: str | None, target: str | None, env: bool, every: bool,
                  remote: Any) -> tuple[Any, list[str], list[str]]:
    """The remote, the run keys and the env ids `repro pull` was asked for."""
    if target is not None or every:
        cache = _required(_with_remote(None, remote, _store()))
        if every:
            return cache, ["blake3:" + n.removeprefix("run-") for n in cache.ls()["run"]], []
        return cache, [_whole(target or "")], []
    project = _project(recipe, "locked")
    cache = _required(_with_remote(project, remote))
    if env:
        return cache, [], [project.lock.env_id]
    from builder.run import plan  # noqa: PLC0415
    from builder.runner import VenvRunner  # noqa: PLC0415

    return cache, [plan(project, VenvRunner(project)).key], []


def _whole(target: str) -> str:
    """A whole run key or env id, as `blake3:<hex>`, from any form a user may have copied
    (`run-<hex>` and `env-<hex>` as `remote ls` prints them, `blake3:<hex>`, `<hex>`)."""
    hexed = target.removeprefix("run-").removeprefix("env-").removeprefix("blake3:")
    if len(hexed) != 64 or not all(c in "0123456789abcdef" for c in hexed):
        raise click.BadParameter(f"{target} is not a whole run key or env id (64 hex digits; "
                                 "`blake3:`, `run-` or `env-` before them is fine)",
                                 param_hint="TARGET")
    return "blake3:" + hexed


@cli.group("remote", cls=_Group)
def remote_group() -> None:
    """What the remote cache holds."""


@remote_group.command("ls")
@_common
@_remote_flags
def remote_ls(recipe: str | None, remote: Any) -> None:
    """List the remote's runs, environments and output index entries (pages through its
    tags; lookups never do this)."""
    cache = _required(_with_remote(None, remote))
    kinds = cache.ls()
    lines = [f"{cache.url}: {len(kinds['run'])} runs, {len(kinds['env'])} environments, "
             f"{len(kinds['out'])} output index entries"]
    lines += [f"  {name}" for name in [*kinds["run"], *kinds["env"]]]
    _emit({"remote": cache.url, **kinds}, "\n".join(lines))


@remote_group.command("rm")
@_common
@click.option("--older-than", "days", type=click.FloatRange(min=0, max=36500), required=True,
              callback=lambda _c, _p, v: _finite(v),
              metavar="DAYS", help="Remove runs and environments pushed more than DAYS ago.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@_remote_flags
def remote_rm(recipe: str | None, days: float, dry_run: bool, remote: Any) -> None:
    """Delete old runs, environments and their output index entries from the remote (where
    the registry allows deletes; its garbage collection frees the blobs)."""
    cache = _required(_with_remote(None, remote))
    gone = cache.remove_older(days, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    _emit({"remote": cache.url, "removed": gone, "dry_run": dry_run},
          "\n".join([f"{verb} {len(gone)} tags from {cache.url}", *gone]))


def _finite(days: float) -> float:
    import math  # noqa: PLC0415

    if not math.isfinite(days):
        raise click.BadParameter(f"{days} is not a number of days", param_hint="--older-than")
    return days


@cli.group("key", cls=_Group)
def key_group() -> None:
    """Signing keys for what is pushed to a remote."""


@key_group.command("generate")
@_common
@click.argument("file", type=click.Path(dir_okay=False))
def key_generate(recipe: str | None, file: str) -> None:
    """Write a new ed25519 private key to FILE (mode 0600) and print its public key, the
    line to give `--trust` or trusted-keys."""
    from pathlib import Path  # noqa: PLC0415

    from builder import signing  # noqa: PLC0415

    if not Path(file).parent.is_dir():
        raise click.BadParameter(f"{Path(file).parent} is not a folder", param_hint="FILE")
    public = signing.generate(Path(file))
    _emit({"private_key": file, "public_key": public},
          f"wrote the private key {file} (keep it secret: CI keeps it in a secret)\n{public}")
