"""`repro build` and `repro exec`: materialise a lock as a virtualenv in the store, and use it."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder import __version__, faults, lock, proc, pylock, seal
from builder.errors import BuildError, InputError, StoreError, ToolError
from builder.records import EnvManifest
from builder.resolve import source_args
from builder.store import MANIFEST, atomic_write

if TYPE_CHECKING:
    from builder.project import Project
    from builder.store import Envs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildResult:
    env: str
    path: Path
    cached: bool
    python: str
    packages: int
    relocked: bool = False
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"env": self.env, "path": str(self.path), "cached": self.cached,
                "python": self.python, "packages": self.packages, "relocked": self.relocked,
                "seconds": round(self.seconds, 3)}


def build(project: Project) -> BuildResult:
    """Materialise the project's lock as a virtualenv under `envs/<env id>`.

    A second build of the same env id is a lookup. A build that fails or is interrupted
    leaves nothing under the final name.

    Raises:
        CheckFailed: the lock is stale (`locked`) or tampered with.
        InputError: the recipe's Python is not available on this machine.
        BuildError: the installer failed (hash mismatch, wheel missing offline, …).
    """
    started = time.perf_counter()
    current = project.lock
    store = project.store
    envs = store.envs
    env_id = current.env_id
    envs.use(env_id)  # in use from here: gc leaves it alone (or has removed it already)
    if envs.ready(env_id) and _intact(project, env_id):
        envs.touch(env_id)
        return _result(project, cached=True, started=started)
    with envs.locked(env_id):
        if envs.ready(env_id) and _intact(project, env_id):  # built while we waited
            return _result(project, cached=True, started=started)
        log.info("Building %s env %s (%d packages)", project.recipe.name, env_id[7:19],
                 len(current.packages))
        with envs.staging(env_id) as staging:
            venv = staging / "env"
            _install(project, venv)
            _write_manifest(project, venv, seal.seal(venv))
            faults.point("env-before-publish")
            envs.publish(venv, env_id)
    return _result(project, cached=False, started=started)


def tampered(project: Project, env_id: str) -> str | None:
    """Why the env is not as it was sealed (sizes, mtimes, modes or entries differ), or None.
    An env built before sealing is sealed now, as it is."""
    path = project.store.envs.path(env_id)
    manifest = read_manifest(path)
    if manifest.fingerprint is None:
        log.info("Sealing env %s (built before repro sealed environments)", env_id[7:19])
        atomic_write(path / MANIFEST, dataclasses.replace(
            manifest, **seal.seal(path)._asdict()).encode())
        return None
    if seal.fingerprint(path) != manifest.fingerprint:
        return (f"the environment {path} was changed after it was built: files were edited, "
                "added or removed")
    return None


def _intact(project: Project, env_id: str) -> bool:
    """Whether the env can be used; a tampered one is set aside (rebuilt by the caller)."""
    return usable(project, project.store.envs, env_id, tampered)


def usable(project: Project, area: Envs, env_id: str,
           check: Callable[[Project, str], str | None], runner: str | None = None) -> bool:
    """Whether an env of `area` passes `check`; one that does not (or whose manifest cannot
    be read) is set aside, and the run keys answered by runs made in it (by `runner`, or
    any) train again. Shared by the virtualenv and Nix backends."""
    try:
        why = check(project, env_id)
    except StoreError as exc:
        why = exc.message
    if why is None:
        return True
    moved = area.set_aside(env_id)
    dropped = project.store.records.drop_answers(env_id, runner=runner)
    log.warning("%s; it was moved to %s and is built again%s", why, moved,
                f"; the {len(dropped)} run key(s) answered by runs made in it train again"
                if dropped else "")
    return False


def _install(project: Project, venv: Path) -> None:
    recipe, current, offline = project.recipe, project.lock, project.offline
    env = proc.clean_env({"UV_PYTHON_DOWNLOADS": "never"})
    python = recipe.environment.python
    try:
        proc.run([proc.uv_bin(), "--no-config", "venv", "--relocatable", "--quiet",
                  "--python", python, "--python-preference", "only-system", str(venv)], env=env)
    except ToolError as exc:
        if "No interpreter found" in exc.stderr or "not found" in exc.stderr:
            raise InputError(
                f"{recipe.path}: environment.python = {python!r}: no such interpreter on "
                "this machine",
                hint=f"install CPython {python} (for example `uv python install {python}`), "
                     "or change environment.python and run `repro lock`",
            ) from exc
        raise
    requirements = venv.parent / "requirements.txt"
    requirements.write_text(pylock.requirements_txt(current.packages))
    faults.point("env-installing")
    # Copies, not hard links into uv's cache (sealing, or a tampered file, would reach the
    # cache; uv's `clone` falls back to hard links on ext4); bytecode compiled now, so a
    # read-only env imports fast and gains no files at run time.
    argv = [proc.uv_bin(), "--no-config", "pip", "sync", "--quiet", "--require-hashes",
            "--link-mode=copy", "--compile-bytecode",
            "--python", str(venv / "bin" / "python"), *source_args(recipe, project.machine),
            str(requirements)]
    if offline:
        argv.append("--offline")
    try:
        proc.run(argv, env=env)
    except ToolError as exc:
        raise BuildError(
            f"installing the lock of {recipe.name} failed; nothing was stored\n{exc.message}",
            hint=_install_hint(exc.stderr, offline),
        ) from exc


def _install_hint(stderr: str, offline: bool) -> str:
    if "Hash mismatch" in stderr:
        return ("a downloaded file does not match the sha256 in pylock.toml: restore the lock "
                "from version control (it may have been edited), or re-lock")
    if offline:
        return "a locked wheel is not in uv's cache: run the build once without --offline"
    return "see the installer's message above"


def _write_manifest(project: Project, venv: Path, sealed: seal.Seal) -> None:
    recipe, current = project.recipe, project.lock
    cfg = (venv / "pyvenv.cfg").read_text()
    m = re.search(r"^version_info\s*=\s*(\S+)", cfg, re.MULTILINE)
    manifest = EnvManifest(
        env=current.env_id,
        recipe=recipe.name,
        python=m.group(1) if m else recipe.environment.python,
        platform=recipe.environment.platform,
        pylock=project.store.blobs.put(current.pylock_bytes),
        packages={p.name: p.version for p in current.packages},
        builder=__version__,
        tree=sealed.tree,
        fingerprint=sealed.fingerprint,
        files=sealed.files,
    )
    atomic_write(venv / MANIFEST, manifest.encode())


def read_manifest(path: Path) -> EnvManifest:
    """The manifest of the environment at `path`.

    Raises:
        StoreError: it is unreadable.
    """
    return EnvManifest.decode((path / MANIFEST).read_bytes(), path / MANIFEST)


def _result(project: Project, *, cached: bool, started: float) -> BuildResult:
    env_id = project.lock.env_id
    path = project.store.envs.path(env_id)
    manifest = read_manifest(path)
    return BuildResult(env_id, path, cached, manifest.python, len(manifest.packages),
                       project.relocked, time.perf_counter() - started)


def exec_in(project: Project, argv: Sequence[str], *, capture: bool = False,
            builder: Callable[[Project], BuildResult] | None = None) -> tuple[BuildResult, int]:
    """Run a command inside the project's environment (the virtualenv, or what `builder`
    builds: `nix.build`), building it first if needed.

    Returns the build result and the command's exit status.
    """
    if not argv:
        raise InputError("no command given", hint="write the command after --: "
                                                  "repro exec -- python -c 'import numpy'")
    built = (builder or build)(project)
    return built, proc.call(argv, env=proc.clean_env(activate(built.path)), cwd=project.root,
                            to_stderr=capture)


def interpreter_prefix(venv: Path) -> list[Path]:
    """The installation a virtualenv's interpreter belongs to (pyvenv.cfg's `home`, less
    `bin`): the command must see it, wherever it lies."""
    try:
        cfg = (venv / "pyvenv.cfg").read_text()
    except OSError:
        return []
    m = re.search(r"^home\s*=\s*(.+?)\s*$", cfg, re.MULTILINE)
    return [Path(m.group(1)).parent] if m else []


def activate(venv: Path) -> dict[str, str]:
    """The variables that put a virtualenv first, as its `activate` script would (and keep
    Python from writing bytecode into the sealed env)."""
    return {"VIRTUAL_ENV": str(venv), "PYTHONDONTWRITEBYTECODE": "1",
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}


def status(project: Project) -> dict[str, Any]:
    """Recipe, lock and environment state at a glance (reads only local files)."""
    recipe, envs = project.recipe, project.store.envs
    current, stale, tampered = lock.inspect(recipe)
    info: dict[str, Any] = {
        "recipe": {"name": recipe.name, "path": str(recipe.path), "digest": recipe.digest()},
        "lock": {"path": str(recipe.lock_dir), "state": "fresh", "reasons": []},
        "env": None,
    }
    if tampered or stale:
        info["lock"]["state"] = "tampered" if tampered else "stale"
        info["lock"]["reasons"] = tampered or stale
    if current is None:
        info["lock"]["state"] = "missing"
        return info
    ready = envs.ready(current.env_id)
    info["env"] = {
        "id": current.env_id,
        "built": ready,
        "path": str(envs.path(current.env_id)) if ready else None,
        "packages": len(current.packages),
        "python": read_manifest(envs.path(current.env_id)).python if ready else None,
    }
    return info
