"""Every external command runs through here: no shell, an explicit environment, a logged argv."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

from builder.errors import InputError, ToolError

log = logging.getLogger(__name__)

# Variables that change what uv or pip do behind our back; each call states its own.
_AMBIENT = ("UV_", "PIP_", "VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH", "PYTHONHOME")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment less installer settings, plus `extra`.

    UV_CACHE_DIR survives: where uv caches wheels is the user's choice, not an input.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(_AMBIENT)}
    if "UV_CACHE_DIR" in os.environ:
        env["UV_CACHE_DIR"] = os.environ["UV_CACHE_DIR"]
    env.update(extra or {})
    return env


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    hint: str = "",
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its output.

    Raises:
        ToolError: the command exited non-zero (with `check`) or could not be started.
    """
    args = [os.fspath(a) for a in argv]
    log.debug("$ %s", shlex.join(args))
    try:
        done = subprocess.run(
            args,
            env=dict(env) if env is not None else clean_env(),
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        raise _not_started(args, exc, hint or f"install {args[0]}") from exc
    if done.stderr:
        log.debug("%s", done.stderr.rstrip())
    if check and done.returncode != 0:
        raise ToolError(args, done.returncode, done.stderr or done.stdout, hint=hint)
    return done


@cache
def uv_bin() -> str:
    """The uv binary that ships in the `uv` wheel repro depends on."""
    beside = Path(sys.executable).parent / "uv"  # where the wheel puts it in a venv
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    import uv  # noqa: PLC0415  (its lookup imports sysconfig: slow, so only as a fallback)

    return str(uv.find_uv_bin())


def _not_started(argv: Sequence[str], exc: OSError, hint: str) -> InputError | ToolError:
    """Why a command could not start: a command line too long is the input's fault."""
    import errno  # noqa: PLC0415

    if exc.errno == errno.E2BIG:
        size = sum(len(a) + 1 for a in argv)
        return InputError(f"the command line of {argv[0]} is too long to start ({len(argv)} "
                          f"arguments, {size} bytes): {exc.strerror}",
                          hint="pass fewer or shorter arguments: params reach the command "
                               "without the command line too, in REPRO_PARAMS_FILE")
    return ToolError(list(argv), 127, str(exc), hint=hint)


def call(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None,
    to_stderr: bool = False,
) -> int:
    """Run a command with the terminal's streams (stdout to stderr with `to_stderr`).

    Raises:
        ToolError: the command could not be started.
    """
    log.debug("$ %s", shlex.join(argv))
    try:
        return subprocess.run(
            list(argv), env=dict(env), cwd=cwd, check=False,
            stdout=sys.stderr if to_stderr else None,
        ).returncode
    except OSError as exc:
        raise _not_started(argv, exc, f"is {argv[0]} installed in the environment?") from exc


def tee(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, tail_lines: int = 40
) -> tuple[int, str]:
    """Run a command, copying its output (stdout and stderr) to our stderr as it comes.

    Returns the exit status and the last lines of output. Ctrl-C kills the command.

    Raises:
        ToolError: the command could not be started.
    """
    import collections  # noqa: PLC0415

    log.debug("$ %s", shlex.join(argv))
    try:
        child = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT)
    except OSError as exc:
        raise _not_started(argv, exc, f"is {argv[0]} installed in the environment?") from exc
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    assert child.stdout is not None  # noqa: S101  (stdout=PIPE above)
    with child.stdout:
        try:
            for raw in child.stdout:
                line = raw.decode(errors="replace")
                sys.stderr.write(line)
                tail.append(line)
            return child.wait(), "".join(tail)
        except BaseException:
            child.kill()
            child.wait()
            raise
