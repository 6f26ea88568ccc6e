"""The Nix backend: the lock as data for Nix, built by `nix-build` (or nix-portable).

    render     the lock as `lock.json`: one wheel per package (name, version, filename, URL,
               sha256 in hex and SRI form), the target system, the interpreter
    export     `repro export nix`: lock.json beside the expressions of nix/ (default.nix, and
               install-wheels.py, the builder)
    build      `repro build --backend nix`: wheels that sit in a find-links folder added to
               the Nix store by hash (so nothing is fetched that cannot be), `nix-build` with
               a gc root in the store's nix/roots/, the result checked with
               `nix-store --verify-path` and sealed; the manifest in nix/envs/<env id>/
    NixRunner  `repro run --in nix`, `repro exec --in nix`: the built env, like a venv

The environment is laid out as a virtualenv whose `bin/python` links the interpreter, so it
runs as a venv does. The interpreter is the host's (found as `repro build` finds it, through
uv): it is the derivation's builder, with Nix's sandbox off, and named as an impurity in the
manifest. Its path and the rendering join the run key (`identity`), so a Nix env and a venv
of one lock are different environments.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder import __version__, hashing, proc, seal
from builder.env import BuildResult, read_manifest, usable
from builder.errors import InputError, StoreError, ToolError
from builder.records import EnvManifest
from builder.runner import VenvRunner, software
from builder.store import MANIFEST, atomic_write

if TYPE_CHECKING:
    from builder.project import Project
    from builder.pylock import Artefact, Package
    from builder.records import Software
    from builder.store import Store

log = logging.getLogger(__name__)

RENDER_SCHEMA = "repro.nixlock/v1"
FILES = ("default.nix", "install-wheels.py")  # the expressions of nix/, copied beside lock.json
SYSTEMS = {"linux/x86_64": "x86_64-linux", "linux/aarch64": "aarch64-linux",
           "macos/arm64": "aarch64-darwin", "macos/x86_64": "x86_64-darwin"}
INSTALL_HINT = ("install Nix: `apt-get install nix-bin` (Debian, as root), or without root "
                "nix-portable: `curl -L https://github.com/DavHau/nix-portable/releases/latest/"
                "download/nix-portable-$(uname -m) -o ~/.local/bin/nix-portable && chmod +x "
                "~/.local/bin/nix-portable` (see docs/nix.md)")


def sources() -> dict[str, bytes]:
    """The files of nix/: in the installed package (builder/nixexpr/), or the checkout."""
    for folder in (Path(__file__).with_name("nixexpr"), Path(__file__).parents[1] / "nix"):
        if all((folder / name).is_file() for name in FILES):
            return {name: (folder / name).read_bytes() for name in FILES}
    raise StoreError("repro's Nix expressions are missing from its installation",
                     Path(__file__).with_name("nixexpr"), hint="reinstall repro-builder")


# -- the lock as data ---------------------------------------------------------------------
def _wheel(pkg: Package, python: str, platform: str, recipe: Path) -> Artefact:
    """The package's wheel for this interpreter and platform: of several, the one whose best
    tag comes first in the target's tag order (as pip and uv choose), so both backends
    install the same file.

    Raises:
        InputError: the lock has no wheel of it that fits (only an sdist, or other targets').
    """
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename  # noqa: PLC0415

    order = {tag: rank for rank, tag in enumerate(_tags(python, platform))}
    ranked = []
    for wheel in pkg.wheels:
        try:
            tags = parse_wheel_filename(wheel.filename)[3]
        except InvalidWheelFilename:
            continue
        best = min((order[t] for t in tags if t in order), default=None)
        if best is not None:
            ranked.append((best, wheel.filename, wheel))
    if ranked:
        return min(ranked)[2]
    what = "only an sdist" if pkg.sdist and not pkg.wheels else "no wheel for this target"
    raise InputError(
        f"{recipe}: {pkg.name} {pkg.version} has {what} in the lock: the Nix backend installs "
        "wheels only (it never runs a package's build)",
        hint=f"publish a wheel of {pkg.name} where the recipe's [[environment.sources]] "
             "point and re-lock, or use the virtualenv backend (`repro build`)")


def _tags(python: str, platform: str) -> list[Any]:
    """The tags a CPython of `python` on `platform` accepts, best first: this machine's
    platform tags (its glibc's manylinux levels) where the target is this machine's kind."""
    import platform as host  # noqa: PLC0415

    from packaging import tags  # noqa: PLC0415

    version = tuple(int(p) for p in python.split(".")[:2])
    system, arch = platform.split("/")
    here = {"Linux": "linux", "Darwin": "macos"}.get(host.system()) == system \
        and host.machine() in (arch, "arm64" if arch == "aarch64" else arch)
    if here:
        plats = list(tags.platform_tags())
    elif system == "macos":
        plats = list(tags.mac_platforms((15, 0), arch))
    else:  # another machine's kind: the manylinux levels Nix's glibc (2.3x) accepts
        plats = [f"manylinux_2_{minor}_{arch}" for minor in range(40, 16, -1)] + [
            f"manylinux2014_{arch}", f"linux_{arch}"]
    return [*tags.cpython_tags(version, platforms=plats),
            *tags.compatible_tags(version, f"cp{version[0]}{version[1]}", plats)]


def sri(sha256_hex: str) -> str:
    return "sha256-" + base64.b64encode(bytes.fromhex(sha256_hex)).decode()


def interpreter(project: Project) -> Path:
    """The host interpreter of the recipe's Python, found as the venv backend finds it.

    Raises:
        InputError: none on this machine.
    """
    recipe = project.recipe
    python = recipe.environment.python
    found = _find_python(python)
    if found is None:
        raise InputError(f"{recipe.path}: environment.python = {python!r}: no such "
                         "interpreter on this machine",
                         hint=f"install CPython {python}, or change environment.python and "
                              "run `repro lock`")
    return found


@functools.cache
def _find_python(python: str) -> Path | None:
    """uv's answer, asked once per command (the run key and the build both need it)."""
    done = proc.run([proc.uv_bin(), "--no-config", "python", "find", python,
                     "--python-preference", "only-system"],
                    env=proc.clean_env({"UV_PYTHON_DOWNLOADS": "never"}), check=False)
    if done.returncode != 0 or not done.stdout.strip():
        return None
    return Path(os.path.realpath(done.stdout.strip()))


def render(project: Project, python: Path) -> dict[str, Any]:
    """lock.json: what default.nix builds, the lock's packages exactly (one wheel each)."""
    recipe, current = project.recipe, project.lock
    env = recipe.environment
    if env.platform not in SYSTEMS:
        raise InputError(f"{recipe.path}: environment.platform = {env.platform!r}: Nix builds "
                         "for Linux and macOS only", hint="use the virtualenv backend")
    wheels = []
    for pkg in sorted(current.packages, key=lambda p: p.name):
        wheel = _wheel(pkg, env.python, env.platform, recipe.lock_dir / "pylock.toml")
        wheels.append({"name": pkg.name, "version": pkg.version, "filename": wheel.filename,
                       "url": wheel.url, "sha256": wheel.sha256, "hash": sri(wheel.sha256)})
    return {"schema": RENDER_SCHEMA, "recipe": _store_name(recipe.name),
            "env": current.env_id, "python": env.python, "system": SYSTEMS[env.platform],
            "interpreter": str(python), "wheels": wheels}


def _store_name(name: str) -> str:
    """A name Nix accepts for a derivation ([A-Za-z0-9+._?=-], no leading dot, not ending
    in .drv)."""
    clean = re.sub(r"[^A-Za-z0-9+._?=-]", "-", name).lstrip(".") or "env"
    return clean[:-4] + "-drv" if clean.endswith(".drv") else clean


def rendered_bytes(rendered: dict[str, Any]) -> bytes:
    return (json.dumps(rendered, indent=2, sort_keys=True) + "\n").encode()


def identity(project: Project) -> str:
    """What joins the run key for a run in the Nix env: the expressions and the rendering
    (which names the interpreter). No Nix is called: a cache hit pays for none."""
    files = {name: hashing.digest_bytes(data) for name, data in sources().items()}
    return "nix:" + hashing.digest_json(
        {"files": files, "lock": render(project, interpreter(project))}
    ).removeprefix(hashing.PREFIX)


def export(project: Project, folder: Path) -> list[Path]:
    """Write lock.json and the expressions into `folder`; the paths written.

    Raises:
        InputError: `folder` is a file, or cannot be made.
    """
    rendered = render(project, interpreter(project))
    try:
        export_files(folder, rendered)
    except (FileExistsError, NotADirectoryError) as exc:
        raise InputError(f"{folder}: not a folder", hint="give -o a folder path") from exc
    return [folder / name for name in ("lock.json", *FILES)]


# -- the tool -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Nix:
    """The Nix found on PATH: `nix-build` and friends, or nix-portable wrapping them."""

    via: str  # "nix-build" | "nix-portable"
    prefix: tuple[str, ...] = ()

    def argv(self, tool: str, *args: str) -> list[str]:
        """A Nix command line: with nix-portable, its name first (it runs the tool inside
        its own namespace, where its store is /nix/store)."""
        return [*self.prefix, tool, *args]

    def options(self) -> list[str]:
        """The build options: the sandbox off (the interpreter is the host's); as root
        without a nixbld group (Debian's nix-bin without its daemon), no build users."""
        opts = ["--option", "sandbox", "false"]
        if self.via == "nix-build" and os.geteuid() == 0 and not _group("nixbld"):
            opts += ["--option", "build-users-group", ""]
        return opts

    def run(self, tool: str, *args: str, hint: str = "") -> str:
        argv = self.argv(tool, *args)
        try:
            return proc.run(argv, env=proc.clean_env(), hint=hint).stdout.strip()
        except ToolError as exc:
            raise _explained(exc) from exc

    @functools.cached_property
    def version(self) -> str:
        return self.run("nix-build", "--version").splitlines()[-1]

    def real(self, store_path: str) -> Path:
        """Where a store path's files are on this machine: nix-portable keeps its store
        under $NP_LOCATION (default: the home folder)/.nix-portable/."""
        if self.via != "nix-portable":
            return Path(store_path)
        home = os.environ.get("NP_LOCATION") or os.path.expanduser("~")
        return Path(home) / ".nix-portable" / store_path.lstrip("/")


def _group(name: str) -> bool:
    import grp  # noqa: PLC0415

    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def find() -> Nix:
    """nix-build from PATH, else nix-portable from PATH.

    Raises:
        ToolError: neither (exit 3, saying how to install nix-portable).
    """
    if shutil.which("nix-build") and shutil.which("nix-store"):
        return Nix("nix-build")
    if shutil.which("nix-portable"):
        return Nix("nix-portable", ("nix-portable",))
    raise ToolError(["nix-build"], 127, "neither nix-build nor nix-portable is on PATH",
                    hint=INSTALL_HINT)


def _explained(exc: ToolError) -> ToolError:
    """A Nix failure with what it means: a hash mismatch, or a store this user cannot write."""
    text = exc.stderr
    if "hash mismatch" in text:
        return ToolError(exc.argv, exc.returncode, exc.stderr, hint=(
            "a downloaded file does not have the sha256 the lock gives it: restore "
            "lockfiles/ from version control (it may have been edited), or re-lock"))
    if re.search(r"[Pp]ermission denied|Operation not permitted|cannot open connection to "
                 r"remote store|"
                 r"read-only file system|creating directory '/nix", text):
        import getpass  # noqa: PLC0415

        store = os.environ.get("NIX_REMOTE") or "/nix/store"
        return ToolError(exc.argv, exc.returncode, exc.stderr, hint=(
            f"the Nix store {store} cannot be written by user {getpass.getuser()}: run as "
            "its owner, start nix-daemon, or use nix-portable (its store is in your home)"))
    return exc


# -- build ---------------------------------------------------------------------------------
def build(project: Project) -> BuildResult:
    """Build the lock as a Nix environment (a lookup when it was built and is intact).

    Raises:
        ToolError: no Nix, or nix-build failed (a hash mismatch, an unwritable store).
        InputError: a package without a wheel; no interpreter for the recipe's Python.
    """
    started = time.perf_counter()
    envs, env_id = project.store.nix_envs, project.lock.env_id
    nix = find()
    python = interpreter(project)
    rendered = render(project, python)
    envs.use(env_id)
    if envs.ready(env_id) and _intact(project, env_id):
        envs.touch(env_id)
        reroot(project.store, env_id, nix)
        return _result(project, cached=True, started=started)
    with envs.locked(env_id):
        if envs.ready(env_id) and _intact(project, env_id):
            return _result(project, cached=True, started=started)
        log.info("Building %s env %s with Nix (%s, %s)", project.recipe.name, env_id[7:19],
                 nix.via, nix.version)
        with envs.staging(env_id) as staging:
            expr = staging / "expr"
            export_files(expr, rendered)
            added = _add_local(project, nix, rendered)
            drv = nix.run("nix-instantiate", *nix.options(), str(expr))
            root = project.store.nix_root(env_id)
            root.parent.mkdir(parents=True, exist_ok=True)
            out = nix.run("nix-build", *nix.options(), str(expr), "--out-link", str(root))
            out = out.splitlines()[-1]
            try:  # the bytes Nix has are the bytes it registered (another store's tamper)
                nix.run("nix-store", "--verify-path", out)
            except ToolError:
                log.warning("%s differs from what Nix registered; repairing it", out)
                nix.run("nix-build", *nix.options(), str(expr), "--repair", "--out-link",
                        str(root))
            path = nix.real(out)
            entries = seal._walk(path)
            content, files = seal.tree(path, entries)
            manifest = EnvManifest(
                env=env_id, recipe=project.recipe.name, python=_version(path),
                platform=project.recipe.environment.platform,
                pylock=project.store.blobs.put(project.lock.pylock_bytes),
                packages={p.name: p.version for p in project.lock.packages},
                builder=__version__, tree=content,
                fingerprint=seal.fingerprint(path, entries), files=files,
                nix={"store_path": out, "drv": drv, "root": str(root), "tool": nix.via,
                     "version": nix.version, "path": str(path), "added": added,
                     "impure": [f"interpreter {python} (the host's; Nix sandbox off)"]})
            atomic_write(staging / MANIFEST, manifest.encode())
            envs.publish(staging, env_id)
    return _result(project, cached=False, started=started)


def export_files(folder: Path, rendered: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in {"lock.json": rendered_bytes(rendered), **sources()}.items():
        atomic_write(folder / name, data)


def _add_local(project: Project, nix: Nix, rendered: dict[str, Any]) -> list[str]:
    """Put each locked wheel found in a find-links folder into the Nix store by its hash
    (`nix-store --add-fixed`: the very path the fixed-output fetch expects), so nix-build
    needs no network for it. The filenames added."""
    folders = [Path(f) for f in project.machine.find_links if "://" not in f]
    added = []
    for wheel in rendered["wheels"]:
        expected = nix.run("nix-store", "--print-fixed-path", "sha256", wheel["sha256"],
                           wheel["filename"])
        if _valid(nix, expected):
            continue
        for folder in folders:
            local = folder / wheel["filename"]
            if not local.is_file():
                continue
            with local.open("rb") as f:
                if hashlib.file_digest(f, "sha256").hexdigest() != wheel["sha256"]:
                    log.warning("%s is not the locked %s (another sha256); not added", local,
                                wheel["filename"])
                    continue
            nix.run("nix-store", "--add-fixed", "sha256", str(local))
            log.info("Added %s to the Nix store from %s (by its sha256, as the lock gives it)",
                     wheel["filename"], folder)
            added.append(wheel["filename"])
            break
    return added


def _valid(nix: Nix, store_path: str) -> bool:
    try:
        nix.run("nix-store", "--check-validity", store_path)
    except ToolError:
        return False
    return True


def _version(env: Path) -> str:
    m = re.search(r"^version\s*=\s*(\S+)", (env / "pyvenv.cfg").read_text(), re.MULTILINE)
    return m.group(1) if m else ""


def tampered(project: Project, env_id: str) -> str | None:
    """Why the Nix env is not as it was sealed, or None (a stat per file, no reads)."""
    manifest = read_manifest(project.store.nix_envs.path(env_id))
    path = Path((manifest.nix or {}).get("path", ""))
    if manifest.nix is None or not path.is_dir():
        return f"the Nix store path of env {env_id[7:19]} is gone (collected by nix gc?)"
    if seal.fingerprint(path) != manifest.fingerprint:
        return (f"the Nix environment {path} was changed after it was built: files were "
                "edited, added or removed")
    return None


def _intact(project: Project, env_id: str) -> bool:
    """Whether the Nix env can be used; a tampered one's manifest is set aside, and the
    next build has Nix repair the store path."""
    return usable(project, project.store.nix_envs, env_id, tampered, runner="nix")


def _result(project: Project, *, cached: bool, started: float) -> BuildResult:
    env_id = project.lock.env_id
    manifest = read_manifest(project.store.nix_envs.path(env_id))
    return BuildResult(env_id, Path((manifest.nix or {})["path"]), cached, manifest.python,
                       len(manifest.packages), project.relocked,
                       time.perf_counter() - started)


def reroot(store: Store, env_id: str, nix: Nix | None = None) -> bool:
    """Make the env's gc root again where it is gone or points elsewhere (so Nix's gc never
    takes a store path repro uses); True when it had to."""
    manifest = read_manifest(store.nix_envs.path(env_id))
    out, root = (manifest.nix or {}).get("store_path"), store.nix_root(env_id)
    if out is None or (root.is_symlink() and os.readlink(root) == out):
        return False
    root.parent.mkdir(parents=True, exist_ok=True)
    root.unlink(missing_ok=True)
    (nix or find()).run("nix-store", "--realise", out, "--add-root", str(root), "--indirect")
    log.warning("the gc root %s of env %s was gone; made again", root, env_id[7:19])
    return True


def unroot(store: Store, env_id: str, store_path: str) -> None:
    """After gc removed an env: its gc root, and its store path where nothing else needs it
    (`nix-store --delete` refuses one that is still alive; that is left to Nix)."""
    store.nix_root(env_id).unlink(missing_ok=True)
    with contextlib.suppress(ToolError):
        find().run("nix-store", "--delete", store_path)


class NixRunner(VenvRunner):
    """The lock built by Nix; runs as the venv does (the env is laid out as one)."""

    kind = "nix"

    def identity(self) -> str | None:
        return identity(self.project)

    @functools.cached_property
    def built(self) -> BuildResult:
        return build(self.project)

    def software(self, runtime_digest: str) -> Software:
        manifest = read_manifest(self.project.store.nix_envs.path(self.built.env))
        return software(self.built.python, manifest.packages, manifest.pylock, runtime_digest)

    def intact(self) -> str | None:
        return tampered(self.project, self.built.env)
