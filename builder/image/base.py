"""Base images, pinned by digest: from a registry, from a local OCI layout, or scratch.

Blobs are kept in the store (`blobs/sha256/`) after they pass their digest, so a second
build needs no network. The base's interpreter is found by listing its layers (never run)
and must match the lock before any layer is written.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import registry
from builder.errors import InputError, RegistryError
from builder.hashing import sha256_digest
from builder.image.tarball import Layer
from builder.store import Store, atomic_write

_DOCKER_INDEX = "application/vnd.docker.distribution.manifest.list.v2+json"
_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_PYTHON = re.compile(r"^(?:usr/(?:local/)?)?bin/python(3\.\d+)$")


@dataclass(frozen=True)
class Base:
    digest: str  # of the manifest, "scratch" for none
    layers: list[Layer] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)  # every path in its layers, read once


def _cached(store: Store, digest: str, fetch: Callable[[str], bytes]) -> bytes:
    path = store.bases.path(digest)
    if path.is_file():
        data = path.read_bytes()
        if sha256_digest(data) == digest:
            return data
    data = fetch(digest)
    if sha256_digest(data) != digest:
        raise RegistryError(f"blob {digest} does not match its digest")
    atomic_write(path, data)
    return data


def load(ref: str, store: Store, arch: str) -> Base:
    """The base a recipe names: `scratch`, `oci:PATH@sha256:…` or `REGISTRY/NAME@sha256:…`.

    Raises:
        InputError: no digest in the reference, or a local layout without that manifest.
        RegistryError: the registry cannot be reached or serves other bytes.
    """
    if ref == "scratch":
        return Base("scratch")
    name, _, digest = ref.partition("@")
    if not digest:
        raise InputError(f"image.base {ref!r} is not pinned by digest",
                         hint="write it as name@sha256:<digest>")
    if name.startswith("oci:"):
        folder = Path(name.removeprefix("oci:"))

        def fetch_blob(d: str) -> bytes:
            member = f"blobs/sha256/{d.removeprefix('sha256:')}"
            if folder.is_file():  # an archive: a tar of a layout (what --image writes as .tar)
                with tarfile.open(folder) as tar:
                    for info in tar:
                        if info.name.removeprefix("./") == member and info.isfile():
                            return tar.extractfile(info).read()  # type: ignore[union-attr]
            elif (folder / member).is_file():
                return (folder / member).read_bytes()
            raise InputError(f"{folder} has no blob {d}",
                             hint="check image.base's digest against the layout's index")

        fetch_manifest = fetch_blob
    else:
        parsed = registry.Reference.parse(name)
        client = registry.Registry(parsed.registry)

        def fetch_manifest(d: str) -> bytes:
            return client.manifest(parsed.repository, d)[0]

        def fetch_blob(d: str) -> bytes:
            return client.blob(parsed.repository, d)

    manifest = json.loads(_cached(store, digest, fetch_manifest))
    if manifest.get("mediaType") in (_OCI_INDEX, _DOCKER_INDEX) or "manifests" in manifest:
        digest = registry.platform_manifest(manifest, arch)
        manifest = json.loads(_cached(store, digest, fetch_manifest))
    config = json.loads(_cached(store, manifest["config"]["digest"], fetch_blob))
    diff_ids = config["rootfs"]["diff_ids"]
    layers = [Layer(diff_id, d["digest"], d["size"], _cached(store, d["digest"], fetch_blob))
              for diff_id, d in zip(diff_ids, manifest["layers"], strict=True)]
    names: list[str] = []
    for layer in layers:  # one decompression each: checks the diff_id and lists the files
        raw = gzip.decompress(layer.data)
        if sha256_digest(raw) != layer.diff_id:
            raise RegistryError(f"a base layer does not match its diff_id {layer.diff_id}")
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            names += [n.removeprefix("./") for n in tar.getnames()]
    return Base(digest, layers, config, names)


def interpreters(base: Base) -> dict[str, str]:
    """Python versions (major.minor) whose executables the base's layers hold, with paths."""
    found: dict[str, str] = {}
    for name in base.names:
        m = _PYTHON.match(name)
        if m:
            found.setdefault(m.group(1), "/" + name)
    return found


def check_interpreter(base: Base, python: str, recipe_path: Path) -> str | None:
    """The base must hold the lock's Python (major.minor); checked before any layer is built.

    Returns where it is (e.g. /usr/bin/python3.11), or None for scratch.

    Raises:
        InputError: it does not, or it is musl-based (manylinux wheels need glibc).
    """
    if base.digest == "scratch":
        return None
    minor = ".".join(python.split(".")[:2])
    if any(re.match(r"^(usr/)?lib/ld-musl-", n) for n in base.names):
        raise InputError(f"{recipe_path}: the base image {base.digest} is musl-based (Alpine?), "
                         "but the lock holds manylinux wheels, built for glibc",
                         hint="pick a glibc base (Debian, Ubuntu, python:3.x-slim)")
    found = interpreters(base)
    if minor not in found:
        raise InputError(
            f"{recipe_path}: the base image {base.digest} has "
            + (f"Python {', '.join(sorted(found))}" if found else "no Python interpreter")
            + f", but the lock is for Python {python}",
            hint=f"pick a base with python{minor}, or change environment.python and re-lock")
    env = dict(e.split("=", 1) for e in base.config.get("config", {}).get("Env") or [])
    exact = env.get("PYTHON_VERSION")
    if python.count(".") == 2 and exact and exact != python:
        raise InputError(f"{recipe_path}: the base has Python {exact}; the recipe pins {python}")
    return found[minor]
