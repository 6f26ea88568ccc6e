"""Base images, pinned by digest: from a registry, from a local OCI layout (or its tar), or
scratch.

Every blob goes into the store's blob area (named by BLAKE3, with its sha256 as an alias)
once it has passed the digest and the size its descriptor gives, so a second build needs no
network. Nothing about a base is trusted: manifests and configs are read at most 4 MiB and
checked against the OCI image spec (an `Env` entry must hold `=`, the config must list one
diff_id per layer), and each layer is decompressed as a stream, never past
`REPRO_MAX_LAYER_BYTES` (default 16 GiB), to check its diff_id and list its files (so the
base's Python is found without running it). Memory stays bounded whatever a layer holds; a
base that breaks a rule is refused with exit 2 and the reason.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from builder import registry
from builder.blobs import CHUNK
from builder.errors import InputError
from builder.image.tarball import Layer
from builder.store import Store, atomic_write

_DOCKER_INDEX = "application/vnd.docker.distribution.manifest.list.v2+json"
_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_GZIP_LAYERS = ("application/vnd.oci.image.layer.v1.tar+gzip",
                "application/vnd.docker.image.rootfs.diff.tar.gzip")
_PYTHON = re.compile(r"^(?:usr/(?:local/)?)?bin/python(3\.\d+)$")
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
SCAN_FORMAT = "repro.basescan/v2"  # v2: only the names that matter, not every one
_NOTED = re.compile(r"^(?:(?:usr/(?:local/)?)?bin/python3\.\d+|(?:usr/)?lib/ld-musl-.*)$")


class BaseImageError(InputError):
    """A base image that breaks the rules: digest, size, spec, or a layer past the limit."""


@dataclass(frozen=True)
class Base:
    digest: str  # of the manifest, "scratch" for none
    layers: list[Layer] = field(default_factory=list)  # in the store (Layer.blob)
    config: dict[str, Any] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)  # paths saying what it is: python, musl


def max_layer_bytes() -> int:
    """The most a base layer may decompress to (REPRO_MAX_LAYER_BYTES; default 16 GiB)."""
    text = os.environ.get("REPRO_MAX_LAYER_BYTES", str(16 << 30))
    try:
        return int(text)
    except ValueError:
        raise InputError(f"REPRO_MAX_LAYER_BYTES={text!r} is not a number of bytes") from None


Opener = Callable[[str], contextlib.AbstractContextManager[BinaryIO]]


def _stored(store: Store, digest: str, size: int | None, opener: Opener, what: str) -> str:
    """The store's blob for an OCI digest, fetched (streamed, checked) if it has none.

    Raises:
        BaseImageError: the bytes have another digest, or another size than the descriptor.
    """
    if not _SHA256.fullmatch(digest):
        raise BaseImageError(f"{what}: {digest!r} is not a sha256 digest")
    found = store.blobs.by_sha256(digest)
    if found is not None:
        if store.blobs.verify(found):
            return found
        store.blobs.quarantine(found, f"{what} {digest} failed its digest; fetched again")
    legacy = store.bases.path(digest)  # blobs/sha256/<hex>, before the one blob area
    if legacy.is_file():
        with contextlib.suppress(OSError):
            moved = store.blobs.put_file(legacy, sha256=True)
            legacy.unlink()
            if moved.sha256 == digest:
                return moved.digest
    with opener(digest) as source, store.blobs.writer(sha256=True) as out:
        while chunk := source.read(CHUNK):
            out.write(chunk)
            if size is not None and out.size > size:
                raise BaseImageError(f"{what} {digest} is larger than the {size} bytes its "
                                     "descriptor says", hint="the base is not what it claims; "
                                                             "nothing was written")
        got = out.stored()
        if got.sha256 != digest:
            raise BaseImageError(f"{what} {digest} arrived as {got.sha256}",
                                 hint="the base is not what the recipe pinned; nothing was "
                                      "written")
        if size is not None and got.size != size:
            raise BaseImageError(f"{what} {digest} is {got.size} bytes; its descriptor says "
                                 f"{size}", hint="the base is not what it claims; nothing was "
                                                 "written")
    return got.digest


def _document(store: Store, digest: str, size: int | None, opener: Opener,
              what: str) -> dict[str, Any]:
    """A manifest, index or config: stored, then parsed (at most 4 MiB)."""
    if size is not None and size > registry.MAX_DOCUMENT:
        raise BaseImageError(f"{what} {digest} says it is {size} bytes; more than the 4 MiB "
                             "the OCI spec allows a manifest or config")
    blob = _stored(store, digest, size, opener, what)
    data = store.blobs.get(blob)
    if len(data) > registry.MAX_DOCUMENT:
        raise BaseImageError(f"{what} {digest} is over 4 MiB")
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise BaseImageError(f"{what} {digest} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BaseImageError(f"{what} {digest} is not a JSON object")
    return value


def _descriptor(d: Any, what: str) -> tuple[str, int]:
    if not isinstance(d, dict) or not isinstance(d.get("digest"), str) \
            or not isinstance(d.get("size"), int) or isinstance(d.get("size"), bool) \
            or d["size"] < 0:
        raise BaseImageError(f"{what}: a descriptor needs a sha256 digest and a size >= 0, "
                             f"not {str(d)[:200]}")
    return d["digest"], d["size"]


def check_config(config: dict[str, Any], layers: int, digest: str) -> None:
    """The parts of an image config repro reads, as the OCI image spec says they are.

    Raises:
        BaseImageError: one is not.
    """
    def bad(problem: str) -> BaseImageError:
        return BaseImageError(f"the base's config {digest} does not follow the OCI image "
                              f"spec: {problem}")
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise bad('rootfs must be {"type": "layers", "diff_ids": [...]}')
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) and _SHA256.fullmatch(d)
                                                 for d in diff_ids):
        raise bad("rootfs.diff_ids must be a list of sha256 digests")
    if len(diff_ids) != layers:
        raise bad(f"{len(diff_ids)} diff_ids for {layers} layers")
    inner = config.get("config") or {}
    if not isinstance(inner, dict):
        raise bad("config must be an object")
    env = inner.get("Env") or []
    if not isinstance(env, list) or not all(isinstance(e, str) and "=" in e for e in env):
        raise bad(f"config.Env entries must be strings NAME=VALUE, not {str(env)[:200]}")
    for key in ("Entrypoint", "Cmd"):
        value = inner.get(key)
        if value is not None and (not isinstance(value, list)
                                  or not all(isinstance(v, str) for v in value)):
            raise bad(f"config.{key} must be a list of strings")
    labels = inner.get("Labels")
    if labels is not None and (not isinstance(labels, dict)
                               or not all(isinstance(v, str) for v in labels.values())):
        raise bad("config.Labels must map strings to strings")


class _Bounded:
    """A decompressed layer as a stream: hashed (diff_id), and stopped past the limit."""

    def __init__(self, source: gzip.GzipFile, limit: int, digest: str) -> None:
        self.source, self.limit, self.digest = source, limit, digest
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(n if n >= 0 else CHUNK)
        self.size += len(data)
        if self.size > self.limit:
            raise BaseImageError(f"the layer {self.digest} decompresses past "
                                 f"{self.limit} bytes (REPRO_MAX_LAYER_BYTES)",
                                 hint="a base layer that large is likely a decompression bomb; "
                                      "raise REPRO_MAX_LAYER_BYTES if it is not")
        self.sha.update(data)
        return data


def diff_id(store: Store, blob: str, digest: str, limit: int) -> str:
    """The sha256 of a stored gzip layer's uncompressed bytes (its diff_id), decompressed as
    a stream and never past `limit` bytes.

    Raises:
        BaseImageError: it is not gzip, or decompresses past the limit.
    """
    with store.blobs.reader(blob) as compressed, \
            gzip.GzipFile(fileobj=compressed, mode="rb") as gz:  # type: ignore[call-overload]
        stream = _Bounded(gz, limit, digest)
        try:
            while stream.read(CHUNK):
                pass
        except (OSError, EOFError, zlib_error()) as exc:
            raise BaseImageError(f"the layer {digest} is not gzip: {exc}") from exc
    return "sha256:" + stream.sha.hexdigest()


def _scan(store: Store, layer: Layer, limit: int) -> list[str]:
    """The paths in a base layer that say what it is (Python interpreters, a musl loader),
    checking its diff_id; kept beside its blob, so a layer is decompressed once. Memory stays
    bounded whatever the layer holds."""
    assert layer.blob is not None  # noqa: S101  (base layers live in the store)
    memo = store.bases.scan(layer.blob)
    with contextlib.suppress(OSError, ValueError):
        done = json.loads(memo.read_text())
        if done.get("format") == SCAN_FORMAT and done.get("diff_id") == layer.diff_id:
            return list(done["names"])
    names: list[str] = []
    with store.blobs.reader(layer.blob) as compressed, \
            gzip.GzipFile(fileobj=compressed, mode="rb") as gz:  # type: ignore[call-overload]
        stream = _Bounded(gz, limit, layer.digest)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
                for info in tar:
                    name = info.name.removeprefix("./")
                    if _NOTED.match(name):  # interpreters and musl: all a base is asked
                        names.append(name)
                    tar.members = []  # a stream keeps every member it read: memory bounded
            while stream.read(CHUNK):
                pass  # what follows the archive's end is part of the diff_id too
        except (tarfile.TarError, OSError, EOFError, zlib_error()) as exc:
            raise BaseImageError(f"the base layer {layer.digest} is not a gzip tar: {exc}"
                                 ) from exc
    if "sha256:" + stream.sha.hexdigest() != layer.diff_id:
        raise BaseImageError(f"a base layer does not match its diff_id {layer.diff_id}",
                             hint="the base's config and layers disagree; nothing was written")
    atomic_write(memo, json.dumps({"format": SCAN_FORMAT, "diff_id": layer.diff_id,
                                   "names": names}).encode())
    return names


def zlib_error() -> type[Exception]:
    import zlib  # noqa: PLC0415

    return zlib.error


def _layout_opener(folder: Path) -> Opener:
    @contextlib.contextmanager
    def opener(d: str) -> Iterator[BinaryIO]:
        member = f"blobs/sha256/{d.removeprefix('sha256:')}"
        if folder.is_file():  # an archive: a tar of a layout (what --image writes as .tar)
            with tarfile.open(folder) as tar:
                for info in tar:
                    if info.name.removeprefix("./") == member and info.isfile():
                        extracted = tar.extractfile(info)
                        assert extracted is not None  # noqa: S101  (a regular file)
                        yield extracted  # type: ignore[misc]  # an IO[bytes] reads the same
                        return
        elif (folder / member).is_file():
            with (folder / member).open("rb") as f:
                yield f
                return
        raise InputError(f"{folder} has no blob {d}",
                         hint="check image.base's digest against the layout's index")
    return opener


def load(ref: str, store: Store, arch: str) -> Base:
    """The base a recipe names: `scratch`, `oci:PATH@sha256:…` or `REGISTRY/NAME@sha256:…`.

    Raises:
        InputError: no digest in the reference, or a local layout without that manifest.
        BaseImageError: the base breaks a rule (digest, size, spec, a layer past the limit).
        RegistryError: the registry cannot be reached or refuses.
    """
    if ref == "scratch":
        return Base("scratch")
    name, _, digest = ref.partition("@")
    if not digest:
        raise InputError(f"image.base {ref!r} is not pinned by digest",
                         hint="write it as name@sha256:<digest>")
    if name.startswith("oci:"):
        opener = _layout_opener(Path(name.removeprefix("oci:")))
        manifests = blobs = opener
    else:
        parsed = registry.Reference.parse(name)
        client = registry.Registry(parsed.registry)

        @contextlib.contextmanager
        def manifests(d: str) -> Iterator[BinaryIO]:
            import io  # noqa: PLC0415

            yield io.BytesIO(client.manifest(parsed.repository, d)[0])

        def blobs(d: str) -> contextlib.AbstractContextManager[BinaryIO]:
            return client.blob_stream(parsed.repository, d)

    manifest = _document(store, digest, None, manifests, "the base's manifest")
    if manifest.get("mediaType") in (_OCI_INDEX, _DOCKER_INDEX) or "manifests" in manifest:
        digest = registry.platform_manifest(manifest, arch)
        manifest = _document(store, digest, None, manifests, "the base's manifest")
    config_digest, config_size = _descriptor(manifest.get("config"), "manifest.config")
    config = _document(store, config_digest, config_size, blobs, "the base's config")
    described = manifest.get("layers")
    if not isinstance(described, list):
        raise BaseImageError(f"the base's manifest {digest} has no list of layers")
    check_config(config, len(described), config_digest)
    limit = max_layer_bytes()
    layers, names = [], []
    for i, (diff_id, d) in enumerate(zip(config["rootfs"]["diff_ids"], described, strict=True)):
        layer_digest, size = _descriptor(d, f"manifest.layers[{i}]")
        media = d.get("mediaType", _GZIP_LAYERS[0])
        if media not in _GZIP_LAYERS:
            raise BaseImageError(f"the base layer {layer_digest} is {media}; repro reads gzip "
                                 "layers only")
        blob = _stored(store, layer_digest, size, blobs, "the base layer")
        layer = Layer(diff_id, layer_digest, size, None, blob)
        names += _scan(store, layer, limit)
        layers.append(layer)
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
