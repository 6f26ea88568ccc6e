"""Every error repro raises on purpose, and the exit code each one maps to.

    ReproError                      exit 3 unless a subclass says otherwise
    ├── InputError                  exit 2: bad input the user can fix
    │   ├── RecipeError             a recipe file: file, line, key path, fix
    │   ├── RecipeNotFoundError     no repro.toml where we looked
    │   ├── LockfileError           a lock file that cannot be read
    │   └── ResolutionError         no packages satisfy the dependencies (resolver's words)
    ├── CheckFailed                 exit 1: a check ran and said no (stale lock, tampering)
    │   └── NothingMatches          nothing recorded (here or on the remote) matches a target
    ├── ToolError                   exit 3: an external command failed
    ├── BuildError                  exit 3: a build step failed (nothing was stored)
    ├── RunFailed                   exit 3: the training command failed (its record says how)
    ├── RegistryError               exit 3: a registry is unreachable, refuses, or serves bad bytes
    ├── FetchError                  exit 3: a data input's URL failed, or served other bytes
    ├── MissingPart                 exit 3: what re-making a run needs is not to be had
    └── StoreError                  exit 3: the store is missing or holds a damaged entry

`Terminated` (a BaseException, like KeyboardInterrupt) means repro got SIGTERM or SIGHUP: the
command's process tree was ended and repro exits 128 + the signal. Anything else that escapes
is a bug in repro: `repro` exits 4 (EXIT_BUG), prints one line and
writes the traceback to a log file. A closed output pipe (`repro runs | head -1`) exits 141,
as a process killed by SIGPIPE does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

EXIT_CHECK = 1
EXIT_INPUT = 2
EXIT_TOOL = 3
EXIT_BUG = 4
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141


def did_you_mean(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """A ` (did you mean 'x'?)` suffix, or '' when nothing is close."""
    import difflib  # noqa: PLC0415  (only errors need it; it costs every start-up otherwise)

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f" (did you mean '{close[0]}'?)" if close else ""


class ReproError(Exception):
    """Base of every error repro raises on purpose."""

    exit_code = EXIT_TOOL

    def __init__(self, message: str, *, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(message + (f"\nhint: {hint}" if hint else ""))


class InputError(ReproError):
    """Bad input: a recipe, an argument, a file the user gave."""

    exit_code = EXIT_INPUT


class RecipeError(InputError):
    """A recipe that does not parse or validate; says where and how to fix it."""

    def __init__(
        self,
        path: Path,
        problem: str,
        *,
        key: str = "",
        line: int | None = None,
        source_line: str = "",
        hint: str = "",
    ) -> None:
        self.path = path
        self.key = key
        self.line = line
        message = f"{path}{f':{line}' if line else ''}: {problem}"
        if source_line:
            message += f"\n  {line} | {source_line}"
        super().__init__(message, hint=hint)


class RecipeNotFoundError(InputError):
    """No recipe at the given path or in any parent of the working directory."""

    def __init__(self, searched: Path, explicit: bool) -> None:
        self.searched = searched
        if explicit:
            message = f"no recipe at {searched}"
        else:
            message = f"no repro.toml in {searched} or any parent directory"
        super().__init__(
            message,
            hint="run repro inside a project, or pass --recipe PATH (or set REPRO_RECIPE)",
        )


class LockfileError(InputError):
    """A lock file that is missing, unreadable or not in the expected format."""


class CheckFailed(ReproError):
    """A check ran and failed: a stale lock, a tampered file."""

    exit_code = EXIT_CHECK

    def __init__(self, message: str, *, reasons: Sequence[str] = (), hint: str = "") -> None:
        self.reasons = list(reasons)
        text = message + "".join(f"\n  - {r}" for r in self.reasons)
        super().__init__(text, hint=hint)


class ToolError(ReproError):
    """An external command failed; carries its command line and the tail of its stderr."""

    def __init__(
        self, argv: Sequence[str], returncode: int, stderr: str, *, hint: str = ""
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        tail = "\n".join(stderr.strip().splitlines()[-25:])
        message = f"command failed with exit status {returncode}: {' '.join(self.argv)}"
        if tail:
            message += "\n" + "\n".join("  " + line for line in tail.splitlines())
        super().__init__(message, hint=hint)


class ResolutionError(InputError):
    """The resolver could not find a set of packages; carries its explanation."""

    def __init__(self, recipe: Path, explanation: str, *, hint: str = "") -> None:
        self.explanation = explanation
        lines = [line.removeprefix("error: ") for line in explanation.strip().splitlines()]
        body = "\n".join("  " + line for line in lines)
        super().__init__(
            f"{recipe}: [environment] dependencies cannot be resolved:\n{body}",
            hint=hint or "change environment.dependencies (or environment.python) so they agree",
        )


class BuildError(ReproError):
    """A build step failed; nothing was stored under the environment's id."""


class RunFailed(ReproError):
    """The training command failed or did not produce what the recipe declares."""

    def __init__(self, message: str, record: str, *, hint: str = "",
                 exit_code: int = EXIT_TOOL) -> None:
        self.record = record
        self.exit_code = exit_code  # EXIT_INPUT when the recipe declared what cannot be
        super().__init__(f"{message}\n  the failure is recorded as {record}", hint=hint)


class RegistryError(ReproError):
    """A registry could not be reached, refused us, or served bytes that fail their digest."""


class FetchError(ReproError):
    """A `[data]` input named by URL could not be fetched, or its bytes were not the declared
    digest (nothing was stored)."""


class NothingMatches(CheckFailed):
    """Nothing recorded, in the store or on the remote, matches what was asked for."""


class MissingPart(ReproError):
    """A run cannot be re-made: its code snapshot, a data input or a blob is not to be had."""


class StoreError(ReproError):
    """The store holds a damaged or missing entry (a record naming a blob that is gone)."""

    def __init__(self, message: str, path: Path | None = None, *, hint: str = "") -> None:
        self.path = path
        super().__init__(message, hint=hint or "run `repro cache verify` to check the whole "
                                               "store; the entry is re-made when next needed")


class Terminated(BaseException):  # a signal, not an error: like KeyboardInterrupt
    """repro received SIGTERM or SIGHUP while a command ran; the command's tree was ended."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"terminated by signal {signum}")
