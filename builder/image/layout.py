"""OCI image config, manifest and layout, and a `docker load` archive, from layers."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from builder.errors import InputError, StoreError
from builder.hashing import sha256_digest as _sha256
from builder.image.tarball import Layer
from builder.store import atomic_write, replacing

if TYPE_CHECKING:
    from builder.blobs import Blobs, CheckedReader

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


def _blobs(image: Image) -> list[tuple[str, bytes | Layer]]:
    """Every blob of the image: its config and manifest as bytes, its layers as they are."""
    return [(image.config_digest, image.config), (image.digest, image.manifest),
            *((layer.digest, layer) for layer in image.layers)]


def copy_layer(layer: Layer, dest: BinaryIO, blobs: Blobs | None) -> None:
    """Write a layer's gzip blob to `dest`: from memory, or from the store, checked on the way.

    Raises:
        CorruptBlob, StoreError: the store's copy is damaged or gone.
    """
    with open_layer(layer, blobs) as src:
        while chunk := src.read(1 << 20):
            dest.write(chunk)


class _Described:
    """A stored layer's stream, checked at its last byte against its descriptor too (the
    sha256 and size the layer note says): a note that lies is damage, never a broken image."""

    def __init__(self, reader: CheckedReader, layer: Layer) -> None:
        self.reader, self.layer = reader, layer
        self.sha = hashlib.sha256()
        self.done = 0

    def read(self, n: int = -1) -> bytes:
        data = self.reader.read(n)
        self.sha.update(data)
        self.done += len(data)
        if self.done >= len(self.reader) and (
                self.done != self.layer.size
                or "sha256:" + self.sha.hexdigest() != self.layer.digest):
            raise StoreError(f"the stored layer {self.layer.blob} is not what its note says "
                             f"({self.layer.digest}, {self.layer.size} bytes): the note is "
                             "damaged", hint="run `repro cache verify --repair`, then build "
                                             "again (the layer is rebuilt)")
        return data


@contextlib.contextmanager
def open_layer(layer: Layer, blobs: Blobs | None) -> Iterator[BinaryIO | _Described]:
    """A layer's gzip blob as a stream (the store's copy is checked as it is read, against
    its BLAKE3 and its descriptor's sha256 and size)."""
    if layer.data is not None:
        yield io.BytesIO(layer.data)
    elif blobs is not None and layer.blob is not None:
        with blobs.reader(layer.blob) as reader:
            yield _Described(reader, layer)
    else:
        raise ValueError(f"layer {layer.digest} has no bytes here")


def _write_blob(path: Path, content: bytes | Layer, blobs: Blobs | None) -> None:
    with replacing(path) as tmp, tmp.open("wb") as f:
        if isinstance(content, bytes):
            f.write(content)
        else:
            copy_layer(content, f, blobs)
        f.flush()
        os.fsync(f.fileno())


def _index(image: Image, tag: str) -> bytes:
    return _json({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [{
        "mediaType": MANIFEST_TYPE, "digest": image.digest, "size": len(image.manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]})


def write_layout(image: Image, path: Path, tag: str, blobs: Blobs | None = None) -> None:
    """Write (or replace) an OCI image layout directory holding this one image (layers
    that live in the store are streamed from `blobs`, checked as they are copied).

    Raises:
        InputError: `path` exists and is not an OCI layout (nothing there is touched).
    """
    if path.exists() and (not path.is_dir() or (any(path.iterdir())
                                                 and not (path / "oci-layout").is_file())):
        raise InputError(f"{path} exists and is not an OCI image layout",
                         hint="give a new folder, or remove it first")
    staging = path.with_name(f".{path.name}.repro-tmp")
    shutil.rmtree(staging, ignore_errors=True)
    for digest, content in _blobs(image):
        _write_blob(staging / "blobs" / "sha256" / digest.removeprefix("sha256:"), content,
                    blobs)
    atomic_write(staging / "oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
    atomic_write(staging / "index.json", _index(image, tag))
    if path.exists():
        shutil.rmtree(path)
    staging.rename(path)


def write_archive(image: Image, path: Path, repo_tag: str, mtime: int = 0,
                  blobs: Blobs | None = None) -> None:
    """A `docker load` archive: the OCI layout plus Docker's manifest.json, as one tar,
    written as a stream (layers from the store are copied through, checked)."""
    blob = "blobs/sha256/{}".format
    members: list[tuple[str, bytes | Layer]] = [
        (blob(d.removeprefix("sha256:")), content) for d, content in _blobs(image)]
    members += [
        ("oci-layout", _json({"imageLayoutVersion": "1.0.0"})),
        ("index.json", _index(image, repo_tag)),
        ("manifest.json", _json([{
            "Config": blob(image.config_digest.removeprefix("sha256:")),
            "RepoTags": [repo_tag],
            "Layers": [blob(layer.digest.removeprefix("sha256:")) for layer in image.layers],
        }])),
    ]
    with replacing(path) as tmp, tmp.open("wb") as out, \
            tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirname in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(dirname)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
            tar.addfile(info)
        for name, content in sorted(dict(members).items()):
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = 0o644, mtime
            if isinstance(content, bytes):
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
                continue
            info.size = content.size
            with open_layer(content, blobs) as src:
                tar.addfile(info, src)  # type: ignore[arg-type,unused-ignore]  # read() suffices
