"""The `repro` command line: each command parses flags, calls one library function, renders it.

Commands live by stage: this module (lock, build, exec, status, cache), `runs` (run, lookup,
runs, show, export) and `verify` (baseline, verify, diff, history).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from builder import errors
from builder.errors import EXIT_INTERRUPTED, ReproError, did_you_mean

EXIT_CODES = """\b
Exit codes:
  0    success
  1    a check failed (stale or tampered lock, drift, nothing found)
  2    bad input (recipe, arguments, files)
  3    an external tool or a build step failed
  130  interrupted (Ctrl-C); nothing half-done is left in the store
"""


class _Output:
    """How results are shown: JSON on stdout for scripts, text for people, progress on stderr."""

    json = False
    quiet = False

    def say(self, message: str) -> None:
        if not self.quiet:
            click.echo(message, err=True)


OUT = _Output()


class _Group(click.Group):
    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            raise click.UsageError(
                f"no such command '{name}'{did_you_mean(name, self.list_commands(ctx), 0.5)}",
                ctx,
            )
        return super().resolve_command(ctx, args)


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Flags every command takes: --recipe, --json, -q, -v."""

    @click.option("-r", "--recipe", envvar="REPRO_RECIPE", metavar="PATH",
                  help="Recipe file or folder [default: repro.toml here or above; "
                       "env: REPRO_RECIPE]")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
    @click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
    @click.option("-v", "--verbose", is_flag=True, help="Show commands run and tracebacks.")
    @functools.wraps(fn)
    def wrapper(*args: Any, as_json: bool, quiet: bool, verbose: bool, **kwargs: Any) -> Any:
        OUT.json, OUT.quiet = as_json, quiet
        if verbose:
            logging.basicConfig(level=logging.DEBUG, format="%(message)s", stream=sys.stderr)
        return fn(*args, **kwargs)

    return wrapper


def _sources(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Flags for where packages come from on this machine, and network use."""

    @click.option("--find-links", "find_links", multiple=True, metavar="DIR|URL",
                  help="A folder or page of wheels for this machine; replaces the recipe's "
                       "sources and never reaches the lock [env: REPRO_FIND_LINKS, "
                       f"'{os.pathsep}'-separated]")
    @click.option("--offline", is_flag=True, envvar="REPRO_OFFLINE",
                  help="Use no network: only uv's cache and local folders [env: REPRO_OFFLINE]")
    @functools.wraps(fn)
    def wrapper(*args: Any, find_links: tuple[str, ...], **kwargs: Any) -> Any:
        from builder.resolve import MachineSources  # noqa: PLC0415

        links = find_links or tuple(
            p for p in os.environ.get("REPRO_FIND_LINKS", "").split(os.pathsep) if p
        )
        return fn(*args, machine=MachineSources(links), **kwargs)

    return wrapper


def _recipe(path: str | None) -> Any:
    from builder.recipe import find_recipe, load_recipe  # noqa: PLC0415

    return load_recipe(find_recipe(path))


def _store() -> Any:
    from builder.store import Store  # noqa: PLC0415

    return Store.open()


def _emit(data: dict[str, Any], text: str) -> None:
    if OUT.json:
        click.echo(json.dumps(data, sort_keys=True))
    elif text:
        click.echo(text)


@click.group(cls=_Group, epilog=EXIT_CODES,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="repro-builder", prog_name="repro")
def cli() -> None:
    """Declarative, hermetic builds of ML training environments.

    A recipe (repro.toml) is locked (lockfiles/<name>/), built into an environment named by
    its content (the env id), and run. The store is $REPRO_HOME (default: the user cache dir).
    """


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
def lock_cmd(recipe: str | None, machine: Any, offline: bool, resolver: str,
             check_only: bool, upgrade: bool, update_base: bool) -> None:
    """Resolve the recipe into lockfiles/<name>/pylock.toml and repro.lock."""
    from builder import lock  # noqa: PLC0415

    r = _recipe(recipe)
    if check_only:
        current = lock.check(r)
        _emit({"recipe": r.name, "env": current.env_id, "changed": False, "fresh": True,
               "lockfile": str(r.lock_dir / lock.REPRO_LOCK)},
              f"{r.lock_dir}: up to date (env {current.env_id})")
        return
    OUT.say(f"Resolving {r.name} with {resolver} for Python {r.environment.python} "
            f"on {r.environment.platform}")
    result = lock.write_lock(r, resolver=resolver, machine=machine, offline=offline,
                             upgrade=upgrade, update_base=update_base)
    verb = "Wrote" if result.changed else "Unchanged:"
    _emit(result.to_json(), f"{verb} {result.lockfile.parent} ({result.packages} packages, "
                            f"env {result.env})")


_MODE_HELP = ("--locked: fail if the lock is stale. --frozen: use the lock as it is, unchecked. "
              "Default: re-lock a stale lock first.")


def _mode(locked: bool, frozen: bool) -> str:
    if locked and frozen:
        raise click.UsageError("--locked and --frozen cannot be used together")
    return "locked" if locked else "frozen" if frozen else "auto"


@cli.command("build")
@_common
@_sources
@click.option("--locked", is_flag=True, help="Fail if the lock is out of date.")
@click.option("--frozen", is_flag=True, help="Use the lock without checking it.")
@click.option("--image", is_flag=True, help="Build an OCI image instead of a virtualenv.")
@click.option("-o", "--output", type=click.Path(file_okay=False), metavar="DIR",
              help="With --image: the OCI layout folder [default: $REPRO_HOME/images/<name>]; "
                   "the docker-load archive is DIR.tar.")
@click.option("--push", metavar="REF", help="With --image: push to REGISTRY/NAME:TAG.")
@click.option("--load", is_flag=True, help="With --image: load it into Docker (or Podman's "
                                           "Docker API service) at DOCKER_HOST.")
def build_cmd(recipe: str | None, machine: Any, offline: bool, locked: bool,
              frozen: bool, image: bool, output: str | None, push: str | None,
              load: bool) -> None:
    """Materialise the lock as a virtualenv in the store (a lookup if it exists), or with
    --image as a reproducible OCI image (layout and docker-load archive)."""
    if image:
        from pathlib import Path  # noqa: PLC0415

        from builder.image.build import build_image  # noqa: PLC0415

        img = build_image(_recipe(recipe), store=_store(), mode=_mode(locked, frozen),
                          machine=machine, offline=offline,
                          output=Path(output).resolve() if output else None, push=push,
                          load=load, say=OUT.say)
        _emit(img.to_json(), f"{img.digest}  {img.tag}\n  layout  {img.layout}\n"
                             f"  archive {img.archive}\n  {len(img.layers)} layers, "
                             f"{img.to_json()['cached_layers']} from the store")
        return
    if output or push or load:
        raise click.UsageError("--output, --push and --load go with --image")
    from builder.env import build  # noqa: PLC0415

    result = build(_recipe(recipe), store=_store(), mode=_mode(locked, frozen), machine=machine,
                   offline=offline, say=OUT.say)
    state = "cached" if result.cached else f"built in {result.seconds:.1f}s"
    _emit(result.to_json(), f"{result.path} ({state}, Python {result.python}, "
                            f"{result.packages} packages)")


@cli.command("exec", context_settings={"ignore_unknown_options": True})
@_common
@_sources
@click.option("--locked", is_flag=True, help="Fail if the lock is out of date.")
@click.option("--frozen", is_flag=True, help="Use the lock without checking it.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def exec_cmd(recipe: str | None, machine: Any, offline: bool, locked: bool, frozen: bool,
             command: tuple[str, ...]) -> None:
    """Run COMMAND inside the recipe's environment (built first if needed).

    With --json the command's stdout goes to stderr and one JSON object is printed at the end.
    """
    from builder.env import exec_in  # noqa: PLC0415

    built, code = exec_in(_recipe(recipe), command, store=_store(), mode=_mode(locked, frozen),
                          machine=machine, offline=offline, say=OUT.say, capture=OUT.json)
    _emit({"env": built.env, "path": str(built.path), "command": list(command),
           "exit_code": code}, "")
    raise click.exceptions.Exit(code)


@cli.command("status")
@_common
def status_cmd(recipe: str | None) -> None:
    """Show the recipe, its lock and its environment at a glance."""
    from builder.env import status  # noqa: PLC0415

    info = status(_recipe(recipe), store=_store())
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
    rows = [f"{e['env'][7:19]}  {e['recipe']:<20} Python {e['python']:<8} "
            f"{e['packages']:>4} pkgs  {e['size'] / 1e6:8.1f} MB  used {e['last_used']}"
            for e in envs]
    _emit({"store": str(store.root), "envs": envs},
          "\n".join(rows) or f"no environments in {store.root}")


@cache.command("gc")
@_common
@click.option("--older-than", "days", type=click.FloatRange(min=0), default=30.0,
              show_default=True, help="Remove environments not used for this many days.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
def cache_gc(recipe: str | None, days: float, dry_run: bool) -> None:
    """Remove unused environments and what interrupted builds left behind."""
    from builder.cache import gc  # noqa: PLC0415

    result = gc(_store(), older_than_days=days, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    _emit(result, f"{verb} {len(result['removed'])} entries, {result['freed'] / 1e6:.1f} MB")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; map errors to the documented exit codes."""
    OUT.json = OUT.quiet = False
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="repro",
                        standalone_mode=False)
    except ReproError as exc:
        return _fail(exc.exit_code, type(exc).__name__, exc.message, exc.hint, exc)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        return _fail(errors.EXIT_INPUT, "UsageError", exc.format_message(), "", exc)
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        return _fail(EXIT_INTERRUPTED, "Interrupted",
                     "interrupted; nothing half-built was left in the store", "", None)
    return code if isinstance(code, int) else 0


def _fail(code: int, kind: str, message: str, hint: str, exc: BaseException | None) -> int:
    if OUT.json:
        click.echo(json.dumps({"error": {"type": kind, "message": message, "hint": hint},
                               "exit_code": code}, sort_keys=True))
    if exc is not None and logging.getLogger().isEnabledFor(logging.DEBUG):
        import traceback  # noqa: PLC0415

        traceback.print_exception(exc)
    click.echo(f"error: {message}" + (f"\nhint: {hint}" if hint else ""), err=True)
    return code


# The other commands register themselves on `cli` when imported.
from builder.cli import runs, verify  # noqa: E402, F401

if __name__ == "__main__":
    sys.exit(main())
