"""`repro lock | build | exec | status | cache`: locks, environments and the store."""

from __future__ import annotations

from typing import Any

import click

from builder.cli.shell import (
    OUT,
    _common,
    _emit,
    _Group,
    _mode,
    _project,
    _remote_flags,
    _sources,
    _store,
    _with_remote,
    cli,
    log,
)


@cli.command("lock")
@_common
@_sources
@click.option("--resolver", type=click.Choice(["uv", "pip-tools"]), default="uv",
              show_default=True, help="The resolver.")
@click.option("--check", "check_only", is_flag=True,
              help="Do not resolve: exit 1 if the lock no longer matches the recipe.")
@click.option("-U", "--upgrade", is_flag=True,
              help="Ignore the versions in the current lock; take the newest allowed.")
@click.option("--update-base", is_flag=True,
              help="Resolve an image.base given by tag now, and record its digest.")
@click.option("--upgrade-system", is_flag=True,
              help="Take the newest Debian packages the suites have, not the locked ones.")
def lock_cmd(recipe: str | None, machine: Any, offline: bool, resolver: str,
             check_only: bool, upgrade: bool, update_base: bool, upgrade_system: bool) -> None:
    """Resolve the recipe into lockfiles/<name>/pylock.toml and repro.lock."""
    from builder import lock  # noqa: PLC0415

    project = _project(recipe, offline=offline, machine=machine)
    r = project.recipe
    if check_only:
        current = lock.check(r)
        _emit({"recipe": r.name, "env": current.env_id, "changed": False, "fresh": True,
               "lockfile": str(r.lock_dir / lock.REPRO_LOCK)},
              f"{r.lock_dir}: up to date (env {current.env_id})")
        return
    log.info("Resolving %s with %s for Python %s on %s", r.name, resolver,
             r.environment.python, r.environment.platform)
    result = lock.write_lock(project, resolver=resolver, upgrade=upgrade,
                             update_base=update_base, upgrade_system=upgrade_system)
    verb = "Wrote" if result.changed else "Unchanged:"
    debs = len(result.lock.debs)
    _emit(result.to_json(), f"{verb} {result.lockfile.parent} ({result.packages} Python "
                            + (f"and {debs} Debian " if debs else "")
                            + f"packages, env {result.env})")


@cli.command("build")
@_common
@_sources
@click.option("--locked", is_flag=True, help="Fail if the lock is out of date.")
@click.option("--frozen", is_flag=True, help="Use the lock without checking it.")
@click.option("--image", is_flag=True, help="Build an OCI image instead of a virtualenv.")
@click.option("--backend", type=click.Choice(["venv", "nix"]), default="venv",
              show_default=True, help="What builds the environment: uv into a virtualenv, or "
                                      "Nix (nix-build or nix-portable from PATH).")
@click.option("-o", "--output", type=click.Path(file_okay=False), metavar="DIR",
              help="With --image: the OCI layout folder [default: $REPRO_HOME/images/<name>]; "
                   "the docker-load archive is DIR.tar.")
@click.option("--push", metavar="REF", help="With --image: push to REGISTRY/NAME:TAG.")
@click.option("--load", is_flag=True, help="With --image: load it into Docker (or Podman's "
                                           "Docker API service) at DOCKER_HOST.")
@_remote_flags
def build_cmd(recipe: str | None, machine: Any, offline: bool, locked: bool,
              frozen: bool, image: bool, backend: str, output: str | None,
              push: str | None, load: bool, remote: Any) -> None:
    """Materialise the lock as a virtualenv in the store (a lookup if it exists), or with
    --image as a reproducible OCI image (layout and docker-load archive); an image's package
    layers come from the remote cache where it has them (a virtualenv is always built here,
    from the lock)."""
    if image:
        from pathlib import Path  # noqa: PLC0415

        if push is not None:  # a bad reference is found before the build, not after it
            from builder.registry import Reference  # noqa: PLC0415

            Reference.parse(push)
        from builder.image.build import build_image  # noqa: PLC0415

        project = _project(recipe, _mode(locked, frozen), offline=offline, machine=machine)
        cache = _with_remote(project, remote)
        img = build_image(project, output=Path(output).resolve() if output else None,
                          push=push, load=load)
        shown = img.to_json()
        if cache is not None and cache.settings.push:
            moved = cache.safely("the env was not pushed", lambda: cache.push_env(project),
                                 None)
            shown["pushed"] = moved.to_json() if moved else None
        _emit(shown, f"{img.digest}  {img.tag}\n  layout  {img.layout}\n"
                      f"  archive {img.archive}\n  {len(img.layers)} layers, "
                      f"{img.to_json()['cached_layers']} from the store or the remote")
        return
    if output or push is not None or load:
        raise click.UsageError("--output, --push and --load go with --image")
    if backend == "nix":
        from builder.nix import build  # noqa: PLC0415
    else:
        from builder.env import build  # noqa: PLC0415

    project = _project(recipe, _mode(locked, frozen), offline=offline, machine=machine)
    result = build(project)
    state = "cached" if result.cached else f"built in {result.seconds:.1f}s"
    shown = {**result.to_json(), "backend": backend}
    if backend == "nix":
        from builder.env import read_manifest  # noqa: PLC0415

        facts = read_manifest(project.store.nix_envs.path(result.env)).nix or {}
        shown["nix"] = {k: facts.get(k) for k in ("store_path", "drv", "root", "tool",
                                                  "version", "added", "impure")}
    _emit(shown, f"{result.path} ({state}, Python {result.python}, "
                            f"{result.packages} packages)")


@cli.command("exec", context_settings={"ignore_unknown_options": True})
@_common
@_sources
@click.option("--locked", is_flag=True, help="Fail if the lock is out of date.")
@click.option("--frozen", is_flag=True, help="Use the lock without checking it.")
@click.option("--in", "where", type=click.Choice(["venv", "nix"]), default="venv",
              show_default=True, help="The virtualenv, or the lock built by Nix.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def exec_cmd(recipe: str | None, machine: Any, offline: bool, locked: bool, frozen: bool,
             where: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside the recipe's environment (built first if needed).

    With --json the command's stdout goes to stderr and one JSON object is printed at the end.
    """
    from builder.env import exec_in  # noqa: PLC0415

    builder = None
    if where == "nix":
        from builder import nix  # noqa: PLC0415

        builder = nix.build
    built, code = exec_in(_project(recipe, _mode(locked, frozen), offline=offline,
                                   machine=machine), command, capture=OUT.json, builder=builder)
    _emit({"env": built.env, "path": str(built.path), "command": list(command),
           "exit_code": code}, "")
    raise click.exceptions.Exit(code)


@cli.command("status")
@_common
def status_cmd(recipe: str | None) -> None:
    """Show the recipe, its lock and its environment at a glance."""
    from builder.env import status  # noqa: PLC0415

    info = status(_project(recipe))
    lock_info, env = info["lock"], info["env"]
    lines = [f"recipe  {info['recipe']['name']}  {info['recipe']['path']}",
             f"        digest {info['recipe']['digest']}",
             f"lock    {lock_info['state']}  {lock_info['path']}"]
    lines += [f"        - {reason}" for reason in lock_info["reasons"]]
    if env:
        lines.append(f"env     {env['id']}")
        lines.append(f"        {'built: ' + env['path'] if env['built'] else 'not built'}"
                     f"  ({env['packages']} packages"
                     + (f", Python {env['python']})" if env["python"] else ")"))
    _emit(info, "\n".join(lines))


@cli.group("cache", cls=_Group)
def cache() -> None:
    """Inspect and clean the store ($REPRO_HOME)."""


@cache.command("ls")
@_common
def cache_ls(recipe: str | None) -> None:
    """List the environments in the store."""
    from builder.cache import list_envs  # noqa: PLC0415

    store = _store()
    envs = list_envs(store)
    rows = [f"{e['env'][7:19]}  {e['backend']:<4} {e['recipe']:<20} Python {e['python']:<8} "
            f"{e['packages']:>4} pkgs  {e['size'] / 1e6:8.1f} MB  used {e['last_used']}"
            for e in envs]
    _emit({"store": str(store.root), "envs": envs},
          "\n".join(rows) or f"no environments in {store.root}")


@cache.command("verify")
@_common
@click.option("--repair", is_flag=True,
              help="Quarantine damaged blobs, set damaged environments aside, drop index "
                   "entries that point at what is gone.")
def cache_verify(recipe: str | None, repair: bool) -> None:
    """Check every blob, environment and record in the store, byte for byte.

    Exit 0 when all is well, 1 when anything was wrong (repaired or not: the list says)."""
    from builder.cache import verify  # noqa: PLC0415
    from builder.store import Store  # noqa: PLC0415

    result = verify(Store.open(check=False), repair=repair)  # a link in the store: listed
    checked = result["checked"]
    lines = [f"checked {checked.get('blobs', 0)} blobs ({checked.get('blob_bytes', 0) / 1e6:.1f}"
             f" MB), {checked.get('envs', 0)} environments, {checked.get('records', 0)} "
             f"records in {result['seconds']:.1f}s"]
    lines += [f"{p['area']:<13} {p['path']}\n              {p['problem']}"
              + (f"\n              repaired: {p['repair']}" if p["repair"] else "")
              for p in result["problems"]]
    lines.append("the store is sound" if result["ok"] else
                 f"{len(result['problems'])} problem(s)"
                 + ("" if repair else "; `repro cache verify --repair` fixes what it can"))
    _emit(result, "\n".join(lines))
    if not result["ok"]:
        raise click.exceptions.Exit(1)


@cache.command("gc")
@_common
@click.option("--older-than", "days", type=click.FloatRange(min=0), default=30.0,
              show_default=True, help="Remove environments, layers and bases not used for "
                                      "this many days.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
def cache_gc(recipe: str | None, days: float, dry_run: bool) -> None:
    """Remove what nothing needs: unused environments, leftovers of killed builds and runs,
    and blobs no record, environment or committed baseline reaches. Never what a running
    command uses."""
    from builder.cache import gc  # noqa: PLC0415

    result = gc(_store(), older_than_days=days, dry_run=dry_run, keep=_baseline_outputs(recipe))
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} {len(result['removed'])} entries, {result['freed'] / 1e6:.1f} MB"]
    lines += [f"could not remove {f['path']} ({f['why']}): {f['error']}"
              for f in result["failed"]]
    _emit(result, "\n".join(lines))
    if result["failed"]:  # a read-only store: said per path, and not a success
        raise click.exceptions.Exit(3)


def _baseline_outputs(recipe: str | None) -> set[str]:
    """The outputs a committed baseline names, when gc runs in a project: kept."""
    from builder import baseline  # noqa: PLC0415
    from builder.errors import ReproError  # noqa: PLC0415

    try:
        base = baseline.load(_project(recipe).recipe)
    except ReproError:
        return set()
    return {o.digest for r in base.runs for o in r.outputs}
