"""OCI image config, manifest and layout, and a `docker load` archive, from layers."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import InputError
from builder.hashing import sha256_digest as _sha256
from builder.image.tarball import Layer
from builder.store import atomic_write

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"


def _json(value: Any) -> bytes:
    """Image JSON as bytes: sorted keys, compact, so the same image has the same digest."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Image:
    config: bytes
    manifest: bytes
    layers: list[Layer]

    @property
    def digest(self) -> str:
        """The image's identity: the sha256 of its manifest."""
        return _sha256(self.manifest)

    @property
    def config_digest(self) -> str:
        return _sha256(self.config)


def assemble(layers: list[Layer], *, architecture: str, env: dict[str, str],
             entrypoint: list[str], workdir: str, labels: dict[str, str],
             created: str, cmd: list[str] | None = None) -> Image:
    """The config (rootfs diff_ids, env, entrypoint, workdir, labels, fixed `created`) and
    the manifest that names it and the layers."""
    config = _json({
        "architecture": architecture,
        "os": "linux",
        "created": created,
        "config": {"Env": [f"{k}={v}" for k, v in sorted(env.items())],
                   "Entrypoint": entrypoint or None, "Cmd": cmd or None, "WorkingDir": workdir,
                   "Labels": dict(sorted(labels.items()))},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": created, "created_by": "repro"} for _ in layers],
    })
    manifest = _json({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": _sha256(config), "size": len(config)},
        "layers": [{"mediaType": LAYER_TYPE, "digest": layer.digest, "size": layer.size}
                   for layer in layers],
        "annotations": {k: v for k, v in labels.items()
                        if k.startswith("org.opencontainers.image.")},
    })
    return Image(config, manifest, layers)


def _blobs(image: Image) -> list[tuple[str, bytes]]:
    return [(image.config_digest, image.config), (image.digest, image.manifest),
            *((layer.digest, layer.data) for layer in image.layers)]


def _index(image: Image, tag: str) -> bytes:
    return _json({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [{
        "mediaType": MANIFEST_TYPE, "digest": image.digest, "size": len(image.manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]})


def write_layout(image: Image, path: Path, tag: str) -> None:
    """Write (or replace) an OCI image layout directory holding this one image.

    Raises:
        InputError: `path` exists and is not an OCI layout (nothing there is touched).
    """
    if path.exists() and (not path.is_dir() or (any(path.iterdir())
                                                 and not (path / "oci-layout").is_file())):
        raise InputError(f"{path} exists and is not an OCI image layout",
                         hint="give a new folder, or remove it first")
    staging = path.with_name(f".{path.name}.repro-tmp")
    shutil.rmtree(staging, ignore_errors=True)
    for digest, data in _blobs(image):
        atomic_write(staging / "blobs" / "sha256" / digest.removeprefix("sha256:"), data)
    atomic_write(staging / "oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
    atomic_write(staging / "index.json", _index(image, tag))
    if path.exists():
        shutil.rmtree(path)
    staging.rename(path)


def write_archive(image: Image, path: Path, repo_tag: str, mtime: int = 0) -> None:
    """A `docker load` archive: the OCI layout plus Docker's manifest.json, as one tar."""
    blob = "blobs/sha256/{}".format
    members = [(blob(d.removeprefix("sha256:")), data) for d, data in _blobs(image)]
    members += [
        ("oci-layout", _json({"imageLayoutVersion": "1.0.0"})),
        ("index.json", _index(image, repo_tag)),
        ("manifest.json", _json([{
            "Config": blob(image.config_digest.removeprefix("sha256:")),
            "RepoTags": [repo_tag],
            "Layers": [blob(layer.digest.removeprefix("sha256:")) for layer in image.layers],
        }])),
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirname in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(dirname)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
            tar.addfile(info)
        for name, data in sorted(dict(members).items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, mtime
            tar.addfile(info, io.BytesIO(data))
    atomic_write(path, buf.getvalue())
