"""Locked Debian packages as image layers, assembled without a package manager.

Each `.deb` is fetched once into the store's blobs (checked against the lock's sha256), and
its data archive streamed, member by member in the archive's order, into one layer for all
the packages (in name order): owners root, times the image's mtime, modes and
links as the package has them, plus `var/lib/dpkg/status.d/<package>` (its control file, as
distroless writes it) so scanners and `dpkg -l`-style tools see what is installed.
Maintainer scripts are not run; the one layer `repro: maintainer steps` does what theirs
would have where it matters (see docs/images.md): the `python3` link, and the CA bundle.
"""

from __future__ import annotations

import io
import logging
import tarfile
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any, Protocol

from builder import hashing
from builder.errors import BuildError, FetchError
from builder.image import tarball

if TYPE_CHECKING:
    from builder.debian import Deb
    from builder.project import Project
    from builder.store import Store

log = logging.getLogger(__name__)

LAYER_FORMAT = "repro.deblayer/v2"  # v2: every package in one layer


class Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...

STATUS_D = "var/lib/dpkg/status.d"


def fetch(store: Store, deb: Deb, *, offline: bool = False) -> str:
    """The `.deb` as a checked blob of the store (downloaded once); its BLAKE3.

    Raises:
        FetchError: the mirror no longer has it (the pool moved), served other bytes, or
            (offline) it is not in the store.
    """
    from builder import download  # noqa: PLC0415
    from builder.blobs import arriving  # noqa: PLC0415

    known = store.blobs.by_sha256("sha256:" + deb.sha256)
    if known is not None and store.blobs.verify(known):
        return known
    if offline:
        raise FetchError(f"{deb.name} {deb.version} ({deb.filename}) is not in the store, and "
                         "--offline fetches nothing", hint="build once with the network")
    log.info("Fetching %s %s", deb.name, deb.version)
    try:
        with download.open_url(deb.url, f"system package {deb.name}") as (stream, _), \
                store.blobs.writer(sha256=True) as w:
            for chunk in arriving(stream):
                w.write(chunk)
            got = w.stored()
            if got.sha256 != "sha256:" + deb.sha256:
                raise FetchError(
                    f"{deb.url} served bytes whose sha256 is {got.sha256}, not the locked "
                    f"sha256:{deb.sha256} of {deb.name} {deb.version}; nothing was stored",
                    hint="restore lockfiles/ from version control (repro.lock may have been "
                         "edited), or re-lock with `repro lock --upgrade-system`")
    except OSError as exc:
        gone = "404" in str(exc) or "Not Found" in str(exc)
        raise FetchError(
            f"{deb.name} {deb.version} could not be fetched from {deb.url}: "
            + ("it has left the pool (Debian keeps only current versions there), and no "
               "cache here holds it" if gone else str(exc)),
            hint="re-lock to the current versions with `repro lock --upgrade-system`, or "
                 f"fetch the locked file from {deb.snapshot or 'snapshot.debian.org'} "
                 "into a mirror") from exc
    store.blobs.alias(got.sha256, got.digest)
    return got.digest


def layer_key(debs: list[Deb], mtime: int) -> str:
    return hashing.digest_json({"format": LAYER_FORMAT, "mtime": mtime,
                                "debs": [[d.name, d.sha256] for d in debs]})


def system_layer(project: Project, debs: list[Deb]) -> tuple[tarball.Layer, bool]:
    """Every locked package in one layer (from the store when it was made before), and
    whether it was. One layer, not one per package: a run's vfs storage copies every lower
    layer into each layer above it, so 40 small layers cost gigabytes."""
    store, mtime = project.store, project.recipe.image.mtime
    key = layer_key(debs, mtime)
    known = tarball.cached_layer(store, key, f"{len(debs)} Debian packages")
    if known is not None:
        return known, True
    blobs = [fetch(store, deb, offline=project.offline) for deb in debs]
    written: set[str] = set()

    def fill(out: tarfile.TarFile) -> None:
        for deb, blob in zip(debs, blobs, strict=True):
            with store.blobs.reader(blob) as f:
                control = _control(f, deb)
            with store.blobs.reader(blob) as f:
                _fill(out, f, deb, control, mtime, written)

    built = tarball.write_tar_layer(fill, store.blobs)
    tarball.note_layer(store, key, built)
    return built, False


def _ar(f: Reader, deb: Deb) -> Iterator[tuple[str, IO[bytes]]]:
    """The members of an ar archive (a .deb): name and a reader limited to its bytes."""
    if f.read(8) != b"!<arch>\n":
        raise BuildError(f"{deb.filename} is not a Debian package (no ar header)")
    while header := f.read(60):
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58])
        body = io.BytesIO(f.read(size))
        if size % 2:
            f.read(1)
        yield name, body


def _tar_of(f: Reader, deb: Deb, prefix: str) -> tarfile.TarFile:
    for name, body in _ar(f, deb):
        if name.startswith(prefix):
            if name.endswith(".zst"):
                raise BuildError(f"{deb.filename}: {name} is zstd-compressed, which this "
                                 "Python cannot read", hint="pin a version packed with xz")
            return tarfile.open(fileobj=body, mode="r:*")
    raise BuildError(f"{deb.filename} has no {prefix}* member")


def _control(f: Reader, deb: Deb) -> dict[str, bytes]:
    """The package's control file and md5sums."""
    out = {}
    with _tar_of(f, deb, "control.tar") as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix("./")
            if name in ("control", "md5sums") and member.isfile():
                data = tar.extractfile(member)
                out[name] = data.read() if data else b""
    if "control" not in out:
        raise BuildError(f"{deb.filename} has no control file")
    return out


def _fill(out: tarfile.TarFile, f: Reader, deb: Deb, control: dict[str, bytes],
          mtime: int, written: set[str]) -> None:
    """The package's data members (a folder another package made is not written again; a
    file two packages ship keeps the first, as dpkg refuses the second), then its
    status.d entries."""
    with _tar_of(f, deb, "data.tar") as tar:
        for member in tar:
            name = member.name.removeprefix("./").rstrip("/")
            if not name or name in written:
                if name and not member.isdir():
                    log.warning("%s ships %s, which an earlier package holds; kept the first",
                                deb.name, name)
                continue
            written.add(name)
            if name.startswith("/") or ".." in name.split("/"):
                raise BuildError(f"{deb.filename}: member {member.name} leaves the image root")
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = member.type, member.mode, mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.linkname = member.linkname.removeprefix("./") if member.islnk() \
                else member.linkname
            if member.isfile():
                info.size = member.size
                out.addfile(info, tar.extractfile(member))
            elif member.isdir() or member.issym() or member.islnk():
                out.addfile(info)
    for suffix, data in (("", control["control"]), (".md5sums", control.get("md5sums"))):
        if data is None:
            continue
        info = tarfile.TarInfo(f"{STATUS_D}/{deb.name}{suffix}")
        info.size, info.mode, info.mtime = len(data), 0o644, mtime
        out.addfile(info, io.BytesIO(data))


def maintainer_layer(project: Project, debs: list[Deb]) -> tarball.Layer:
    """What maintainer scripts would have made that the image needs: `/tmp` and `/var/tmp`
    (mode 1777), `usr/bin/python3` → `python3.X` (python3-minimal's link, when only
    python3.X is locked), `/etc/passwd` and `/etc/group` for root and nobody (base-passwd's
    postinst), and the CA bundle (update-ca-certificates concatenates
    /usr/share/ca-certificates; repro does, sorted)."""
    store, mtime = project.store, project.recipe.image.mtime
    names = {d.name for d in debs}
    minor = ".".join(project.recipe.environment.python.split(".")[:2])
    files: list[tuple[str, bytes | str | None]] = [("tmp", None), ("var/tmp", None)]
    if f"python{minor}-minimal" in names and "python3-minimal" not in names:
        files.append(("usr/bin/python3", f"python{minor}"))  # a link
    if "base-passwd" not in names:  # its postinst would write these from passwd.master
        files += [("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                                 b"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
                  ("etc/group", b"root:x:0:\nnogroup:x:65534:\n")]
    ca = next((d for d in debs if d.name == "ca-certificates"), None)
    if ca is not None:
        with store.blobs.reader(fetch(store, ca)) as f:
            files.append(("etc/ssl/certs/ca-certificates.crt", _bundle(f, ca)))

    def fill(out: tarfile.TarFile) -> None:
        for name, content in sorted(files, key=lambda f: f[0]):
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid = mtime, 0, 0
            if content is None:  # a folder anyone may write in, as /tmp is
                info.type, info.mode = tarfile.DIRTYPE, 0o1777
                out.addfile(info)
            elif isinstance(content, str):
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, content, 0o777
                out.addfile(info)
            else:
                info.size, info.mode = len(content), 0o644
                out.addfile(info, io.BytesIO(content))

    return tarball.write_tar_layer(fill, store.blobs)


def _bundle(f: Reader, deb: Deb) -> bytes:
    parts = []
    with _tar_of(f, deb, "data.tar") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if name.startswith("usr/share/ca-certificates/") and name.endswith(".crt") \
                    and member.isfile():
                data = tar.extractfile(member)
                parts.append((name, data.read() if data else b""))
    return b"".join(body if body.endswith(b"\n") else body + b"\n" for _, body in sorted(parts))


def interpreter(project: Project, debs: list[Deb]) -> str | None:
    """Where the locked Debian packages put the recipe's Python, or None."""
    minor = ".".join(project.recipe.environment.python.split(".")[:2])
    if any(d.name == f"python{minor}-minimal" for d in debs):
        return f"/usr/bin/python{minor}"
    return None


def layers(project: Project, debs: list[Deb]) -> Iterator[tuple[tarball.Layer,
                                                                dict[str, Any]]]:
    """The packages' layer, then the maintainer steps', each with what it holds."""
    built, cached = system_layer(project, debs)
    yield built, {"content": "debian: " + ", ".join(f"{d.name} {d.version}" for d in debs),
                  "diff_id": built.diff_id, "digest": built.digest, "size": built.size,
                  "cached": cached}
    steps = maintainer_layer(project, debs)
    yield steps, {"content": "repro: maintainer steps", "diff_id": steps.diff_id,
                  "digest": steps.digest, "size": steps.size, "cached": False}
