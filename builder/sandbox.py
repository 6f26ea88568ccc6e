"""A private place for every run: exactly the files its run key covers, and nothing else.

    level    what the command sees
    bwrap    a private copy of the code files at the project's own path, the declared data
             read-only, the rest of the machine read-only, a private /tmp, no network (unless
             `[train] network = true`), its own PID namespace; the store and the project's
             other files are absent
    folder   (no working bubblewrap) the same private folder as its working directory, data as
             symlinks; the project's other files are absent from it, but absolute paths and
             the network still reach the machine
    off      (`[train] sandbox = false`) the project folder itself, as before sandboxes

Code files are copied (reflinked where the filesystem can), never hard-linked: a hard link
shares the inode, so a write or chmod inside the sandbox would change the project. Outputs are
read from the sandbox and placed into the project only after a run succeeded, atomically and
never through a symlink; what else the command wrote stays in the sandbox, which is removed
afterwards unless `--keep-sandbox`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from builder.errors import InputError
from builder.project import Project
from builder.recipe import Recipe
from builder.store import replacing

log = logging.getLogger(__name__)
LEVELS = ("bwrap", "folder", "off")
# The environment every command starts from; nothing of the caller's reaches it unless named
# in `[train] pass-env`. HOME, TMPDIR and PATH are set per run.
# PYTHONDONTWRITEBYTECODE: a sealed env is never written, not even bytecode (see seal.py)
BASE_ENV = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC", "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1"}
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
# Folders a run must never write into: version control, environments, tool caches, locks
NEVER_OUTPUTS = (".git", ".venv", "venv", ".hg", ".svn", "__pycache__", ".pytest_cache",
                 ".mypy_cache", ".ruff_cache", "lockfiles", ".repro", ".github", ".gitlab")


@functools.cache
def bwrap_works() -> bool:
    """Whether bubblewrap is installed and may make namespaces here (checked once)."""
    if shutil.which("bwrap") is None:
        return False
    probe = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
             "--unshare-net", "--unshare-pid", "--die-with-parent", "true"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def asked_level() -> str:
    """REPRO_SANDBOX: `folder` asks for less than bwrap; empty or `bwrap` for the default.

    Raises:
        InputError: anything else.
    """
    asked = os.environ.get("REPRO_SANDBOX", "")
    if asked not in ("", "bwrap", "folder"):
        raise InputError(f"REPRO_SANDBOX={asked!r} is not a sandbox level",
                         hint="unset it, or set it to folder (bwrap is the default)")
    return asked


def level_for(recipe: Recipe) -> str:
    """The strongest level this machine gives the recipe (REPRO_SANDBOX=folder asks less)."""
    train = recipe.train
    if train is not None and not train.sandbox:
        return "off"
    if asked_level() == "folder":
        return "folder"
    if bwrap_works():
        return "bwrap"
    _say_no_bwrap()
    return "folder"


@functools.cache
def _say_no_bwrap() -> None:
    log.warning("bubblewrap (bwrap) %s here: runs get the folder sandbox, which cannot hide "
                "the network or the machine's files (install bubblewrap for the stronger one)",
                "is not installed" if shutil.which("bwrap") is None else "cannot make namespaces")


def copy_file(src: Path, dest: Path) -> None:
    """A private copy of a file with its mode (`blobs.kernel_copy`: shared blocks where the
    file system can, else the bytes); never a hard link."""
    from builder.blobs import kernel_copy  # noqa: PLC0415

    with src.open("rb") as fin, dest.open("wb") as fout:
        if not kernel_copy(fin, fout, os.fstat(fin.fileno()).st_size):
            shutil.copyfileobj(fin, fout, 1 << 20)
    os.chmod(dest, stat.S_IMODE(src.stat().st_mode))


def _through_symlink(root: Path, rel: str) -> str | None:
    """The first component of `rel` under `root` that is a symlink, if any."""
    here = root
    for part in PurePosixPath(rel).parts:
        here = here / part
        if here.is_symlink():
            return str(here.relative_to(root))
    return None


def check_outputs(project: Project) -> None:
    """Refuse outputs (and the metrics file) that overlap what the run reads or the project
    keeps: a data input, a code file, lockfiles/, the recipe, or a path through a symlink.
    Nothing is deleted or written before this passes.

    Raises:
        InputError: the first overlap, naming the key and the path.
    """
    recipe = project.recipe
    train = recipe.train
    if train is None:
        return
    root = project.root
    data = [(d.name, (root / d.path).resolve()) for d in recipe.data]
    code = set(project.code.paths)
    declared = [(f"train.outputs[{i}]", out) for i, out in enumerate(train.outputs)]
    if train.metrics:
        declared.append(("train.metrics", train.metrics))
    for key, rel in declared:
        linked = _through_symlink(root, rel)
        if linked is not None:
            raise InputError(f"{recipe.path}: {key} = {rel!r} goes through the symlink "
                             f"{linked}: repro never writes through a symlink",
                             hint="declare the output at its real path inside the project")
        target = root / rel
        problem = ""
        for name, path in data:
            if target == path or path in target.parents or target in path.parents:
                problem = f"is, or is inside, the data input data.{name} ({path})"
        if rel in code:
            problem = "is a code file counted in the code digest"
        if target == recipe.path or target in recipe.lock_dir.parents \
                or recipe.lock_dir in [target, *target.parents]:
            problem = "is the recipe or its lock files"
        top = PurePosixPath(rel).parts[0]
        if top in NEVER_OUTPUTS:
            problem = (f"is inside {top}/, which repro and other tools run or read (a git "
                       "hook or config, a .pth file run at interpreter start)")
        if problem:
            raise InputError(f"{recipe.path}: {key} = {rel!r} {problem}; a run must not "
                             "replace what it reads or what the project keeps",
                             hint="write outputs to their own path, e.g. out/model.pt")
        if target.is_dir() and not target.is_symlink():
            raise InputError(f"{recipe.path}: {key}: {rel} is a directory in {root}; outputs "
                             "are files", hint="declare the files inside it, or write an "
                                               "archive of it")


@dataclass
class Sandbox:
    """One run's private place on the host, and how the command is put into it."""

    level: str
    network: bool
    root: Path  # the sandbox folder in the store
    work: Path  # where the command's files are, on the host
    cwd: Path  # the command's working directory as it sees it
    project: Path
    store: Path
    data: list[tuple[Path, str]] = field(default_factory=list)  # (host path, as declared)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def repro(self) -> Path:
        """repro's own files for the command (the params file), read-only inside."""
        return self.root / "repro"

    @property
    def facts(self) -> Path:
        """Where the command's processes write their framework facts (REPRO_FACTS_DIR)."""
        return self.root / "facts"

    def inside(self, rel: str) -> Path:
        """Where the command sees a project-relative path."""
        return self.cwd / rel

    def environment(self, path: Sequence[Path]) -> dict[str, str]:
        """The variables every command starts from: BASE_ENV, PATH, HOME and TMPDIR."""
        return {**BASE_ENV, "PATH": ":".join([*map(str, path), SYSTEM_PATH]),
                "HOME": str(self.home),
                "TMPDIR": "/tmp" if self.level == "bwrap" else str(self.tmp)}  # noqa: S108

    def wrap(self, argv: Sequence[str], *, read_only: Sequence[Path] = (),
             data: Sequence[tuple[Path, str]] = ()) -> list[str]:
        """The command line that runs `argv` in this sandbox (bwrap's, at that level).

        read_only: host folders the command needs as they are (the env, the interpreter).
        data: (host path, path relative to the project) of each declared data input.
        """
        if self.level != "bwrap":
            return list(argv)
        args = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                "--bind", str(self.tmp), "/tmp",  # noqa: S108  (a private /tmp)
                "--tmpfs", str(self.store)]  # the store: absent, but for what follows
        args += ["--bind", str(self.work), str(self.project)]
        for host, rel in data:
            args += ["--ro-bind", str(host), os.path.normpath(self.project / rel)]
        for folder in (*read_only, self.repro):
            args += ["--ro-bind", str(folder), str(folder)]
        args += ["--bind", str(self.home), str(self.home),
                 "--bind", str(self.facts), str(self.facts), "--chdir", str(self.cwd),
                 # no capabilities: even as root the command cannot unmount its way out,
                 # remount / writable, or reach the host's /proc, hostname or processes
                 "--cap-drop", "ALL", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                 "--die-with-parent", "--new-session"]
        if not self.network:
            # /run holds the host's service sockets (docker, dbus): reachable through a
            # read-only bind, so hidden with the network
            args += ["--unshare-net", "--tmpfs", "/run"]
        return [*args, "--", *argv]


def _depth(recipe: Recipe) -> int:
    """How many folders above the project the declared data reaches (`../x` is one)."""
    deepest = 0
    for d in recipe.data:
        parts = PurePosixPath(os.path.normpath(d.path)).parts
        ups = next((i for i, part in enumerate(parts) if part != ".."), len(parts))
        deepest = max(deepest, ups)
    return deepest


@contextlib.contextmanager
def sandbox(project: Project, *, keep: bool = False,
            extra: Sequence[tuple[Path, str]] = ()) -> Iterator[Sandbox]:
    """A sandbox holding the project's code files and its data, ready for a command.

    extra: (host file, project-relative path) pairs to place as well (outputs to evaluate).
    """
    recipe = project.recipe
    level = level_for(recipe)
    network = bool(recipe.train and recipe.train.network)
    data = data_binds(project)
    with project.store.sandboxes.create(keep=keep) as root:
        for name in ("home", "tmp", "repro", "facts"):
            (root / name).mkdir()
        store = project.store.root
        if level == "off":
            box = Sandbox(level, True, root, project.root, project.root, project.root, store,
                          data)
            _place_fetched(project, data)
        else:
            work = root.joinpath(*["up"] * _depth(recipe), "work")
            work.mkdir(parents=True)
            box = Sandbox(level, network, root, work,
                          project.root if level == "bwrap" else work, project.root, store, data)
            _fill(box, project, extra)
        if keep:
            log.info("Sandbox kept at %s", root)
        yield box


def _fill(box: Sandbox, project: Project, extra: Sequence[tuple[Path, str]]) -> None:
    """Copy the code files in; place the data (mount points, or symlinks); make room for
    the outputs."""
    root = project.root
    for rel in project.code.paths:
        src, dest = root / rel, box.work / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dest.symlink_to(os.readlink(src))  # as the code digest counts it: its target text
        else:
            copy_file(src, dest)
    for host, rel in box.data:
        if Path(rel).is_absolute():
            continue
        dest = Path(os.path.normpath(box.work / rel))
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink() or dest.is_file():
            dest.unlink()  # also counted as code (include = ["**"]): the data is what it reads
        if box.level == "bwrap":  # a mount point, covered read-only by the data itself
            dest.mkdir(exist_ok=True) if host.is_dir() else dest.touch()
        else:
            dest.symlink_to(host)
    for host, rel in extra:
        dest = box.work / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        copy_file(host, dest)
    train = project.recipe.train
    for rel in (*(train.outputs if train else ()), *([train.metrics] if train and
                                                      train.metrics else [])):
        (box.work / rel).parent.mkdir(parents=True, exist_ok=True)


def data_binds(project: Project) -> list[tuple[Path, str]]:
    """(host path, path as the recipe writes it) of each data input: relative to the
    project, or absolute (bound at its own path, over a private /tmp or the project). An
    input named by URL is the store's checked copy, fetched first when missing.

    Raises:
        FetchError: a URL input could not be fetched.
    """
    from builder import download  # noqa: PLC0415

    return [(download.local_path(project.store, project.recipe, d) if d.url
             else (project.root / d.path).resolve(), d.path) for d in project.recipe.data]


def _place_fetched(project: Project, data: list[tuple[Path, str]]) -> None:
    """Without a sandbox the command reads the project folder: put each URL input's stored
    copy at its path there, unless it is already (never over a file with other bytes).

    Raises:
        InputError: another file is at an input's path.
    """
    from builder import hashing  # noqa: PLC0415

    for entry, (host, rel) in zip(project.recipe.data, data, strict=True):
        if not entry.url:
            continue
        target = project.root / rel
        if target.is_file() and not target.is_symlink():
            if hashing.file_digest(target) == project.data[entry.name]:
                continue
            raise InputError(f"{project.recipe.path}: data.{entry.name} is fetched to {rel}, "
                             f"but {target} holds other bytes; repro does not overwrite it",
                             hint="move that file away, or give the input another path")
        place(project.root, rel, from_file(host))


def read_output(box: Sandbox, rel: str) -> Path:
    """The host path of an output the command wrote, if it is a plain file there.

    Raises:
        InputError: it is a symlink or a directory (never followed, never stored).
    """
    path = box.work / rel
    linked = _through_symlink(box.work, rel)
    if linked is not None:
        raise InputError(f"the declared output {rel} was written as (or through) the symlink "
                         f"{linked}; repro never follows a symlink out of a run",
                         hint=f"write {rel} as a plain file")
    if path.is_dir():
        raise InputError(f"the declared output {rel} is a directory; outputs are files",
                         hint=f"write a file at {rel} (an archive of the folder), or list "
                              "the files in it in train.outputs")
    return path


def place(project_root: Path, rel: str, fill: Callable[[BinaryIO], object]) -> None:
    """Put a file into the project at `rel`, its bytes written by `fill`: parent folders
    made, a temp name in the same folder, then one rename; never through a symlink. If `fill`
    raises (a blob that fails its digest), the project keeps what it had.

    Raises:
        InputError: a folder on the way is a symlink (it changed since the run began).
    """
    placeable(project_root, rel)
    target = project_root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    with replacing(target) as tmp, tmp.open("wb") as f:
        fill(f)


def placeable(project_root: Path, rel: str) -> None:
    """Whether `rel` can be placed: no folder on its way is a symlink (now).

    Raises:
        InputError: one is (it changed since the run began).
    """
    linked = _through_symlink(project_root, str(PurePosixPath(rel).parent))
    if linked is not None:
        raise InputError(f"{project_root / linked} became a symlink during the run; {rel} "
                         "was not placed", hint="remove the symlink, then run again")


def from_file(source: Path) -> Callable[[BinaryIO], object]:
    """A `place` filler copying a file."""
    def fill(dest: BinaryIO) -> None:
        with source.open("rb") as f:
            shutil.copyfileobj(f, dest, 1 << 20)
    return fill
