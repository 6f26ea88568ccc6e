"""The supervisor of a training command: its process tree ends when repro ends.

    python -I -S supervise.py GRACE_SECONDS PARENT_PID -- COMMAND [ARG...]

repro starts every training (and evaluation) command through this script, run as a file by
repro's own interpreter (standard library only; nothing of repro is imported). It

- asks the kernel for SIGTERM when its parent (repro) dies, even by SIGKILL (PR_SET_PDEATHSIG);
- becomes a child subreaper (PR_SET_CHILD_SUBREAPER), so processes the command leaves behind
  (DataLoader workers, daemons) are re-parented to it, not to init, and can be found;
- runs the command in a process group of its own, with PR_SET_PDEATHSIG(SIGKILL) on it too;
- on SIGINT, SIGTERM or SIGHUP (or its parent's death) sends SIGTERM to the whole tree, waits
  GRACE_SECONDS, then SIGKILLs what is left;
- when the command exits, kills whatever it left running, and exits with its status (or
  128 + the signal that ended it).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _descendants(root: int) -> list[int]:
    """Every process below `root`, found through /proc (parents first)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal_tree(group: int, sig: int) -> None:
    """The command's process group, and every process below us that left it (setsid)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)
    for pid in _descendants(os.getpid()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _reap() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _end_tree(group: int, grace: float) -> None:
    """SIGTERM to everything below us, a grace period, then SIGKILL; reap it all."""
    _reap()  # what already exited and was re-parented to us (bwrap's own processes)
    if not _descendants(os.getpid()):
        return  # nothing left behind: the usual end, without a sleep
    _signal_tree(group, signal.SIGTERM)
    deadline = time.monotonic() + grace
    pause = 0.002  # most trees end at once (bwrap's own process, a moment after bwrap)
    while time.monotonic() < deadline and _descendants(os.getpid()):
        _reap()
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
    _signal_tree(group, signal.SIGKILL)
    while _descendants(os.getpid()):
        _reap()
        time.sleep(0.01)
    _reap()


class _Stop(Exception):
    """A stop signal arrived (raised from the handler, so a blocking wait returns)."""


def _stop(signum: int, _frame: object) -> None:
    raise _Stop(signum)


def _become(command: list[str]) -> None:
    """In the forked child: a process group of its own, killed with us; then the command."""
    try:
        os.setpgid(0, 0)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        for sig in _STOPS:
            signal.signal(sig, signal.SIG_DFL)
        os.execvp(command[0], command)  # noqa: S606  (the argv repro built; no shell)
    except OSError as exc:
        os.write(2, f"cannot start {command[0]}: {exc.strerror}\n".encode())
        os._exit(126 if isinstance(exc, PermissionError) else 127)


def main(argv: list[str]) -> int:
    grace = float(argv[1])
    parent = int(argv[2])  # repro's pid, as repro said it: not what getppid() says now
    command = argv[4:]
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # repro died before we could ask
        return 128 + signal.SIGTERM
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    for sig in _STOPS:
        signal.signal(sig, _stop)
    child = os.fork()
    if child == 0:
        _become(command)
    with contextlib.suppress(OSError):  # the child did it first, or already exec'd
        os.setpgid(child, child)
    status = None
    try:
        while status is None:
            pid, code = os.waitpid(-1, 0)  # orphans re-parented to us are reaped too
            if pid == child:
                status = code
    except ChildProcessError:
        pass
    except _Stop as stop:
        for sig in _STOPS:
            signal.signal(sig, signal.SIG_IGN)
        _end_tree(child, grace)
        return 128 + int(stop.args[0])
    _end_tree(child, 0.5)  # what the command left behind
    if status is None:
        return 1
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
