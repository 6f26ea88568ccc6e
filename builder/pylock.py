"""PEP 751 `pylock.toml`: the locked packages, read and written in one canonical layout."""

from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from builder.errors import LockfileError
from builder.recipe import canonical_name

# PEP 751 markers for each target platform of recipe.PLATFORMS.
_PLATFORM_MARKERS = {
    "linux/x86_64": 'sys_platform == "linux" and platform_machine == "x86_64"',
    "linux/aarch64": 'sys_platform == "linux" and platform_machine == "aarch64"',
    "macos/arm64": 'sys_platform == "darwin" and platform_machine == "arm64"',
    "macos/x86_64": 'sys_platform == "darwin" and platform_machine == "x86_64"',
    "windows/x86_64": 'sys_platform == "win32" and platform_machine == "AMD64"',
}


@dataclass(frozen=True)
class Artefact:
    """One file of a locked package: an sdist or a wheel, and where users download it."""

    url: str
    sha256: str
    size: int | None = None
    upload_time: dt.datetime | None = None

    @property
    def filename(self) -> str:
        return unquote(urlsplit(self.url).path.rsplit("/", 1)[-1])

    @property
    def is_local(self) -> bool:
        """A file on this host (a find-links folder): must never reach a committed lock."""
        return urlsplit(self.url).scheme in ("", "file")


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sdist: Artefact | None = None
    wheels: tuple[Artefact, ...] = ()
    index: str | None = None

    @property
    def artefacts(self) -> tuple[Artefact, ...]:
        return ((self.sdist,) if self.sdist else ()) + self.wheels

    def identity(self) -> dict[str, Any]:
        """What an env id covers of a package: name, version, artefact sha256s."""
        return {
            "name": self.name,
            "version": self.version,
            "artefacts": sorted(a.sha256 for a in self.artefacts),
        }


def environment_marker(python: str, platform: str) -> str:
    """The PEP 508 marker a lock for this interpreter and platform is valid on."""
    version = (
        f'python_full_version == "{python}"'
        if python.count(".") == 2
        else f'python_version == "{python}"'
    )
    return f"{version} and {_PLATFORM_MARKERS[platform]}"


def dumps(packages: list[Package], python: str, platform: str) -> str:
    """The canonical pylock.toml text: sorted packages, no timestamps of our own, no host paths."""
    import tomlkit  # noqa: PLC0415  (only writing needs it)

    doc = tomlkit.document()
    doc["lock-version"] = "1.0"
    doc["environments"] = [environment_marker(python, platform)]
    minor = ".".join(python.split(".")[:2])
    doc["requires-python"] = f"=={minor}.*"
    doc["created-by"] = "repro"
    packs = tomlkit.aot()
    for pkg in sorted(packages, key=lambda p: p.name):
        table = tomlkit.table()
        table["name"] = pkg.name
        table["version"] = pkg.version
        if pkg.index:
            table["index"] = pkg.index
        if pkg.sdist:
            table["sdist"] = _artefact_table(pkg.sdist)
        if pkg.wheels:
            wheels = tomlkit.array()
            wheels.extend(_artefact_table(w) for w in sorted(pkg.wheels, key=lambda a: a.url))
            wheels.multiline(True)
            table["wheels"] = wheels
        packs.append(table)
    doc["packages"] = packs
    return tomlkit.dumps(doc)


def _artefact_table(a: Artefact) -> Any:
    import tomlkit  # noqa: PLC0415

    t = tomlkit.inline_table()
    t["url"] = a.url
    if a.upload_time is not None:
        t["upload-time"] = a.upload_time
    if a.size is not None:
        t["size"] = a.size
    hashes = tomlkit.inline_table()
    hashes["sha256"] = a.sha256
    t["hashes"] = hashes
    return t


def loads(text: str, path: Path) -> list[Package]:
    """Read the packages of a pylock.toml (ours or another tool's).

    Raises:
        LockfileError: not TOML, or a package without a version or sha256.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LockfileError(f"{path}: not valid TOML: {exc}",
                            hint="re-create it with `repro lock`") from exc
    packages = []
    for i, raw in enumerate(data.get("packages", [])):
        try:
            packages.append(
                Package(
                    name=canonical_name(raw["name"]),
                    version=str(raw["version"]),
                    sdist=_artefact(raw["sdist"], raw) if "sdist" in raw else None,
                    wheels=tuple(_artefact(w, raw) for w in raw.get("wheels", [])),
                    index=raw.get("index"),
                )
            )
        except (KeyError, TypeError) as exc:
            raise LockfileError(
                f"{path}: packages[{i}] lacks {exc}", hint="re-create it with `repro lock`"
            ) from exc
    return packages


def _artefact(raw: dict[str, Any], package: dict[str, Any]) -> Artefact:
    url = raw.get("url") or raw.get("path")
    if not url:
        raise KeyError(f"a url for {package.get('name')}")
    upload = raw.get("upload-time")
    if isinstance(upload, dt.datetime) and upload.tzinfo is None:
        upload = upload.replace(tzinfo=dt.UTC)
    return Artefact(url=url, sha256=raw["hashes"]["sha256"], size=raw.get("size"),
                    upload_time=upload)


def requirements_txt(packages: list[Package]) -> str:
    """The lock as a hash-pinned requirements file: what the installer is given.

    Only the wheels' hashes are allowed where a package has wheels, so the installer can
    never fall back to building the sdist (slow, and not the artefact that was locked).
    """
    lines = []
    for pkg in sorted(packages, key=lambda p: p.name):
        hashes = " ".join(f"--hash=sha256:{a.sha256}" for a in (pkg.wheels or pkg.artefacts))
        lines.append(f"{pkg.name}=={pkg.version} {hashes}")
    return "\n".join(lines) + "\n"
