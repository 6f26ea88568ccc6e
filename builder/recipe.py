"""The recipe: find `repro.toml`, parse it, validate it into frozen objects, digest it."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import hashing
from builder.errors import RecipeNotFoundError

RECIPE_FILE = "repro.toml"
SCHEMA = 1

# Target platform → uv's --python-platform. Linux means glibc >= 2.28 (manylinux_2_28),
# the floor of current PyTorch wheels.
PLATFORMS = {
    "linux/x86_64": "x86_64-manylinux_2_28",
    "linux/aarch64": "aarch64-manylinux_2_28",
    "macos/arm64": "aarch64-apple-darwin",
    "macos/x86_64": "x86_64-apple-darwin",
    "windows/x86_64": "x86_64-pc-windows-msvc",
}
STANDARDS = ("bitwise", "statistical", "functional")
SOURCE_KINDS = ("index", "find-links")


SECTIONS = ("recipe", "environment", "image", "code", "data", "train", "reproducibility")


@dataclass(frozen=True)
class Source:
    """Where packages come from. Never part of an identity."""

    url: str
    kind: str = "index"
    packages: tuple[str, ...] = ()


@dataclass(frozen=True)
class Debian:
    """Where `system-packages` come from: Debian suites (the newest version across them
    wins), components, the mirror (never an identity) and an optional snapshot instant."""

    suites: tuple[str, ...] = ("bookworm", "bookworm-updates", "bookworm-security")
    components: tuple[str, ...] = ("main",)
    mirror: str = "https://deb.debian.org/debian"
    security_mirror: str = "https://deb.debian.org/debian-security"
    snapshot: str = ""  # YYYYMMDDTHHMMSSZ: the snapshot.debian.org instant to name

    def identity(self) -> dict[str, Any]:
        return {"suites": list(self.suites), "components": list(self.components),
                "snapshot": self.snapshot}


@dataclass(frozen=True)
class Environment:
    python: str
    platform: str = "linux/x86_64"
    dependencies: tuple[str, ...] = ()
    accelerator: str = "cpu"
    sources: tuple[Source, ...] = ()
    exclude_newer: str | None = None
    system_packages: tuple[str, ...] = ()
    debian: Debian = Debian()

    @property
    def uv_platform(self) -> str:
        return PLATFORMS[self.platform]

    @property
    def cutoff(self) -> str | None:
        """`exclude-newer` as an RFC 3339 instant: a bare date means 00:00 UTC that day.

        uv alone would read a date as a local one, including that day; pip as an instant. One
        explicit instant makes both resolvers, on every machine, see the same packages.
        """
        if self.exclude_newer is None or "T" in self.exclude_newer:
            return self.exclude_newer
        return f"{self.exclude_newer}T00:00:00Z"


@dataclass(frozen=True)
class Image:
    base: str = "scratch"
    workdir: str = "/work"
    entrypoint: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    mtime: int = 0

    @property
    def pinned(self) -> bool:
        return self.base == "scratch" or "@sha256:" in self.base


@dataclass(frozen=True)
class Code:
    include: tuple[str, ...] = ("**",)
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class DataInput:
    """A named input: a file or folder in the project (`path`), or a file fetched from `url`
    and checked against `digest` (placed at `path` for the run)."""

    name: str
    path: str
    description: str = ""
    url: str = ""  # where a fetched input comes from: never part of an identity
    digest: str = ""  # what it must be: blake3:<hex> or sha256:<hex> (URL inputs only)

    def identity(self) -> dict[str, str]:
        """What the recipe digest covers: the path, and for a URL input its digest."""
        return {"path": self.path, **({"digest": self.digest} if self.url else {})}


@dataclass(frozen=True)
class Train:
    command: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    params: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    metrics: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    threads: int | None = None
    sandbox: bool = True  # false: run in the project folder, able to read undeclared files
    network: bool = False  # true: the command may reach the network (where bwrap hides it)
    pass_env: tuple[str, ...] = ()  # the caller's variables passed by name (credentials)
    not_secret: tuple[str, ...] = ()  # [train] env names that only look like credentials


@dataclass(frozen=True)
class Tolerance:
    abs: float | None = None
    rel: float | None = None


@dataclass(frozen=True)
class Nondeterminism:
    source: str
    reason: str
    metric: str | None = None
    tolerance: Tolerance = Tolerance()


@dataclass(frozen=True)
class Reproducibility:
    standard: str = "bitwise"
    tolerance: Mapping[str, Tolerance] = field(default_factory=dict)
    nondeterminism: tuple[Nondeterminism, ...] = ()
    evaluate: tuple[str, ...] = ()
    target: float | None = None  # `time-to-reproduce`, in seconds


@dataclass(frozen=True)
class Recipe:
    path: Path
    name: str
    environment: Environment
    description: str = ""
    schema: int = SCHEMA
    image: Image = Image()
    code: Code = Code()
    data: tuple[DataInput, ...] = ()
    train: Train | None = None
    reproducibility: Reproducibility = Reproducibility()

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def lock_dir(self) -> Path:
        return self.root / "lockfiles" / self.name

    def env_inputs(self) -> dict[str, Any]:
        """The recipe fields a lock is resolved from (sources excluded: never identity)."""
        env = self.environment
        return {
            "python": env.python,
            "platform": env.platform,
            "accelerator": env.accelerator,
            "dependencies": sorted(env.dependencies),
            "exclude-newer": env.exclude_newer or "",
            "system-packages": sorted(env.system_packages),
            "base": self.image.base,
            # only where packages are asked for: a recipe without any keeps its digest
            **({"debian": env.debian.identity()} if env.system_packages else {}),
        }

    def to_identity(self) -> dict[str, Any]:
        """Every field that changes a result, normalised: what the recipe digest covers."""
        r = self.reproducibility
        train = self.train
        return {
            "schema": self.schema,
            "name": self.name,
            "environment": self.env_inputs(),
            "image": {
                "workdir": self.image.workdir,
                "entrypoint": list(self.image.entrypoint),
                "env": dict(self.image.env),
                "labels": dict(self.image.labels),
                "mtime": self.image.mtime,
            },
            "code": {"include": list(self.code.include), "exclude": list(self.code.exclude)},
            "data": {d.name: d.identity() for d in self.data},
            "train": None
            if train is None
            else {
                "command": list(train.command),
                "seeds": list(train.seeds),
                "params": dict(train.params),
                "outputs": list(train.outputs),
                "metrics": train.metrics,
                "env": dict(train.env),
                "threads": train.threads,
                "sandbox": train.sandbox,
                "network": train.network,
            },
            "reproducibility": {
                "standard": r.standard,
                "tolerance": {k: _tol(t) for k, t in r.tolerance.items()},
                "nondeterminism": [
                    {"source": n.source, "metric": n.metric, "tolerance": _tol(n.tolerance)}
                    for n in r.nondeterminism
                ],
                "evaluate": list(r.evaluate),
            },
        }

    def digest(self) -> str:
        """The recipe digest: comments, key order, sources and descriptions never count."""
        return hashing.digest_json(self.to_identity())


def _tol(t: Tolerance) -> dict[str, float | None]:
    return {"abs": t.abs, "rel": t.rel}


def canonical_name(name: str) -> str:
    """A package name as PEP 503 normalises it (packaging's canonicalize_name, unimported)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def find_recipe(explicit: str | os.PathLike[str] | None = None, cwd: Path | None = None) -> Path:
    """The recipe to use: an explicit path (file or directory), else repro.toml upwards.

    Raises:
        RecipeNotFoundError: nothing at the explicit path, or no repro.toml up to the root.
    """
    if explicit:
        path = Path(explicit)
        if path.is_dir():
            path = path / RECIPE_FILE
        if not path.is_file():
            raise RecipeNotFoundError(path, explicit=True)
        return path.resolve()
    start = (cwd or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / RECIPE_FILE).is_file():
            return folder / RECIPE_FILE
    raise RecipeNotFoundError(start, explicit=False)


def line_text(text: str, line: int | None) -> str:
    lines = text.splitlines()
    return lines[line - 1].strip() if line and 0 < line <= len(lines) else ""


