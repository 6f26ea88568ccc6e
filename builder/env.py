"""`repro build` and `repro exec`: materialise a lock as a virtualenv in the store, and use it."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder import __version__, hashing, lock, proc, pylock
from builder.errors import BuildError, InputError, ToolError
from builder.recipe import Recipe
from builder.resolve import NO_MACHINE_SOURCES, MachineSources, source_args
from builder.store import MANIFEST, Store, atomic_write

MODES = ("auto", "locked", "frozen")


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


def noop(_: str) -> None:
    pass


def current_lock(
    recipe: Recipe, mode: str, machine: MachineSources, offline: bool,
    say: Callable[[str], None] = noop,
) -> tuple[lock.Lock, bool]:
    """The lock to build from, re-locking a stale one in `auto` mode: (lock, relocked).

    Raises:
        CheckFailed: `locked` mode and the lock is stale, or the lock was tampered with.
    """
    if mode == "frozen":
        return lock.read_lock(recipe), False
    if mode == "locked":
        return lock.check(recipe), False
    current, stale, tampered = lock.inspect(recipe)
    if tampered:
        lock.check(recipe)  # raises with the reasons
    if stale or current is None:
        say(f"Locking {recipe.name}: " + "; ".join(stale))
        lock.write_lock(recipe, machine=machine, offline=offline)
        return lock.read_lock(recipe), True
    return current, False


def build(
    recipe: Recipe,
    *,
    store: Store,
    mode: str = "auto",
    machine: MachineSources = NO_MACHINE_SOURCES,
    offline: bool = False,
    say: Callable[[str], None] = noop,
) -> BuildResult:
    """Materialise the recipe's lock as a virtualenv under `envs/<env id>`.

    A second build of the same env id is a lookup. A build that fails or is interrupted
    leaves nothing under the final name.

    Raises:
        CheckFailed: the lock is stale (`locked`) or tampered with.
        InputError: the recipe's Python is not available on this machine.
        BuildError: the installer failed (hash mismatch, wheel missing offline, …).
    """
    started = time.perf_counter()
    current, relocked = current_lock(recipe, mode, machine, offline, say)
    env_id = current.env_id
    if store.env_ready(env_id):
        store.touch(env_id)
        return _result(store, env_id, cached=True, relocked=relocked, started=started)
    with store.locked(env_id):
        if store.env_ready(env_id):  # another process built it while we waited
            return _result(store, env_id, cached=True, relocked=relocked, started=started)
        say(f"Building {recipe.name} env {env_id[7:19]} ({len(current.packages)} packages)")
        with store.staging(env_id) as staging:
            venv = staging / "env"
            _install(recipe, current, venv, machine, offline)
            _write_manifest(store, recipe, current, venv)
            store.publish(venv, env_id)
    return _result(store, env_id, cached=False, relocked=relocked, started=started)


def _install(
    recipe: Recipe, current: lock.Lock, venv: Path, machine: MachineSources, offline: bool
) -> None:
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
    argv = [proc.uv_bin(), "--no-config", "pip", "sync", "--quiet", "--require-hashes",
            "--python", str(venv / "bin" / "python"), *source_args(recipe, machine),
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


def _write_manifest(store: Store, recipe: Recipe, current: lock.Lock, venv: Path) -> None:
    cfg = (venv / "pyvenv.cfg").read_text()
    m = re.search(r"^version_info\s*=\s*(\S+)", cfg, re.MULTILINE)
    pylock_digest = store.put(current.pylock_path.read_bytes())
    manifest = {
        "format": lock.ENV_FORMAT,
        "env": current.env_id,
        "recipe": recipe.name,
        "python": m.group(1) if m else recipe.environment.python,
        "platform": recipe.environment.platform,
        "pylock": pylock_digest,
        "packages": {p.name: p.version for p in current.packages},
        "builder": __version__,
    }
    atomic_write(venv / MANIFEST, hashing.canonical_json(manifest))


def read_manifest(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((path / MANIFEST).read_bytes())
    return data


def _result(store: Store, env_id: str, *, cached: bool, relocked: bool,
            started: float) -> BuildResult:
    path = store.env_path(env_id)
    manifest = read_manifest(path)
    return BuildResult(env_id, path, cached, manifest["python"], len(manifest["packages"]),
                       relocked, time.perf_counter() - started)


def exec_in(
    recipe: Recipe, argv: Sequence[str], *, store: Store, mode: str = "auto",
    machine: MachineSources = NO_MACHINE_SOURCES, offline: bool = False,
    say: Callable[[str], None] = noop, capture: bool = False,
) -> tuple[BuildResult, int]:
    """Run a command inside the recipe's environment, building it first if needed.

    Returns the build result and the command's exit status.
    """
    if not argv:
        raise InputError("no command given", hint="write the command after --: "
                                                  "repro exec -- python -c 'import numpy'")
    built = build(recipe, store=store, mode=mode, machine=machine, offline=offline, say=say)
    return built, proc.call(argv, env=proc.clean_env(activate(built.path)), cwd=recipe.root,
                            to_stderr=capture)


def activate(venv: Path) -> dict[str, str]:
    """The variables that put a virtualenv first, as its `activate` script would."""
    return {"VIRTUAL_ENV": str(venv),
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}


def status(recipe: Recipe, *, store: Store) -> dict[str, Any]:
    """Recipe, lock and environment state at a glance (reads only local files)."""
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
    ready = store.env_ready(current.env_id)
    info["env"] = {
        "id": current.env_id,
        "built": ready,
        "path": str(store.env_path(current.env_id)) if ready else None,
        "packages": len(current.packages),
        "python": read_manifest(store.env_path(current.env_id))["python"] if ready else None,
    }
    return info
