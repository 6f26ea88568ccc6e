"""Where a run's command executes: a `Runner`, chosen by the CLI and passed in.

    VenvRunner      the env's virtualenv in the store (`repro run`, the default)
    ImageRunner     the recipe's OCI image, through buildah (`repro run --in image`;
                    builder/image/runner.py)

`run` never asks which one it has: it asks a runner for its identity (what joins the run key
beyond the env id), to prepare (build what the command runs in, only when a run must execute),
to execute a `Job`, and what software a record should name.
"""

from __future__ import annotations

import functools
import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from builder import __version__, hashing, proc
from builder.records import Software
from builder.store import Store, atomic_write, remove_tree

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from builder.env import BuildResult
    from builder.project import Project
    from builder.sandbox import Sandbox

# the runtime folder a run's PYTHONPATH names: its path there -> the module it is made from
RUNTIME_FILES = {"builder/runtime.py": "runtime.py", "builder/tensordiff.py": "tensordiff.py",
                 "builder/__init__.py": None, "sitecustomize.py": "runtime_site.py"}


class Job(NamedTuple):
    """One command to execute, and everything it is given."""

    argv: list[str]
    variables: dict[str, str]  # what repro sets (seed, params, [train] env…): recorded
    secrets: dict[str, str]  # `[train] pass-env` values from the caller: given, never recorded
    box: Sandbox  # where it runs; box.repro/params.json holds the params
    runtime: Path  # a folder holding builder/runtime.py, for the PYTHONPATH
    metrics: str | None = None  # project-relative path of REPRO_METRICS_FILE
    outputs: tuple[str, ...] = ()  # declared outputs, project-relative


class Runner(Protocol):
    """What `run` needs of a place to execute commands."""

    kind: str

    def identity(self) -> str | None:
        """What joins the run key beyond the env id (an image digest), or None."""

    def prepare(self) -> None:
        """Build what the command runs in (called only when a command must execute)."""

    def execute(self, job: Job) -> tuple[int, str]:
        """Run the job; its exit status and the tail of its output."""

    def reaches_network(self, box: Sandbox) -> bool:
        """Whether a command run in this sandbox can reach the network (for the record)."""

    def intact(self) -> str | None:
        """Why what the command ran in is no longer as it was built (None: it is)."""

    def software(self, runtime_digest: str) -> Software:
        """The interpreter and packages a record names."""


def runtime_dir(store: Store) -> tuple[Path, str]:
    """A folder holding only builder/runtime.py, builder/tensordiff.py (stdlib-only modules
    for code inside an environment) and the sitecustomize.py that records the framework's
    facts at exit, for a PYTHONPATH through which nothing else leaks. Checked on every use
    (a few small files): one that holds anything else or other bytes (a planted
    sitecustomize.py) is set aside and made again, never put on a run's path."""
    import tempfile  # noqa: PLC0415

    sources = {dest: Path(__file__).with_name(src).read_bytes() if src else b""
               for dest, src in RUNTIME_FILES.items()}
    digest = hashing.digest_json({k: hashing.digest_bytes(v) for k, v in sources.items()})
    root = store.runtime / digest.removeprefix(hashing.PREFIX)
    if runtime_digest(root) == digest:
        return root, digest
    store.runtime.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=store.runtime, prefix=".tmp-"))
    for name, data in sources.items():
        atomic_write(tmp / name, data)
    if os.path.lexists(root) and runtime_digest(root) != digest:
        moved = store.quarantine_file(root)
        log.warning("%s held more or other than repro's runtime; set aside to %s and made "
                    "again", root, moved)
    try:
        os.rename(tmp, root)
    except OSError:  # another command made it first
        remove_tree(tmp)
        if runtime_digest(root) != digest:
            raise
    return root, digest


def runtime_digest(root: Path) -> str | None:
    """The digest a runtime folder's files make (its name, when it is whole), or None when it
    holds other files than RUNTIME_FILES names, or an __init__.py that is not empty."""
    files = _runtime_files(root)
    if files is None or set(files) != set(RUNTIME_FILES) or files["builder/__init__.py"]:
        return None
    return hashing.digest_json({k: hashing.digest_bytes(v) for k, v in files.items()})


def _runtime_files(root: Path) -> dict[str, bytes] | None:
    """Every file below a runtime folder, or None if it holds a link, a special file, a large
    file or a folder other than builder/ (a link in its own place is never followed)."""
    try:
        if not stat.S_ISDIR(os.lstat(root).st_mode):
            return None
    except OSError:
        return None
    files: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if os.path.relpath(dirpath, root) not in (".", "builder"):
            return None
        for name in [*dirnames, *filenames]:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode) and st.st_size <= 1 << 20:  # repro's modules are small
                files[os.path.relpath(full, root)] = Path(full).read_bytes()
            elif not stat.S_ISDIR(st.st_mode):
                return None
    return files


def software(python: str, packages: dict[str, str], pylock_digest: str, runtime_digest: str,
             image: str | None = None) -> Software:
    """A record's `software`: interpreter, packages, the pylock and runtime it ran with."""
    return Software(python, packages, pylock_digest, __version__, runtime_digest, image)


class VenvRunner:
    """The env's virtualenv in the store."""

    kind = "venv"

    def __init__(self, project: Project) -> None:
        self.project = project

    def identity(self) -> str | None:
        return None  # the env id is already in the key

    @functools.cached_property
    def built(self) -> BuildResult:
        from builder import env  # noqa: PLC0415  (a cache hit builds nothing)

        return env.build(self.project)

    def prepare(self) -> None:
        self.built  # noqa: B018  (building is the point)

    def execute(self, job: Job) -> tuple[int, str]:
        from builder import env  # noqa: PLC0415

        box, venv = job.box, self.built.path
        variables = {**box.environment([venv / "bin"]), "VIRTUAL_ENV": str(venv),
                     **job.variables, **job.secrets, "PYTHONPATH": str(job.runtime),
                     "REPRO_PARAMS_FILE": str(box.repro / "params.json"),
                     "REPRO_FACTS_DIR": str(box.facts)}
        if job.metrics is not None:
            variables["REPRO_METRICS_FILE"] = str(box.inside(job.metrics))
        needed = [venv, job.runtime, *env.interpreter_prefix(venv)]
        argv = box.wrap(job.argv, read_only=needed, data=box.data)
        return proc.supervised(argv, env=variables,
                               cwd=box.root if box.level == "bwrap" else box.work)

    def software(self, runtime_digest: str) -> Software:
        from builder import env  # noqa: PLC0415

        manifest = env.read_manifest(self.built.path)
        return software(self.built.python, manifest.packages, manifest.pylock, runtime_digest)

    def reaches_network(self, box: Sandbox) -> bool:
        return box.network or box.level != "bwrap"  # only bwrap can hide it

    def intact(self) -> str | None:
        from builder import env  # noqa: PLC0415

        return env.tampered(self.project, self.built.env)

    def python(self) -> Path:
        """The env's interpreter, for helpers run inside it (tensordiff)."""
        return self.built.path / "bin" / "python"
