"""Debian packages locked by hash: `[environment] system-packages` resolved by apt itself.

apt-get runs as a subprocess with a private configuration and state folder (`-o Dir::…`),
never the host's: `update` fetches the suites' signed indexes (checked with the Debian
archive keyring), `install --print-uris` resolves the named packages and their
dependencies (Depends, Pre-Depends, alternatives, virtual packages; the newest version
across the suites wins) against an empty dpkg status (a `scratch` base), and
`apt-cache show name=version` gives each chosen file's sha256, size and pool path. Nothing
is installed. The lock keeps, per package: name, version, architecture, filename, size,
sha256, the pool URL and the snapshot.debian.org URL a user can fetch later.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from builder import proc
from builder.errors import InputError, ToolError

if TYPE_CHECKING:
    from builder.recipe import Recipe
    from builder.store import Store

log = logging.getLogger(__name__)

ARCHES = {"linux/x86_64": "amd64", "linux/aarch64": "arm64"}
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


@dataclass(frozen=True)
class Deb:
    """One locked `.deb`."""

    name: str
    version: str
    architecture: str
    filename: str  # the pool path, as the index gives it: pool/main/g/gcc-12/libgomp1_….deb
    size: int
    sha256: str
    url: str  # where it is fetched now (the mirror's pool): never an identity
    snapshot: str  # where snapshot.debian.org keeps it

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version,
                "architecture": self.architecture, "sha256": self.sha256}

    def to_toml(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_toml(cls, d: dict[str, Any]) -> Deb:
        return cls(str(d["name"]), str(d["version"]), str(d["architecture"]),
                   str(d["filename"]), int(d["size"]), str(d["sha256"]), str(d["url"]),
                   str(d.get("snapshot", "")))


def architecture(recipe: Recipe) -> str:
    """Raises: InputError: the platform has no Debian architecture repro locks for."""
    arch = ARCHES.get(recipe.environment.platform)
    if arch is None:
        raise InputError(f"{recipe.path}: environment.system-packages needs a Linux platform, "
                         f"not {recipe.environment.platform}",
                         hint='use platform = "linux/x86_64" or "linux/aarch64"')
    return arch


class Apt:
    """apt-get and apt-cache with a private configuration, state and cache under `root`."""

    def __init__(self, recipe: Recipe, root: Path) -> None:
        self.recipe, self.root = recipe, root
        self.arch = architecture(recipe)
        deb = recipe.environment.debian
        lines = [f"deb [arch={self.arch}] {self.mirror(suite)} {suite} "
                 f"{' '.join(deb.components)}" for suite in deb.suites]
        for sub in ("etc/apt.conf.d", "etc/preferences.d", "state/lists/partial",
                    "cache/archives/partial"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "etc" / "sources.list").write_text("\n".join(lines) + "\n")
        (root / "state" / "status").write_text("")  # scratch: nothing installed

    def mirror(self, suite: str) -> str:
        deb = self.recipe.environment.debian
        return deb.security_mirror if suite.endswith("-security") else deb.mirror

    def options(self) -> list[str]:
        r = self.root
        opts = {"Dir::Etc": r / "etc", "Dir::Etc::SourceList": r / "etc/sources.list",
                "Dir::Etc::SourceParts": r / "etc/sources.list.d",
                "Dir::Etc::Parts": r / "etc/apt.conf.d",
                "Dir::Etc::Preferences": r / "etc/preferences",
                "Dir::Etc::PreferencesParts": r / "etc/preferences.d",
                "Dir::State": r / "state", "Dir::State::status": r / "state/status",
                "Dir::Cache": r / "cache", "Dir::Etc::Trusted": KEYRING,
                "Dir::Etc::TrustedParts": r / "etc/trusted.gpg.d",
                "APT::Architecture": self.arch, "APT::Architectures": self.arch,
                "Acquire::Languages": "none", "Debug::NoLocking": "1",
                "APT::Install-Recommends": "false", "APT::Install-Suggests": "false"}
        return [arg for k, v in opts.items() for arg in ("-o", f"{k}={v}")]

    def run(self, tool: str, *args: str) -> str:
        env = proc.clean_env({"LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"})
        argv = [tool, *self.options(), *args]
        done = proc.run(argv, env=env, check=False)
        if done.returncode != 0:  # apt explains unmet dependencies on stdout
            raise ToolError(argv, done.returncode, f"{done.stdout}\n{done.stderr}".strip())
        return done.stdout

    def update(self) -> None:
        if not KEYRING.is_file():
            raise ToolError(["apt-get", "update"], 1, f"{KEYRING} is missing",
                            hint="install debian-archive-keyring: repro checks the suites' "
                                 "signatures with it")
        try:
            self.run("apt-get", "update", "-q", "--error-on=any")
        except ToolError as exc:
            missing = re.search(r"The repository '(\S+) (\S+) Release' does not have a "
                                r"Release file", exc.stderr)
            if missing:
                raise InputError(f"{self.recipe.path}: environment.debian.suites: "
                                 f"{missing.group(2)!r} is not a suite of {missing.group(1)}",
                                 hint='check its name (e.g. "bookworm-updates")') from exc
            raise ToolError(exc.argv, exc.returncode, exc.stderr, hint=(
                f"the Debian mirrors ({self.recipe.environment.debian.mirror}, "
                f"{self.recipe.environment.debian.security_mirror}) could not be read for "
                f"{', '.join(self.recipe.environment.debian.suites)}: check the network and "
                "[environment.debian]; a lock whose .deb files are in the store builds "
                "without them")) from exc
        lists = [p.name for p in (self.root / "state" / "lists").iterdir()]
        deb = self.recipe.environment.debian
        for suite in deb.suites:
            for component in deb.components:
                if not any(f"_dists_{suite}_{component}_binary-{self.arch}_Packages" in n
                           for n in lists):
                    raise InputError(f"{self.recipe.path}: environment.debian.components: "
                                     f"{suite} has no {component!r} for {self.arch}",
                                     hint='Debian\'s components are "main", "contrib", '
                                          '"non-free", "non-free-firmware"')

    def resolve(self, wanted: list[str]) -> list[tuple[str, str]]:
        """(name, version) of every package `apt-get install` would fetch for `wanted`.

        Raises:
            InputError: a package does not exist (with the nearest names), or the
                dependencies cannot be satisfied (apt's explanation shown).
        """
        try:
            out = self.run("apt-get", "install", "--print-uris", "-q", "--yes", *wanted)
        except ToolError as exc:
            raise self._unresolvable(exc, wanted) from exc
        found = []
        for line in out.splitlines():
            m = re.match(r"^'(\S+)' (\S+)_(\S+)_(\S+)\.deb (\d+) ", line)
            if m:
                found.append((m.group(2), _unquote_version(m.group(3))))
        return found

    def _unresolvable(self, exc: ToolError, wanted: list[str]) -> InputError | ToolError:
        text = exc.stderr
        recipe = self.recipe.path
        virtual = re.search(r"Package (\S+) is a virtual package provided by:\n((?:\s+\S+.*\n)+)",
                            text + "\n")
        if virtual:
            providers = sorted({ln.split()[0] for ln in virtual.group(2).splitlines()
                                if ln.strip()})
            return InputError(f"{recipe}: environment.system-packages: {virtual.group(1)} is "
                              "a virtual package", hint=f"name one that provides it: "
                                                        f"{', '.join(providers)}")
        version = re.search(r"Version '(\S+)' for '(\S+)' was not found", text)
        if version:
            have = re.findall(r"^Version: (\S+)$", self.run("apt-cache", "show",
                                                            version.group(2)), re.MULTILINE)
            return InputError(f"{recipe}: environment.system-packages: "
                              f"{version.group(2)}={version.group(1)} is not in "
                              f"{', '.join(self.recipe.environment.debian.suites)}",
                              hint=f"the suites have {', '.join(have) or 'no version'}; an "
                                   "older one is on snapshot.debian.org only")
        missing = re.findall(r"Unable to locate package (\S+)", text)
        if missing:
            names = self.run("apt-cache", "pkgnames").split()
            near = difflib.get_close_matches(missing[0], names, n=3)
            return InputError(
                f"{recipe}: environment.system-packages: {missing[0]} is no package of "
                f"{', '.join(self.recipe.environment.debian.suites)} ({self.arch})",
                hint=f"did you mean {', '.join(near)}?" if near else
                "search https://packages.debian.org for its name")
        suites = ", ".join(self.recipe.environment.debian.suites)
        none = re.findall(r"Package '(\S+)' has no installation candidate", text)
        if none:
            return InputError(f"{recipe}: environment.system-packages: {none[0]} has no "
                              f"version in {suites} ({self.arch})",
                              hint="add the suite that has it to [environment.debian] suites")
        if any(m in text for m in ("unmet dependencies", "not installable", "broken packages")):
            chain = [ln.strip() for ln in text.splitlines()
                     if "Depends:" in ln or "PreDepends:" in ln or "is not installable" in ln]
            return InputError(
                f"{recipe}: environment.system-packages {', '.join(wanted)} cannot be "
                "installed together:\n  " + "\n  ".join(chain or text.strip().splitlines()),
                hint="drop or change the package apt names, or add the suite that has it")
        return exc

    def show(self, chosen: list[tuple[str, str]]) -> list[dict[str, str]]:
        """Each chosen package's index paragraph (Filename, Size, SHA256, …)."""
        out = self.run("apt-cache", "show", "--no-all-versions",
                       *(f"{n}={v}" for n, v in chosen))
        paragraphs = [_paragraph(p) for p in re.split(r"\n\s*\n", out.strip()) if p.strip()]
        by_key = {(p["Package"], p["Version"]): p for p in paragraphs}
        return [by_key[c] for c in chosen]

    def release_date(self, suite: str) -> str:
        """The suite's Release date as a snapshot instant (YYYYMMDDTHHMMSSZ)."""
        import email.utils  # noqa: PLC0415

        lists = self.root / "state" / "lists"
        for path in sorted(lists.glob(f"*_dists_{suite}_InRelease")):
            m = re.search(r"^Date: (.+)$", path.read_text(errors="replace"), re.MULTILINE)
            if m:
                return email.utils.parsedate_to_datetime(m.group(1)).strftime(
                    "%Y%m%dT%H%M%SZ")
        return ""


def _chosen(apt: Apt, wanted: list[str], previous: list[Deb]) -> list[tuple[str, str]]:
    """What apt resolves, the previous lock's versions asked for first (a re-lock moves only
    what must move); without them when the suites no longer hold them all."""
    names = {w.split("=")[0] for w in wanted}
    pinned = [w for w in wanted if "=" in w] + [
        f"{d.name}={d.version}" for d in previous if d.name not in {
            w.split("=")[0] for w in wanted if "=" in w}]
    if previous:
        try:
            return apt.resolve(sorted(set(pinned) | {w for w in wanted if "=" not in w
                                                     and w not in {d.name for d in previous}}))
        except (InputError, ToolError):
            log.warning("the locked versions of %s could not all be kept (the pool moved "
                        "on, or the suites or packages changed): resolved the newest",
                        ", ".join(sorted(names)))
    return apt.resolve(wanted)


def _paragraph(text: str) -> dict[str, str]:
    """An RFC 822-style index paragraph (python-debian's format) as a dict."""
    from debian.deb822 import Deb822  # noqa: PLC0415

    return dict(Deb822(text.splitlines()))


def _unquote_version(text: str) -> str:
    from urllib.parse import unquote  # noqa: PLC0415

    return unquote(text)


def resolve(recipe: Recipe, store: Store, previous: list[Deb] | None = None, *,
            upgrade: bool = False) -> list[Deb]:
    """The locked `.deb` files for the recipe's system-packages, sorted by name. The
    versions of `previous` (the current lock) are kept where the suites still have them,
    unless `upgrade`; where the pool has moved on, the newest are taken, and it is said.

    Raises:
        InputError: unknown package, unsatisfiable dependencies, a base other than scratch.
        ToolError: apt is missing, or the mirror could not be read.
    """
    wanted = sorted(set(recipe.environment.system_packages))
    if not wanted:
        return []
    names = [w.split("=")[0] for w in wanted]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"{recipe.path}: environment.system-packages names {twice[0]} twice "
                         "(with and without a version, or two versions)",
                         hint="keep one entry for it")
    release = [s for s in recipe.environment.debian.suites
               if not s.endswith(("-security", "-updates", "-backports"))]
    if "base-files" not in names and release:  # a scratch base: FHS folders, os-release
        wanted.append("base-files")
    if recipe.image.base != "scratch":
        raise InputError(f"{recipe.path}: environment.system-packages are assembled on a "
                         f"scratch base; image.base is {recipe.image.base!r}",
                         hint='set image.base = "scratch" (repro installs the interpreter '
                              "from Debian too), or install the packages in your base")
    deb = recipe.environment.debian
    log.info("Resolving %d system package(s) against %s (%s)", len(wanted),
             ", ".join(deb.suites), architecture(recipe))
    with store.scratch() as tmp:
        apt = Apt(recipe, tmp)
        apt.update()
        chosen = _chosen(apt, wanted, [] if upgrade else previous or [])
        paragraphs = apt.show(chosen)
        dates = {suite: deb.snapshot or apt.release_date(suite) for suite in deb.suites}
        out = []
        for p in paragraphs:
            filename = p["Filename"]
            archive = "debian-security" if "/updates/" in filename or filename.startswith(
                "pool/updates/") else "debian"
            suite = next((s for s in deb.suites if s.endswith("-security")) if
                         archive == "debian-security" else iter(deb.suites), deb.suites[0])
            mirror = deb.security_mirror if archive == "debian-security" else deb.mirror
            out.append(Deb(p["Package"], p["Version"], p["Architecture"], filename,
                           int(p["Size"]), p["SHA256"], f"{mirror}/{quote(filename)}",
                           f"https://snapshot.debian.org/archive/{archive}/{dates[suite]}/"
                           f"{quote(filename)}" if dates.get(suite) else ""))
    return sorted(out, key=lambda d: d.name)
