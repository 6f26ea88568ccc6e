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

from builder.errors import InputError, Terminated, ToolError

log = logging.getLogger(__name__)
SUPERVISOR = Path(__file__).with_name("supervise.py")

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
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its output (bytes that are not UTF-8 replaced).

    Raises:
        ToolError: the command exited non-zero (with `check`), could not be started, or
            ran past `timeout` seconds (killed; exit status 124).
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
            errors="replace",
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(args, 124, f"no answer after {timeout:g} s; it was stopped",
                        hint=hint) from exc
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


_ONE_STRING = 128 * 1024  # Linux's MAX_ARG_STRLEN: no one argument or variable may be longer


def _not_started(argv: Sequence[str], exc: OSError, hint: str,
                 env: Mapping[str, str] | None = None) -> InputError | ToolError:
    """Why a command could not start: a command line too long is the input's fault."""
    import errno  # noqa: PLC0415

    if exc.errno == errno.E2BIG:
        variables = [f"{k}={v}" for k, v in (env or {}).items()]
        longest = max([*argv, *variables], key=len)
        what = (f"{longest.partition('=')[0] if longest in variables else 'an argument'} is "
                f"{len(longest)} bytes, over the {_ONE_STRING} any one may be"
                if len(longest) >= _ONE_STRING else
                f"{len(argv)} arguments ({sum(len(a) + 1 for a in argv)} bytes) and "
                f"{len(variables)} variables ({sum(len(v) + 1 for v in variables)} bytes)")
        # the user's command, not the sandbox (bwrap) or namespace wrapper around it
        name = argv[len(argv) - 1 - list(reversed(argv)).index("--") + 1] \
            if "--" in argv[:-1] else argv[0]
        return InputError(f"the command line of {name} is too long to start: {what}",
                          hint="params reach the command as arguments and as REPRO_PARAM_<NAME> "
                               "variables: keep large values in a file declared under [data] "
                               "and pass its path; the command also finds all params in "
                               "REPRO_PARAMS_FILE")
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
        code = subprocess.run(
            list(argv), env=dict(env), cwd=cwd, check=False,
            stdout=sys.stderr if to_stderr else None,
        ).returncode
    except OSError as exc:
        raise _not_started(argv, exc, f"is {argv[0]} installed in the environment?",
                           env) from exc
    return 128 - code if code < 0 else code  # killed by a signal: as a shell says it


def grace_seconds() -> float:
    """How long a command gets to end after SIGTERM before SIGKILL (REPRO_KILL_GRACE)."""
    import math  # noqa: PLC0415

    text = os.environ.get("REPRO_KILL_GRACE", "10")
    try:
        grace = float(text)
    except ValueError:
        grace = -1.0
    if not math.isfinite(grace) or grace < 0:
        raise InputError(f"REPRO_KILL_GRACE={text!r} is not a number of seconds >= 0",
                         hint="e.g. REPRO_KILL_GRACE=10")
    return grace


def _follow(child: subprocess.Popen[bytes], tail_lines: int) -> str:
    """Copy a child's output to our stderr as it comes; the last lines of it.

    Ends at end of file, or once the child has exited and nothing more is waiting: a process
    it left behind holding the pipe open cannot keep repro waiting.
    """
    import codecs  # noqa: PLC0415
    import collections  # noqa: PLC0415
    import select  # noqa: PLC0415

    assert child.stdout is not None  # noqa: S101
    fd = child.stdout.fileno()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    partial = ""

    shown = log.isEnabledFor(logging.INFO)  # -q: only the tail, in the error, if it fails

    def take(chunk: bytes) -> None:
        nonlocal partial
        text = decoder.decode(chunk)
        if shown:
            sys.stderr.write(text)
            sys.stderr.flush()
        *lines, partial = (partial + text).split("\n")
        tail.extend(line + "\n" for line in lines)

    while True:
        if select.select([fd], [], [], 0.2)[0]:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            take(chunk)
        elif child.poll() is not None:
            while select.select([fd], [], [], 0)[0] and (chunk := os.read(fd, 1 << 16)):
                take(chunk)
            break
    if partial:
        tail.append(partial)
    return "".join(tail)


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP end a command as Ctrl-C does: cleanly, nothing half-done left."""
    import signal  # noqa: PLC0415

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_terminated)


def supervised(argv: Sequence[str], *, env: Mapping[str, str], cwd: Path,
               tail_lines: int = 40) -> tuple[int, str]:
    """Run a command under builder/supervise.py, copying its output to our stderr as it comes.

    The command's whole process tree ends with repro: on Ctrl-C, SIGTERM or SIGHUP (which
    raise here, after the tree is ended), or when repro dies, even by SIGKILL. Returns the exit
    status and the last lines of output.

    Raises:
        InputError: the command line is too long to start.
        KeyboardInterrupt, Terminated: repro was interrupted; the tree is gone.
    """
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    grace = grace_seconds()
    command = [sys.executable, "-I", "-S", str(SUPERVISOR), str(grace), str(os.getpid()), "--",
               *argv]
    log.debug("$ %s", shlex.join(argv))
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, _raise_terminated)
    try:
        try:
            child = subprocess.Popen(command, env=dict(env), cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            raise _not_started(argv, exc, f"is {argv[0]} installed?", env) from exc
        assert child.stdout is not None  # noqa: S101  (stdout=PIPE above)
        with child.stdout:
            try:
                tail = _follow(child, tail_lines)
                return child.wait(), tail
            except BaseException:
                child.send_signal(signal.SIGTERM)  # the supervisor ends the tree
                try:
                    child.wait(timeout=grace + 5)
                except subprocess.TimeoutExpired:
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait()
                raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
