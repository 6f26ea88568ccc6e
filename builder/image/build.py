"""`repro build --image`: a lock as OCI layers, one per package, the code on top.

Each package layer is named by what it holds (package, version, wheel sha256, target,
prefix, mtime) and kept in the store, so a rebuild after a code change writes only the top
layer, and a change of one small package does not touch the torch layer.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder import faults, hashing, lock, proc, pylock, registry
from builder.errors import BuildError, InputError, ToolError
from builder.image import base as bases
from builder.image import debs as debs_layers
from builder.image import index as images
from builder.image import layout, tarball
from builder.image.tarball import cached_layer, note_layer
from builder.progress import progress
from builder.project import Project
from builder.resolve import source_args

if TYPE_CHECKING:
    from collections.abc import Iterator

    from builder.blobs import Blobs

log = logging.getLogger(__name__)

LAYER_FORMAT = "repro.layer/v2"
SITE = "opt/repro/site-packages"
ARCHITECTURES = {"linux/x86_64": "amd64", "linux/aarch64": "arm64"}
MAX_LAYERS = 100
# Files an installer writes that say where or when, not what: never in a layer.
_HOST_FACTS = ("direct_url.json", "uv_cache.json")


@dataclass(frozen=True)
class ImageResult:
    digest: str
    config: str
    layout: Path
    archive: Path
    tag: str
    architecture: str = "amd64"
    python: str | None = None  # the base's interpreter; None on scratch
    layers: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"image": self.digest, "config": self.config, "layout": str(self.layout),
                "archive": str(self.archive), "tag": self.tag, "layers": self.layers,
                "cached_layers": sum(1 for x in self.layers if x["cached"])}


def _record_line(path: Path, rel: str) -> str:
    data = path.read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{rel},sha256={digest},{len(data)}"


def _portable_shebang(path: Path) -> bool:
    """Replace a shebang naming this host's Python by `/usr/bin/env python3`."""
    if not path.is_file() or path.is_symlink():
        return False
    text = path.read_bytes()
    first, sep, rest = text.partition(b"\n")
    if not (first.startswith(b"#!") and b"python" in first and sep):
        return False
    path.write_bytes(b"#!/usr/bin/env python3\n" + rest)
    return True


def normalise(target: Path) -> None:
    """Remove installer facts (direct_url.json, caches, bytecode) and host-path shebangs
    from a `--target` install, keeping each RECORD true to what is left."""
    for record in target.glob("*.dist-info/RECORD"):
        kept = []
        for entry in record.read_text().splitlines():
            rel = entry.rsplit(",", 2)[0]
            path = target / rel
            if Path(rel).name in _HOST_FACTS or "__pycache__" in rel:
                path.unlink(missing_ok=True)
            elif rel.startswith("bin/") and _portable_shebang(path):
                kept.append(_record_line(path, rel))
            else:
                kept.append(entry)
        record.write_text("\n".join(kept) + "\n")
    for cache in sorted(target.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache, ignore_errors=True)


def layer_key(project: Project, pkg: pylock.Package) -> str:
    """What names a package's layer: the package, the target, the prefix and the mtime."""
    recipe = project.recipe
    return hashing.digest_json({
        "format": LAYER_FORMAT, "package": pkg.identity(), "python": recipe.environment.python,
        "platform": recipe.environment.platform, "prefix": SITE, "mtime": recipe.image.mtime})


def package_layers(project: Project) -> Iterator[tuple[pylock.Package, str, tarball.Layer]]:
    """Each locked package's layer (from the store, the remote, or built), by name."""
    for pkg in sorted(project.lock.packages, key=lambda p: p.name):
        yield pkg, layer_key(project, pkg), _package_layer(project, pkg)[0]


def _package_layer(project: Project, pkg: pylock.Package) -> tuple[tarball.Layer, bool]:
    recipe, store = project.recipe, project.store
    key = layer_key(project, pkg)
    known = cached_layer(store, key, f"{pkg.name} {pkg.version}")
    if known is not None:
        return known, True
    pulled = project.remote.layer(project.lock.env_id, key) if project.remote else None
    if pulled is not None:
        log.info("Layer %s %s from %s", pkg.name, pkg.version, project.remote.url)  # type: ignore[union-attr]
        note_layer(store, key, pulled)
        return pulled, True
    with store.scratch() as tmp:
        target = tmp / "site"
        req = tmp / "requirements.txt"
        req.write_text(pylock.requirements_txt([pkg]))
        argv = [proc.uv_bin(), "--no-config", "pip", "install", "--quiet", "--target",
                str(target), "--python-version", recipe.environment.python,
                "--python-platform", recipe.environment.uv_platform, "--no-deps",
                "--require-hashes", "--no-compile", "--no-build",
                *source_args(recipe, project.machine), "-r", str(req)]
        if project.offline:
            argv.append("--offline")
        try:
            proc.run(argv, env=proc.clean_env({"UV_PYTHON_DOWNLOADS": "never"}))
        except ToolError as exc:
            raise BuildError(f"installing {pkg.name} {pkg.version} for the image failed; no "
                             f"image was written\n{exc.message}",
                             hint="a wheel for the recipe's platform must be in the lock "
                                  "(images never build sdists)") from exc
        normalise(target)
        built = tarball.write_layer([(target, SITE)], recipe.image.mtime, store.blobs)
    note_layer(store, key, built)
    return built, False


def code_layer(project: Project, tmp: Path, *, at: str | None = None) -> tarball.Layer:
    """The code, the recipe and its lock, at the image's workdir (or `at`: "" for a code
    snapshot a remote keeps with a run)."""
    recipe = project.recipe
    tree = tmp / "work"
    lock_rel = recipe.lock_dir.relative_to(recipe.root)
    files = [*project.code.paths, recipe.path.name, str(lock_rel / lock.PYLOCK),
             str(lock_rel / lock.REPRO_LOCK)]
    for rel in sorted(set(files)):
        dest = tree / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        src = recipe.root / rel
        if src.is_symlink():
            dest.symlink_to(src.readlink())
        else:
            shutil.copy(src, dest)  # contents and mode bits; the tar writer fixes the rest
    return tarball.write_layer([(tree, recipe.image.workdir if at is None else at)],
                               recipe.image.mtime, project.store.blobs)


def build_image(
    project: Project, *, output: Path | None = None, push: str | None = None,
    load: bool = False,
) -> ImageResult:
    """Build the recipe's image as an OCI layout and a docker-load archive.

    The digest follows from the recipe, the lock and the code alone: not from the time,
    the folder, the umask or SOURCE_DATE_EPOCH (the recipe's image.mtime is the one time).

    Raises:
        InputError: a non-Linux target, a base without the lock's Python, too many packages
            for one layer each, or an output path that is not an OCI layout.
        RegistryError: the base's registry cannot be reached or serves other bytes.
        BuildError: a package could not be installed for the target.
    """
    recipe, store = project.recipe, project.store
    arch = ARCHITECTURES.get(recipe.environment.platform)
    if arch is None:
        raise InputError(f"{recipe.path}: images are Linux images; environment.platform is "
                         f"{recipe.environment.platform}",
                         hint=f"use one of: {', '.join(ARCHITECTURES)}")
    current = project.lock
    base_ref = lock.base_ref(recipe, current)
    if base_ref != "scratch":
        log.info("Base %s", base_ref)
    base = bases.load(base_ref, store, arch)
    debs = current.debs
    python = debs_layers.interpreter(project, debs) if debs else bases.check_interpreter(
        base, recipe.environment.python, recipe.path)
    if len(base.layers) + len(current.packages) + 2 * bool(debs) >= MAX_LAYERS:
        raise InputError(f"{recipe.name} locks {len(current.packages)} packages; one layer "
                         f"each would pass the {MAX_LAYERS}-layer limit of some engines")
    layers = list(base.layers)
    described = [{"content": f"base {base.digest}", "diff_id": x.diff_id, "digest": x.digest,
                  "size": x.size, "cached": True} for x in base.layers]
    for built_deb, said in debs_layers.layers(project, debs) if debs else ():
        layers.append(built_deb)
        described.append(said)
    with progress("Layers", total=len(current.packages)) as advance:
        for pkg in sorted(current.packages, key=lambda p: p.name):
            log.debug("Layer %s %s", pkg.name, pkg.version)
            built, cached = _package_layer(project, pkg)
            if not cached:
                log.info("Layer %s %s", pkg.name, pkg.version)
            layers.append(built)
            described.append({"content": f"{pkg.name} {pkg.version}", "diff_id": built.diff_id,
                              "digest": built.digest, "size": built.size, "cached": cached})
            advance(1)
    with store.scratch() as tmp:
        top = code_layer(project, tmp)
    layers.append(top)
    described.append({"content": "code, recipe and lock", "diff_id": top.diff_id,
                      "digest": top.digest, "size": top.size, "cached": False})
    labels = {**recipe.image.labels,
              "org.opencontainers.image.title": recipe.name,
              "dev.repro.recipe": recipe.name,
              "dev.repro.recipe-digest": recipe.digest(),
              "dev.repro.env-id": current.env_id,
              "dev.repro.lock-digest": current.pylock_digest}
    created = dt.datetime.fromtimestamp(recipe.image.mtime, dt.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    base_config = base.config.get("config", {})
    base_env = dict(e.split("=", 1) for e in base_config.get("Env") or [])
    path = base_env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    image = layout.assemble(
        layers, architecture=arch, workdir=recipe.image.workdir,
        entrypoint=list(recipe.image.entrypoint or base_config.get("Entrypoint") or []),
        cmd=None if recipe.image.entrypoint else base_config.get("Cmd"),
        labels={**(base_config.get("Labels") or {}), **labels}, created=created,
        env={**base_env, "PYTHONPATH": f"/{SITE}", "PATH": f"/{SITE}/bin:{path}",
             **recipe.image.env})
    tag = f"{recipe.name}:{current.env_id.removeprefix(hashing.PREFIX)[:12]}"
    folder = output or store.images.layout(recipe.name)
    layout.write_layout(image, folder, tag, store.blobs)
    archive = folder.with_name(folder.name + ".tar")
    layout.write_archive(image, archive, f"localhost/{tag}", blobs=store.blobs)
    faults.point("image-before-index")
    images.remember(store, image.digest, labels)
    if push:
        log.info("Pushing to %s", push)
        push_image(image, push, store.blobs)
    if load:
        log.info("Loading into the Docker-compatible engine at %s",
                 os.environ.get("DOCKER_HOST", "the default socket"))
        load_archive(archive)
    store.blobs.put(current.pylock_bytes)  # so records and provenance can cite it
    return ImageResult(image.digest, image.config_digest, folder, archive, tag, arch, python,
                       described)


def load_archive(archive: Path) -> list[str]:
    """Load a docker archive through the Docker API (Docker, or `podman system service`).

    Raises:
        ToolError: no engine answers at DOCKER_HOST (or the default socket), or it refuses.
    """
    try:
        import docker  # noqa: PLC0415  (only --load needs the SDK: an optional extra)
    except ImportError:
        raise InputError("--load needs the Docker SDK for Python, which is not installed",
                         hint="pip install 'repro-builder[docker]' (or pip install docker)"
                         ) from None
    try:
        client = docker.from_env()
        loaded = client.images.load(archive.read_bytes())
    except docker.errors.DockerException as exc:
        raise ToolError(["docker-api", "load", str(archive)], 1, str(exc),
                        hint="start Docker, or `podman system service unix:///PATH.sock` and "
                             "set DOCKER_HOST=unix:///PATH.sock") from exc
    return [t for image in loaded for t in image.tags]


def push_image(image: layout.Image, ref: str, blobs: Blobs, *,
               mount_from: str | None = None) -> None:
    """Upload the blobs the registry lacks (layers streamed from the store, checked as they
    go; mounted from `mount_from`, a repository on the same registry, where it has them),
    then the manifest under the reference's tag (or digest).

    Raises:
        RegistryError: the registry cannot be reached or refuses an upload.
        CorruptBlob: a layer's blob in the store is damaged (nothing was tagged).
    """
    import functools  # noqa: PLC0415

    target = registry.Reference.parse(ref)
    client = registry.Registry(target.registry, user_named=True)  # --push REF: the user's
    client.push_blob(target.repository, image.config_digest, image.config)
    for x in image.layers:
        client.push_blob(target.repository, x.digest, functools.partial(layout.open_layer, x,
                                                                          blobs),
                         x.size, mount_from=mount_from)
    client.push_manifest(target.repository, target.tag or target.digest or "latest",
                         image.manifest, layout.MANIFEST_TYPE)
