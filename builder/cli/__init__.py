"""The `repro` command line: each command parses flags, calls one library function, renders it.

    shell.py    the `repro` group, the flags every command shares, the project, output, logging
    envs.py     lock, build, exec, status, cache
    runs.py     run, lookup, runs, show, export
    verify.py   baseline, verify, diff, history
    remote.py   push, pull, remote ls|rm, key generate
    adopt.py    audit, init
    here        `main`: every way a command can end, mapped to a documented exit code
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import Sequence

import click

from builder import errors
from builder.cli import adopt, envs, remote, runs, verify  # noqa: F401  (each registers its commands)
from builder.cli.shell import OUT, PipeClosed, _logging, _store, cli, log
from builder.errors import EXIT_INTERRUPTED, ReproError

__all__ = ["cli", "main"]


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911  (one per exit code)
    """Run the CLI; map every way it can end to a documented exit code."""
    args = list(argv) if argv is not None else sys.argv[1:]
    # usage errors happen before a command's flags are read: --json must hold for them too
    OUT.json = "--json" in args[: args.index("--")] if "--" in args else "--json" in args
    _logging(quiet=False, verbose=False)
    if threading.current_thread() is threading.main_thread():
        from builder.proc import stop_on_signals  # noqa: PLC0415

        stop_on_signals()
    try:
        code = cli.main(args=args, prog_name="repro", standalone_mode=False)
    except ReproError as exc:
        return _fail(exc.exit_code, type(exc).__name__, exc.message, exc.hint, exc)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        return _fail(errors.EXIT_INPUT, "UsageError", exc.format_message(), "", exc)
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        return _fail(EXIT_INTERRUPTED, "Interrupted",
                     "interrupted; nothing half-built was left in the store", "", None)
    except errors.Terminated as exc:
        return _fail(128 + exc.signum, "Interrupted",
                     f"terminated by signal {exc.signum}; the command's processes were ended "
                     "and nothing half-built was left in the store", "", None)
    except (PipeClosed, BrokenPipeError):
        # `repro runs | head -1`: the reader is gone; say nothing more, as `cat` would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return errors.EXIT_PIPE
    except OSError as exc:
        return _os_error(exc)
    except RecursionError as exc:
        return _fail(errors.EXIT_INPUT, "InputError", "an input is nested too deeply to read",
                     "look for a runaway structure in the recipe or the files it names", exc)
    except Exception as exc:
        return _bug(exc)
    return code if isinstance(code, int) else 0


def _os_error(exc: OSError) -> int:
    """What the operating system refused, as the user can fix it."""
    import errno  # noqa: PLC0415

    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        place = "that device" if exc.filename else (
            "the store ($REPRO_HOME), the project, or wherever standard output goes")
        return _fail(errors.EXIT_TOOL, "DiskFull", f"no space left on the device{where}",
                     f"free some space on {place} (`repro cache gc` removes what the store no "
                     "longer needs); nothing half-written was kept", exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return _fail(errors.EXIT_INPUT, "PermissionDenied",
                     f"permission denied{where}: {exc.strerror}",
                     "check the permissions of that path (and of $REPRO_HOME)", exc)
    return _fail(errors.EXIT_TOOL, "SystemError", f"{exc.strerror or exc}{where}", "", exc)


def _bug(exc: BaseException) -> int:
    """Exit 4: one line for the user, the whole traceback in a log file."""
    import datetime as dt  # noqa: PLC0415
    import tempfile  # noqa: PLC0415
    import traceback  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from builder import __version__  # noqa: PLC0415

    text = (f"repro {__version__}, argv {sys.argv!r}\n"
            + "".join(traceback.format_exception(exc)))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = None
    try:
        folder = _store().logs
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"crash-{stamp}.log"
        path.write_text(text)
    except Exception:
        fd, name = tempfile.mkstemp(prefix=f"repro-crash-{stamp}-", suffix=".log")
        os.write(fd, text.encode())
        os.close(fd)
        path = Path(name)
    return _fail(errors.EXIT_BUG, "InternalError",
                 f"internal error (a bug in repro): {type(exc).__name__}: {exc}",
                 f"the traceback is in {path}; please report it with that file", exc)


def _fail(code: int, kind: str, message: str, hint: str, exc: BaseException | None) -> int:
    if OUT.json:
        try:
            click.echo(json.dumps({"error": {"type": kind, "message": message, "hint": hint},
                                   "exit_code": code}, sort_keys=True))
            sys.stdout.flush()
        except OSError:  # standard output itself is what failed (a full disk, a closed pipe)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
    if exc is not None and log.isEnabledFor(logging.DEBUG):
        import traceback  # noqa: PLC0415

        traceback.print_exception(exc)
    with contextlib.suppress(OSError):
        click.echo(f"error: {message}" + (f"\nhint: {hint}" if hint else ""), err=True)
    return code

if __name__ == "__main__":
    sys.exit(main())
