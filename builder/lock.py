"""`repro lock`: resolve a recipe into lockfiles/<name>/{pylock.toml,repro.lock}; check it."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from builder import hashing, pylock
from builder.errors import CheckFailed, InputError, LockfileError
from builder.pylock import Package
from builder.recipe import Recipe
from builder.resolve import resolve
from builder.store import atomic_write

if TYPE_CHECKING:
    from builder.debian import Deb
    from builder.project import Project

LOCK_VERSION = 1
ENV_FORMAT = "repro.env/v1"
PYLOCK = "pylock.toml"
REPRO_LOCK = "repro.lock"
_HEADER = (
    "Written by `repro lock`; do not edit by hand.\n"
    "Identities are BLAKE3 digests of RFC 8785 JSON; see docs/architecture.md.\n"
)


@dataclass(frozen=True)
class Lock:
    """A recipe's lock as read from disk."""

    recipe: Recipe
    packages: list[Package]
    env_id: str
    pylock_digest: str
    data: dict[str, Any] = field(default_factory=dict)
    pylock_bytes: bytes = b""  # pylock.toml as read: stored beside records, copied into images

    @property
    def pylock_path(self) -> Path:
        return self.recipe.lock_dir / PYLOCK

    @property
    def debs(self) -> list[Deb]:
        """The locked Debian packages (repro.lock's `[[debian]]`), by name."""
        return debs_of(self.data)


def debs_of(data: dict[str, Any]) -> list[Deb]:
    """Raises: LockfileError: a `[[debian]]` entry lacks a field."""
    from builder.debian import Deb  # noqa: PLC0415

    try:
        return [Deb.from_toml(d) for d in data.get("debian", [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise LockfileError(f"repro.lock: a [[debian]] entry is incomplete ({exc})",
                            hint="re-create it with `repro lock`") from exc


@dataclass(frozen=True)
class LockResult:
    recipe: str
    env: str
    lockfile: Path
    changed: bool
    packages: int
    lock: Lock

    def to_json(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "env": self.env, "lockfile": str(self.lockfile),
                "changed": self.changed, "packages": self.packages,
                "system_packages": [{"name": d.name, "version": d.version,
                                     "sha256": d.sha256} for d in self.lock.debs]}


def base_digest(recipe: Recipe) -> str:
    """The part of `image.base` an identity covers: its digest (or "scratch")."""
    base = recipe.image.base
    return base.split("@", 1)[1] if "@" in base else base


def env_id(recipe: Recipe, packages: list[Package], base: str | None = None,
           debs: Sequence[Deb] = ()) -> str:
    """The env id: interpreter, platform, every locked artefact, system packages (and the
    exact .deb files they were locked to), base, format.

    `base` is the base's digest when the recipe names it by tag (the lock resolved it).
    """
    return hashing.digest_json(
        {
            "format": ENV_FORMAT,
            "interpreter": {"implementation": "cpython", "version": recipe.environment.python},
            "platform": recipe.environment.platform,
            "packages": sorted((p.identity() for p in packages), key=lambda p: p["name"]),
            "system-packages": sorted(recipe.environment.system_packages),
            "base": base or base_digest(recipe),
            # only where some are locked: every env id made before stays what it was
            **({"debian": [d.identity() for d in debs]} if debs else {}),
        }
    )


def base_ref(recipe: Recipe, locked: Lock) -> str:
    """The base to build on: the recipe's if pinned, else its tag at the lock's digest."""
    if recipe.image.pinned:
        return recipe.image.base
    return f"{recipe.image.base}@{locked.data['base']}"


def _locked_base(recipe: Recipe) -> str | None:
    path = recipe.lock_dir / REPRO_LOCK
    if not path.is_file():
        return None
    try:
        base = tomllib.loads(path.read_text()).get("base", "")
    except tomllib.TOMLDecodeError:
        return None
    return str(base) if str(base).startswith("sha256:") else None


def write_lock(
    project: Project, *, resolver: str = "uv", upgrade: bool = False, update_base: bool = False,
    upgrade_system: bool = False,
) -> LockResult:
    """Resolve the recipe and write its lock files, rewriting them only when bytes change.

    Versions in the current lock are kept where the recipe still allows them, unless `upgrade`.
    An image base named by tag keeps the digest the lock recorded; `update_base` asks the
    registry what the tag names now.

    Raises:
        InputError: the base is a tag with no recorded digest, and `update_base` is off.
        ResolutionError, ToolError: from the resolver.
        RegistryError: the tag could not be resolved.
    """
    recipe = project.recipe
    base = base_digest(recipe)
    if not recipe.image.pinned:
        recorded = _locked_base(recipe)
        if update_base:
            from builder.registry import resolve_tag  # noqa: PLC0415

            base = resolve_tag(recipe.image.base)
        elif recorded is None:
            raise InputError(
                f"{recipe.path}: image.base {recipe.image.base!r} is not pinned by digest",
                hint="write the base as name@sha256:<digest>, or run `repro lock --update-base` "
                     "to resolve the tag now and record its digest in the lock")
        else:
            base = recorded
    packages = resolve(recipe, resolver, project.machine, offline=project.offline,
                       upgrade=upgrade)
    from builder import debian  # noqa: PLC0415

    debs = debian.resolve(recipe, project.store, _previous_debs(recipe),
                          upgrade=upgrade or upgrade_system)
    pylock_text = pylock.dumps(packages, recipe.environment.python, recipe.environment.platform)
    identity = env_id(recipe, packages, base, debs)
    pylock_digest = hashing.digest_bytes(pylock_text.encode())
    lock_text = _repro_lock_text(recipe, identity, pylock_digest, base, debs)
    changed = False
    for name, text in ((PYLOCK, pylock_text), (REPRO_LOCK, lock_text)):
        path = recipe.lock_dir / name
        data = text.encode()
        if not path.is_file() or path.read_bytes() != data:
            atomic_write(path, data)
            changed = True
    written = Lock(recipe, packages, identity, pylock_digest, tomllib.loads(lock_text),
                   pylock_text.encode())
    return LockResult(recipe.name, identity, recipe.lock_dir / REPRO_LOCK, changed,
                      len(packages), written)


def _previous_debs(recipe: Recipe) -> list[Deb]:
    path = recipe.lock_dir / REPRO_LOCK
    try:
        return debs_of(tomllib.loads(path.read_text())) if path.is_file() else []
    except (tomllib.TOMLDecodeError, LockfileError):
        return []


def _repro_lock_text(recipe: Recipe, identity: str, pylock_digest: str, base: str,
                     debs: Sequence[Deb] = ()) -> str:
    import tomlkit  # noqa: PLC0415  (only writing needs it)

    inputs = recipe.env_inputs()
    doc = tomlkit.document()
    for line in _HEADER.splitlines():
        doc.add(tomlkit.comment(line))
    doc["version"] = LOCK_VERSION
    doc["env"] = identity
    doc["pylock"] = pylock_digest
    interp = tomlkit.inline_table()
    interp.update({"implementation": "cpython", "version": recipe.environment.python})
    doc["interpreter"] = interp
    doc["platform"] = recipe.environment.platform
    doc["base"] = base
    doc["system-packages"] = inputs["system-packages"]
    table = tomlkit.table()
    table.add(tomlkit.comment("the recipe's environment inputs this lock was resolved from"))
    table["digest"] = hashing.digest_json(inputs)
    for key, value in inputs.items():
        table[key] = value
    doc["inputs"] = table
    if debs:
        entries = tomlkit.aot()
        for d in debs:
            entries.append(tomlkit.item(d.to_toml()))
        doc["debian"] = entries
    return tomlkit.dumps(doc)


def read_lock(recipe: Recipe) -> Lock:
    """Read a recipe's lock files (without checking them against the recipe).

    Raises:
        LockfileError: a file is missing or unreadable.
    """
    lock_path = recipe.lock_dir / REPRO_LOCK
    py_path = recipe.lock_dir / PYLOCK
    for path in (lock_path, py_path):
        if not path.is_file():
            raise LockfileError(f"{path} does not exist: {recipe.name} has not been locked",
                                hint="run `repro lock`")
    try:
        data = tomllib.loads(lock_path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise LockfileError(f"{lock_path}: not valid TOML: {exc}",
                            hint="re-create it with `repro lock`") from exc
    raw = py_path.read_bytes()
    packages = pylock.loads(raw.decode(), py_path)
    base = None if recipe.image.pinned else str(data.get("base", ""))
    return Lock(recipe, packages, env_id(recipe, packages, base, debs_of(data)),
                hashing.digest_bytes(raw), data, raw)


def inspect(recipe: Recipe) -> tuple[Lock | None, list[str], list[str]]:
    """The lock as read (None if unreadable), and why it does not match its recipe: stale
    inputs and signs of tampering. Reads and hashes the lock files once; no network."""
    try:
        current = read_lock(recipe)
    except LockfileError as exc:
        return None, [exc.message], []
    data = current.data
    if data.get("version") != LOCK_VERSION:
        return current, [f"repro.lock is version {data.get('version')!r}; this repro writes "
                         f"{LOCK_VERSION}"], []
    stale = _input_changes(data.get("inputs", {}), recipe.env_inputs())
    tampered = []
    if data.get("pylock") != current.pylock_digest:
        tampered.append(f"{PYLOCK} was changed after locking: its digest is "
                        f"{current.pylock_digest}, repro.lock says {data.get('pylock')}")
    elif data.get("env") != current.env_id and not stale:
        tampered.append(f"repro.lock's env id {data.get('env')} does not match its packages "
                        f"({current.env_id})")
    return current, stale, tampered


def _input_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    changes = []
    for key, value in new.items():
        before = old.get(key)
        if before == value:
            continue
        if isinstance(value, list) and isinstance(before, list):
            added = [v for v in value if v not in before]
            removed = [v for v in before if v not in value]
            parts = [f"added {', '.join(added)}" if added else "",
                     f"removed {', '.join(removed)}" if removed else ""]
            changes.append(f"{_key(key)}: " + "; ".join(p for p in parts if p))
        else:
            changes.append(f"{_key(key)}: {before!r} in the lock, {value!r} in the recipe")
    return changes


def _key(name: str) -> str:
    return "image.base" if name == "base" else f"environment.{name}"


def check(recipe: Recipe) -> Lock:
    """The lock, if it matches the recipe.

    Raises:
        CheckFailed: the lock is missing, stale or tampered with (each reason listed).
    """
    current, stale, tampered = inspect(recipe)
    if tampered or stale or current is None:
        refuse(recipe, stale, tampered)
    return current


def refuse(recipe: Recipe, stale: Sequence[str], tampered: Sequence[str]) -> NoReturn:
    """Raise the failed check for a tampered (first) or stale lock.

    Raises:
        CheckFailed: always, with each reason listed.
    """
    if tampered:
        raise CheckFailed(f"{recipe.lock_dir} does not match its own digests",
                          reasons=tampered,
                          hint="restore the lock files from version control, or re-create "
                               "them with `repro lock`")
    raise CheckFailed(f"{recipe.lock_dir} is out of date with {recipe.path}",
                      reasons=stale, hint="run `repro lock` and commit the result")
