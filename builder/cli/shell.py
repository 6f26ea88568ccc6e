"""What every command shares: the `repro` group, common flags, the project, output, logging."""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from builder.errors import did_you_mean

if TYPE_CHECKING:
    from builder.project import Project
    from builder.store import Store

EXIT_CODES = """\b
Exit codes:
  0    success
  1    a check failed (stale or tampered lock, drift, nothing found)
  2    bad input (recipe, arguments, files)
  3    an external tool or a build step failed (or the disk is full)
  4    a bug in repro: the traceback is written to a log file, whose path is printed
  130  interrupted (Ctrl-C); nothing half-done is left in the store
  143  terminated (SIGTERM; 129 for SIGHUP): the training's processes were ended too
  141  the output pipe closed early (repro runs | head -1)
"""
log = logging.getLogger("builder")


class _Output:
    """How results are shown: JSON on stdout for scripts, text for people, progress on stderr."""

    json = False


OUT = _Output()


class _Stderr(logging.Handler):
    """Progress and warnings as plain lines on stderr (click knows when it is a terminal)."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "warning: " if record.levelno == logging.WARNING else ""
        click.echo(prefix + record.getMessage(), err=True)


def _logging(quiet: bool, verbose: bool) -> None:
    """Every module logs to `builder.*`: INFO is progress, DEBUG commands run, WARNING always."""
    log.handlers[:] = [_Stderr()]
    log.propagate = False
    log.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


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
        OUT.json = as_json
        _logging(quiet, verbose)
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
        for link in links:
            if "://" not in link and not os.path.isdir(link):
                raise click.BadParameter(f"{link} is not a folder", param_hint="--find-links "
                                         "(or REPRO_FIND_LINKS)")
        return fn(*args, machine=MachineSources(links), **kwargs)

    return wrapper


def _remote_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Flags for the remote cache; the command gets `remote`: the settings (url None when
    no remote is configured). docs/remote.md says where each comes from."""

    @click.option("--remote", "remote_url", metavar="HOST/PATH",
                  help="The remote cache, an OCI registry repository [env: REPRO_REMOTE; "
                       "default: [remote] url in .repro/config.toml, then your config]")
    @click.option("--require-remote", is_flag=True,
                  help="Fail (exit 3) when the remote cannot be reached, instead of a "
                       "warning and local work.")
    @click.option("--trust", multiple=True, metavar="KEY",
                  help="Trust runs signed by this public key (repro-ed25519:…; repeatable) "
                       "[env: REPRO_TRUSTED_KEYS, comma-separated].")
    @click.option("--sign-key", metavar="FILE",
                  help="Sign what is pushed with this private key [env: REPRO_SIGNING_KEY].")
    @functools.wraps(fn)
    def wrapper(*args: Any, remote_url: str | None, require_remote: bool,
                trust: tuple[str, ...], sign_key: str | None, **kwargs: Any) -> Any:
        kwargs["remote"] = {"flag": remote_url, "trust": trust, "require": require_remote,
                            "sign_key": sign_key}  # config.settings' arguments
        return fn(*args, **kwargs)

    return wrapper


def _with_remote(project: Project | None, flags: Any, store: Store | None = None) -> Any:
    """The command's Remote (None when none is configured), set on the project if any."""
    from builder import config  # noqa: PLC0415
    from builder.remote import Remote  # noqa: PLC0415

    settings = config.settings(project.root if project else _here(), **flags)
    remote = Remote.of(settings, store or (project.store if project else _store()))
    if settings.require and remote is None:
        raise click.UsageError("--require-remote needs a remote: --remote HOST/PATH, "
                               "REPRO_REMOTE, or [remote] url in a config")
    if project is not None:
        project.remote = remote
    return remote


def _here() -> Any:
    from pathlib import Path  # noqa: PLC0415

    return Path.cwd()


def _project(path: str | None, mode: str = "auto", *, offline: bool = False,
             machine: Any = None) -> Project:
    """The one project object this command works on."""
    from builder.project import Project  # noqa: PLC0415
    from builder.resolve import NO_MACHINE_SOURCES  # noqa: PLC0415

    return Project.open(path, mode=mode, offline=offline, machine=machine or NO_MACHINE_SOURCES)


def _store() -> Store:
    from builder.store import Store  # noqa: PLC0415

    return Store.open()


class PipeClosed(Exception):
    """Standard output's reader went away (`repro runs | head -1`)."""


def echo(text: str) -> None:
    """Write to standard output; a closed pipe ends the command quietly (exit 141)."""
    import io  # noqa: PLC0415
    import sys  # noqa: PLC0415

    out = sys.stdout
    try:
        try:
            fd = out.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):  # not a file (a test's)
            out.write(text + "\n")
            out.flush()
            return
        # Neither click.echo nor an unbuffered sys.stdout says when a reader left part-way:
        # a short write is dropped silently. Write until every byte is out, or EPIPE.
        out.flush()
        view = memoryview((text + "\n").encode())
        while view:
            view = view[os.write(fd, view):]
    except BrokenPipeError:
        raise PipeClosed from None


def _emit(data: dict[str, Any], text: str) -> None:
    if OUT.json:
        echo(json.dumps(data, sort_keys=True))
    elif text:
        echo(text)


@click.group(cls=_Group, epilog=EXIT_CODES,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="repro-builder", prog_name="repro")
def cli() -> None:
    """Declarative, hermetic builds of ML training environments.

    A recipe (repro.toml) is locked (lockfiles/<name>/), built into an environment named by
    its content (the env id), and run. The store is $REPRO_HOME (default: the user cache dir).
    """


_MODE_HELP = ("--locked: fail if the lock is stale. --frozen: use the lock as it is, unchecked. "
              "Default: re-lock a stale lock first.")


def _mode(locked: bool, frozen: bool) -> str:
    if locked and frozen:
        raise click.UsageError("--locked and --frozen cannot be used together")
    return "locked" if locked else "frozen" if frozen else "auto"


def _runner(where: str, project: Any) -> Any:
    """The runner the user chose: the env's virtualenv, the recipe's image, or the lock built
    by Nix."""
    if where == "nix":
        from builder.nix import NixRunner  # noqa: PLC0415

        return NixRunner(project)
    if where == "image":
        from builder.image.runner import ImageRunner  # noqa: PLC0415

        return ImageRunner(project)
    from builder.runner import VenvRunner  # noqa: PLC0415

    return VenvRunner(project)
