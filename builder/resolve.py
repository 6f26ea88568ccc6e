"""Resolve a recipe's dependencies for its target interpreter and platform (uv or pip-tools).

Sources never reach an identity. The recipe declares where users get packages; a machine
may replace those with its own (`--find-links`), and whatever was found on this host is
written into the lock under the declared source it stands for, never as a host path.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform as host_platform
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from builder import proc
from builder.errors import InputError, LockfileError, ResolutionError, ToolError
from builder.hashing import sha256_file
from builder.pylock import Artefact, Package, loads
from builder.recipe import Recipe, Source, canonical_name

if TYPE_CHECKING:
    from packaging.tags import Tag

log = logging.getLogger(__name__)
RESOLVERS = ("uv", "pip-tools")
PYPI = "https://pypi.org/simple"


@dataclass(frozen=True)
class MachineSources:
    """Where this machine finds packages: replaces the recipe's declared sources."""

    find_links: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.find_links)


NO_MACHINE_SOURCES = MachineSources()


def source_args(recipe: Recipe, machine: MachineSources) -> list[str]:
    """Index and find-links flags for uv or pip: the machine's when given, else the recipe's."""
    if machine:
        return [arg for link in machine.find_links for arg in ("--find-links", link)]
    args = []
    for src in recipe.environment.sources:
        flag = "--extra-index-url" if src.kind == "index" else "--find-links"
        args += [flag, src.url]
    return args


def resolve(
    recipe: Recipe, resolver: str = "uv", machine: MachineSources = NO_MACHINE_SOURCES,
    *, offline: bool = False, upgrade: bool = False,
) -> list[Package]:
    """The locked packages for a recipe, with every URL one a user elsewhere can fetch.

    The versions already in the recipe's lock are preferred (both resolvers read their
    output file as preferences) unless `upgrade`, so a re-lock moves only what must move.

    Raises:
        ResolutionError: no set of packages satisfies the dependencies.
        InputError: a package came only from this machine and the recipe declares no source.
        ToolError: the resolver failed for another reason.
    """
    if resolver not in RESOLVERS:
        raise InputError(f"unknown resolver {resolver!r}", hint="use uv or pip-tools")
    with tempfile.TemporaryDirectory(prefix="repro-lock-") as tmp:
        req = Path(tmp) / "requirements.in"
        req.write_text("".join(d + "\n" for d in recipe.environment.dependencies))
        current = recipe.lock_dir / "pylock.toml"
        if current.is_file() and not upgrade:
            try:
                pins = loads(current.read_text(errors="replace"), current)
            except LockfileError as exc:  # the lock being replaced may be what is broken
                log.warning("%s; resolving without its versions as preferences", exc.message)
            else:
                shutil.copyfile(current, req.with_name("pylock.toml"))
                req.with_name("pins.txt").write_text(
                    "".join(f"{p.name}=={p.version}\n" for p in pins))
        if resolver == "uv":
            packages = _resolve_uv(recipe, machine, req, offline)
        else:
            packages = _resolve_piptools(recipe, machine, req)
    return [_publish(p, recipe, machine) for p in packages]


def _explain(recipe: Recipe, exc: ToolError) -> ResolutionError | ToolError:
    text = exc.stderr
    if "No solution found" in text or "unsatisfiable" in text or "ResolutionImpossible" in text \
            or "Could not find a version" in text or "No matching distribution" in text:
        hint = ""
        m = re.search(r"Because (\S+) was not found in the package registry", text)
        if m:
            hint = f"check the spelling of `{m.group(1)}` in environment.dependencies"
        return ResolutionError(recipe.path, text, hint=hint)
    return exc


def _resolve_uv(recipe: Recipe, machine: MachineSources, req: Path, offline: bool) -> list[Package]:
    env = recipe.environment
    out = req.with_name("pylock.toml")
    # --no-config: a uv.toml or pyproject.toml above the temp folder must not steer the lock.
    argv = [proc.uv_bin(), "--no-config", "pip", "compile", req.name, "-o", out.name,
            "--no-header", "--no-annotate", "--python-version", env.python, "--python-platform",
            env.uv_platform, *source_args(recipe, machine), "--quiet"]
    if env.cutoff:
        argv += ["--exclude-newer", env.cutoff]
    if offline:
        argv.append("--offline")
    try:
        proc.run(argv, cwd=req.parent, env=proc.clean_env({"UV_PYTHON_DOWNLOADS": "never"}))
    except ToolError as exc:
        raise _explain(recipe, exc) from exc
    return loads(out.read_text(), out)


def _resolve_piptools(recipe: Recipe, machine: MachineSources, req: Path) -> list[Package]:
    env = recipe.environment
    host = f"{sys.version_info.major}.{sys.version_info.minor}"
    host_plat = f"{sys.platform}/{host_platform.machine()}".replace("darwin", "macos")
    wanted = ".".join(env.python.split(".")[:2])
    if host != wanted or host_plat != env.platform:
        raise InputError(
            f"pip-tools resolves for the interpreter it runs on (Python {host}, {host_plat}); "
            f"{recipe.path} targets Python {env.python} on {env.platform}",
            hint="use --resolver uv, which resolves for any target",
        )
    argv = [sys.executable, "-m", "piptools", "compile", "--generate-hashes", "--no-header",
            "--no-annotate", "--strip-extras", "--quiet", "--no-config",
            "--output-file", "pins.txt", "--index-url", PYPI, *source_args(recipe, machine),
            req.name]
    if env.cutoff:
        argv += ["--pip-args", f"--uploaded-prior-to {env.cutoff}"]
    try:
        proc.run(argv, cwd=req.parent, env=proc.clean_env({"PIP_CONFIG_FILE": "/dev/null"}))
    except ToolError as exc:
        raise _explain(recipe, exc) from exc
    from packaging.utils import parse_wheel_filename  # noqa: PLC0415

    pins = re.findall(r"^([A-Za-z0-9._-]+)==(\S+)((?:\s*\\?\s*--hash=sha256:[0-9a-f]+)+)",
                      req.with_name("pins.txt").read_text(), re.MULTILINE)
    compatible = _target_tags(env.python, env.platform)
    packages = []
    for name, version, hash_text in pins:
        hashes = set(re.findall(r"sha256:([0-9a-f]{64})", hash_text))
        files = _index_files(canonical_name(name), recipe, machine)
        chosen = [a for a in files if a.sha256 in hashes]
        sdists = [a for a in chosen if not a.filename.endswith(".whl")]
        wheels = tuple(a for a in chosen if a.filename.endswith(".whl")
                       and parse_wheel_filename(a.filename)[3] & compatible)
        packages.append(Package(canonical_name(name), version,
                                sdists[0] if sdists else None, wheels))
    return packages


def _target_tags(python: str, platform: str) -> frozenset[Tag]:
    """Wheel tags a target accepts, as uv's --python-platform for that target does."""
    from packaging import tags  # noqa: PLC0415

    major, minor = (int(x) for x in python.split(".")[:2])
    system, arch = platform.split("/")
    if system == "linux":
        plats = [f"manylinux_2_{m}_{arch}" for m in range(28, 4, -1)]
        plats += [f"manylinux{v}_{arch}" for v in ("2014", "2010", "1")]
    elif system == "macos":
        plats = list(tags.mac_platforms((12, 0), arch))
    else:
        plats = ["win_amd64"]
    interp = f"cp{major}{minor}"
    return frozenset([*tags.cpython_tags((major, minor), platforms=plats),
                      *tags.compatible_tags((major, minor), interp, plats)])


def _index_files(name: str, recipe: Recipe, machine: MachineSources) -> list[Artefact]:
    """Every file of a project that the sources offer, with sha256 (PEP 691 JSON or a folder)."""
    import urllib.request  # noqa: PLC0415

    files: list[Artefact] = []
    for folder in machine.find_links:
        for path in sorted(Path(folder).glob("*")):
            if _project_of(path.name) == name:
                files.append(Artefact(path.resolve().as_uri(), sha256_file(path),
                                      path.stat().st_size))
    indexes = [PYPI] + [s.url for s in recipe.environment.sources
                        if s.kind == "index" and not machine]
    for index in indexes:
        request = urllib.request.Request(  # noqa: S310  (https index URLs only)
            f"{index}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                data = json.load(response)
        except OSError:
            continue
        files += [Artefact(f["url"], f["hashes"]["sha256"], f.get("size"),
                           _upload_time(f.get("upload-time")))
                  for f in data.get("files", []) if "sha256" in f.get("hashes", {})]
    return files


def _upload_time(text: str | None) -> dt.datetime | None:
    """PEP 700 upload time, to the second (as uv writes it), in UTC."""
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).replace(microsecond=0)


def _project_of(filename: str) -> str:
    return str(canonical_name(re.split(r"-\d", filename, maxsplit=1)[0]))


def _declared_source(name: str, sources: Sequence[Source]) -> Source | None:
    for src in sources:
        if name in src.packages:
            return src
    return next((s for s in sources if not s.packages), None)


def _publish(pkg: Package, recipe: Recipe, machine: MachineSources) -> Package:
    """Replace host-local URLs by the recipe's declared source for the package.

    Raises:
        InputError: the package was found only on this machine and no source is declared,
            or the machine's sources lacked a package the recipe pins to a source of its own.
    """
    src = _declared_source(pkg.name, recipe.environment.sources)
    if not any(a.is_local for a in pkg.artefacts):
        if machine and src is not None and pkg.name in src.packages:
            raise InputError(
                f"{pkg.name} {pkg.version} must come from {src.url} (environment.sources in "
                f"{recipe.path}), but the machine sources that replace it "
                f"({', '.join(machine.find_links)}) do not hold it, so it resolved elsewhere",
                hint=f"put {pkg.name}'s file in the --find-links folder, or drop --find-links",
            )
        return pkg
    if src is None:
        raise InputError(
            f"{pkg.name} {pkg.version} was found only in a folder on this machine, and "
            f"{recipe.path} declares no source for it: the lock would hold a host path",
            hint=f'declare where users get it: [[environment.sources]] url = "…" '
                 f'packages = ["{pkg.name}"]',
        )

    def moved(a: Artefact) -> Artefact:
        return replace(a, url=f"{src.url}/{quote(a.filename)}") if a.is_local else a

    return replace(pkg, sdist=moved(pkg.sdist) if pkg.sdist else None,
                   wheels=tuple(moved(w) for w in pkg.wheels),
                   index=src.url if src.kind == "index" else pkg.index)
