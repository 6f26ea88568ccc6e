"""The remote cache: runs, environments and outputs as OCI artifacts in one registry repository.

    tag                      manifest (artifactType)           layers
    run-<run key hex>        application/vnd.repro.run.v1      record, outputs, data, recipe,
                                                               lock, baseline, code snapshot
    env-<env id hex>         application/vnd.repro.env.v1      the env's package layers
    out-<BLAKE3 hex>         application/vnd.repro.output.v1   none: `subject` is the run
    out-sha256-<hex>         (the same, by the output's sha256)
    out-<record hex>         (the same, by the run's record digest)

Every manifest has the empty config (`{}`), so a lookup is one GET of a tag. Blobs go up
first and the manifest last, under its tag (the registry refuses a manifest whose blobs it
lacks, so a reader never finds a half-pushed run). Runs and envs are signed (builder/signing.py):
their `dev.repro.signature` annotation covers the identity and the sha256 of the manifest
without its signature annotations, and only a trusted signer's (or, where the user's config
says so, the registry's) is served. Every byte pulled is checked against its sha256 and,
where the manifest names one, its BLAKE3, before it enters the store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import http.client
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from builder import hashing, signing
from builder.blobs import Stalled, arriving
from builder.config import RemoteSettings, user_config
from builder.errors import CheckFailed, InputError, RegistryError, StoreError
from builder.registry import MAX_DOCUMENT, Registry
from builder.store import Store

if TYPE_CHECKING:
    from builder.image.tarball import Layer
    from builder.project import Project
    from builder.records import RunRecord

log = logging.getLogger(__name__)
T = TypeVar("T")

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"
EMPTY_DESCRIPTOR: dict[str, Any] = {"mediaType": EMPTY_TYPE,
                                    "digest": hashing.sha256_digest(EMPTY), "size": 2}
ARTIFACT = {"run": "application/vnd.repro.run.v1", "env": "application/vnd.repro.env.v1",
            "out": "application/vnd.repro.output.v1"}
MEDIA = {
    "record": "application/vnd.repro.record.v2+json",
    "output": "application/octet-stream",
    "data": "application/octet-stream",
    "data-tree": "application/vnd.repro.data.v1.tar+gzip",
    "recipe": "application/toml",
    "pylock": "application/vnd.repro.pylock+toml",
    "lock": "application/vnd.repro.lock+toml",
    "code": "application/vnd.repro.code.v1.tar+gzip",
    "baseline": "application/vnd.repro.baseline.v2+json",
    "layer": "application/vnd.oci.image.layer.v1.tar+gzip",
}
# annotations
KIND, IDENTITY, SIGNER, SIGNATURE = ("dev.repro.kind", "dev.repro.identity", "dev.repro.signer",
                                     "dev.repro.signature")
ROLE, BLAKE3, TITLE = "dev.repro.role", "dev.repro.blake3", "org.opencontainers.image.title"
CREATED = "org.opencontainers.image.created"
_URL = re.compile(r"(?P<host>[a-z0-9]+(?:[.-][a-z0-9]+)*(?::\d+)?|\[::1\](?::\d+)?)"
                  r"/(?P<repo>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
                  r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)")
CHUNK = 1 << 20


class Untrusted(CheckFailed):
    """What the remote holds is unsigned, signed by a key not trusted here, or tampered."""


def tag(kind: str, identity: str) -> str:
    """The tag an identity is filed under: run-<hex>, env-<hex>, out-<hex>, out-sha256-<hex>."""
    if identity.startswith("sha256:"):
        return f"{kind}-sha256-{identity.removeprefix('sha256:')}"
    return f"{kind}-{identity.removeprefix(hashing.PREFIX)}"


def content_digest(manifest: dict[str, Any]) -> str:
    """What a signature covers: the manifest's sha256 without its signature annotations
    (canonical JSON, so the registry's whitespace changes nothing)."""
    notes = {k: v for k, v in (manifest.get("annotations") or {}).items()
             if k not in (SIGNER, SIGNATURE)}
    return hashing.sha256_digest(hashing.canonical_json({**manifest, "annotations": notes}))


@dataclass
class Moved:
    """What a push or pull did: blobs and bytes sent or received, blobs the other side had."""

    blobs: int = 0
    bytes: int = 0
    skipped: int = 0
    tags: list[str] = field(default_factory=list)

    def add(self, other: Moved) -> None:
        self.blobs += other.blobs
        self.bytes += other.bytes
        self.skipped += other.skipped
        self.tags += other.tags

    def to_json(self) -> dict[str, Any]:
        return {"blobs": self.blobs, "bytes": self.bytes, "skipped": self.skipped,
                "tags": self.tags}


class Remote:
    """The remote repository one command uses (`--remote`, REPRO_REMOTE, the configs)."""

    def __init__(self, settings: RemoteSettings, store: Store) -> None:
        if settings.url is None:
            raise ValueError("no remote configured")
        if "@" in settings.url.split("://", 1)[-1].split("/", 1)[0]:  # never echoed
            raise InputError(f"{settings.source}: the remote's url holds credentials "
                             "(USER:PASSWORD@HOST); they are not used, and should not be there",
                             hint="give them through `docker login`, a credential helper, or "
                                  "REPRO_REGISTRY_USERNAME and REPRO_REGISTRY_PASSWORD")
        found = _URL.fullmatch(settings.url.removeprefix("oci://"))
        port = re.search(r":(\d+)$", found["host"]) if found else None
        if found is None or not ("." in found["host"] or ":" in found["host"]
                                 or found["host"] == "localhost") \
                or (port is not None and not 0 < int(port[1]) < 65536):
            raise InputError(f"{settings.source}: the remote {settings.url!r} is not "
                             "HOST[:PORT]/PATH", hint="e.g. ghcr.io/team/repro-cache or "
                                                      "localhost:5000/cache (no tag)")
        self.settings = settings
        self.store = store
        self.host, self.repo = found["host"], found["repo"]
        self.url = f"{self.host}/{self.repo}"
        self.client = Registry(self.host, user_named=settings.user_named)
        self._envs: dict[str, dict[str, dict[str, Any]] | None] = {}
        self.failed: str | None = None  # why the remote failed, once it has

    @classmethod
    def of(cls, settings: RemoteSettings, store: Store) -> Remote | None:
        return cls(settings, store) if settings.url else None

    @functools.cached_property
    def signer(self) -> signing.Signer | None:
        return signing.load(self.settings.sign_key) if self.settings.sign_key else None

    # -- failure never blocks local work ---------------------------------------------------
    def safely(self, what: str, attempt: Callable[[], T], default: T) -> T:
        """`attempt()`, or `default` with a warning when the remote fails (fatal, exit 3,
        under --require-remote). What the remote serves untrusted is a warning either way."""
        if self.failed is not None:  # said once; not tried again by this command
            return default
        try:
            return attempt()
        except Untrusted as exc:
            log.warning("%s; %s", exc.message, what)
            return default
        except RegistryError as exc:
            if self.settings.require:
                raise RegistryError(f"the remote {self.url} failed ({exc.message}) and "
                                    "--require-remote is set", hint=exc.hint) from exc
            self.failed = exc.message
            log.warning("the remote %s failed: %s; %s (and the remote is not tried again by "
                        "this command)", self.url, exc.message, what)
            return default

    # -- manifests -------------------------------------------------------------------------
    def manifest(self, name: str) -> dict[str, Any] | None:
        """The manifest under a tag (one GET), or None."""
        found = self.client.manifest_if(self.repo, name)
        if found is None:
            return None
        try:
            doc = json.loads(found[0])
        except (ValueError, RecursionError):
            doc = None
        if not _well_formed(doc):
            raise RegistryError(f"{self.url}:{name} is not an OCI image manifest repro can "
                                "read", hint="what is under that tag was not pushed by repro")
        return dict(doc)

    def trusted(self, manifest: dict[str, Any], kind: str, identity: str) -> str:
        """Who vouches for a manifest: a trusted key, or "registry" (the user's config trusts
        this remote's access control).

        Raises:
            Untrusted: it is for another identity, unsigned, signed by a key not trusted here,
                or its signature does not verify (tampering: never served).
        """
        notes = manifest.get("annotations") or {}
        what = f"{self.url}: the {kind} {identity}"
        if notes.get(KIND) != kind or notes.get(IDENTITY) != identity \
                or manifest.get("artifactType") != ARTIFACT[kind]:
            raise Untrusted(f"{what} is filed under a manifest for another "
                            f"{notes.get(KIND, 'thing')} ({notes.get(IDENTITY)}): not used")
        signer, signature = notes.get(SIGNER), notes.get(SIGNATURE)
        hint = ("trust its signer with --trust KEY, REPRO_TRUSTED_KEYS, or trusted-keys in "
                f"[remote] of your config ({user_config()})")
        if signer and signature:
            if _valid_signer(manifest, kind, identity) is None:
                raise Untrusted(f"{what} carries a signature that does not verify: it was "
                                "changed after it was signed, and is not used",
                                hint="push it again from a trusted machine")
            if signer in self.settings.trusted:
                return str(signer)
        if self.settings.trust_registry:
            return "registry"
        if signer and signature:
            raise Untrusted(f"{what} is signed by {signer}, a key not trusted here: not used",
                            hint=hint)
        raise Untrusted(f"{what} is not signed: not used",
                        hint="push with --sign-key FILE, or mark the remote trust = "
                             f'"registry" in your own config ({user_config()})')

    def _put_manifest(self, manifest: dict[str, Any], kind: str,
                      identity: str) -> dict[str, Any]:
        """Sign (when a key is set) and upload a manifest under its identity's tag; returns
        its descriptor. A signed run or env already there is never replaced by an unsigned
        one (a push without a key would otherwise unpublish CI's signed answer)."""
        signed = kind in ("run", "env")
        if self.signer is not None and signed:
            notes = manifest["annotations"]
            notes.pop(SIGNATURE, None)
            notes[SIGNER] = self.signer.public
            notes[SIGNATURE] = self.signer.sign(signing.fingerprint(
                kind, identity, content_digest(manifest)))
        body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        if len(body) > MAX_DOCUMENT:
            raise InputError(f"the {kind} manifest for {identity} is over 4 MiB (too many "
                             "outputs or data inputs for one manifest)")
        if signed and self.signer is None:
            there = self.client.manifest_if(self.repo, tag(kind, identity))
            signer = _valid_signer(json.loads(there[0]), kind, identity) if there else None
            if there is not None and signer is not None:
                log.warning("%s:%s is signed by %s; an unsigned push does not replace it",
                            self.url, tag(kind, identity), signer)
                return {"mediaType": MANIFEST, "digest": hashing.sha256_digest(there[0]),
                        "size": len(there[0]), "kept": True}
        digest = self.client.push_manifest(self.repo, tag(kind, identity), body, MANIFEST)
        return {"mediaType": MANIFEST, "digest": digest, "size": len(body)}

    # -- blobs -----------------------------------------------------------------------------
    def _upload(self, sha: str, size: int, data: bytes | Callable[[], Any],
                moved: Moved, what: str, mount_from: str | None = None) -> None:
        if size > 64 << 20:
            log.info("Uploading %s (%.1f MiB)", what, size / 2**20)
        if callable(data):
            data = functools.partial(_counted, data, f"Pushing {what}", size)
        if self.client.push_blob(self.repo, sha, data, size, mount_from=mount_from):
            moved.blobs += 1
            moved.bytes += size
        else:
            moved.skipped += 1

    def _blob_layer(self, digest: str, media: str, moved: Moved, what: str,
                    **notes: str) -> dict[str, Any]:
        """Upload a store blob (read twice: for its sha256, then to send it; each read checks
        its BLAKE3) and describe it."""
        blobs = self.store.blobs
        sha = hashlib.sha256()
        with blobs.reader(digest) as reader:
            size = len(reader)
            while chunk := reader.read(CHUNK):
                sha.update(chunk)
        sha256 = "sha256:" + sha.hexdigest()
        self._upload(sha256, size, functools.partial(blobs.reader, digest), moved, what)
        return {"mediaType": media, "digest": sha256, "size": size,
                "annotations": {BLAKE3: digest, **notes}}

    def _bytes_layer(self, data: bytes, media: str, moved: Moved, what: str,
                     **notes: str) -> dict[str, Any]:
        sha256 = hashing.sha256_digest(data)
        self._upload(sha256, len(data), data, moved, what)
        return {"mediaType": media, "digest": sha256, "size": len(data),
                "annotations": {BLAKE3: hashing.digest_bytes(data), **notes}}

    def fetch(self, layer: dict[str, Any], moved: Moved) -> str:
        """A layer's blob in the store (downloaded unless the store has it), checked against
        its sha256, its size and the BLAKE3 the manifest names. Returns its BLAKE3.

        Raises:
            RegistryError: the registry served other bytes (nothing was stored).
        """
        sha, size = str(layer.get("digest", "")), layer.get("size")
        b3 = (layer.get("annotations") or {}).get(BLAKE3)
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", sha) or type(size) is not int \
                or size < 0 or (b3 is not None and not hashing.is_digest(b3)):
            raise RegistryError(f"{self.url}: a manifest describes a blob badly ({sha!r})")
        blobs = self.store.blobs
        if b3 is not None and blobs.has(b3):
            moved.skipped += 1
            return str(b3)
        known = blobs.by_sha256(sha)
        if known is not None and (b3 is None or known == b3):
            moved.skipped += 1
            return known
        from builder.progress import progress  # noqa: PLC0415

        def attempt() -> str:
            with self.client.blob_stream(self.repo, sha) as body, \
                    blobs.writer(sha256=True) as w, \
                    progress(f"Pulling {sha[7:19]}", size, unit="bytes") as advance:
                try:
                    for chunk in arriving(body):
                        if w.size + len(chunk) > size:
                            raise RegistryError(f"{self.url}: blob {sha} is longer than its "
                                                f"{size} bytes; nothing was stored")
                        w.write(chunk)
                        advance(len(chunk))
                except Stalled as exc:
                    raise RegistryError(f"{self.url}: blob {sha} arrives too slowly ({exc}); "
                                        "given up, nothing stored") from exc
                if w.size < size:  # the connection closed early: worth another try
                    raise http.client.IncompleteRead(b"", size - w.size)
                got = w.stored()
                if got.sha256 != sha or got.size != size:
                    raise RegistryError(f"{self.url}: blob {sha} arrived as {got.sha256} "
                                        f"({got.size} bytes); nothing was stored",
                                        hint="the registry's storage is damaged or was "
                                             "changed; push it again")
                if b3 is not None and got.digest != b3:
                    raise RegistryError(f"{self.url}: blob {sha} is not the {b3} its "
                                        "manifest names; nothing was stored")
            return got.digest

        digest = self.client.retrying(f"downloading {sha[:19]}", attempt)
        moved.blobs += 1
        moved.bytes += size
        return digest

    # -- runs ------------------------------------------------------------------------------
    def push_run(self, digest: str, record: RunRecord, project: Project | None, *,
                 data: bool = True) -> Moved:
        """Upload a successful run: its record and outputs, its data inputs (unless not
        `data`), and its recipe, lock and code snapshot when the project still has the ones
        it ran with; then `run-<key>`, then `out-<digest>` for each output.

        Raises:
            RegistryError: the remote refused or failed.
            InputError: the run failed, or another record answers its key here (only what
                the store serves is shared).
        """
        if not record.succeeded:
            raise InputError(f"run {record.run_key} failed; only successful runs are pushed")
        answer = self.store.records.for_key(record.run_key)
        if answer != digest:
            raise InputError(
                f"record {digest} of run {record.run_key[7:19]} is not what this store serves "
                "for its key (" + (f"record {answer} is: this one is a verification's "
                                   "re-run" if answer else "nothing is: its env was found "
                                   "tampered") + "); pushing it would re-point the remote's "
                "run tag", hint=f"push the key's answer (`repro push {record.run_key[7:19]}`)"
                if answer else "run the recipe again, then push")
        moved = Moved()
        layers = [self._bytes_layer(self.store.blobs.get(digest), MEDIA["record"], moved,
                                    "the record", **{ROLE: "record"})]
        for out in record.outputs:
            layers.append(self._blob_layer(out.digest, MEDIA["output"], moved, out.path,
                                           **{ROLE: "output", TITLE: out.path}))
        left_out = []
        if project is not None and _same_inputs(project, record):
            layers += self._project_layers(project, record, moved, data=data)
            if record.software.image:
                self._push_image(project, record.software.image, moved)
            if not data and record.data:
                left_out.append("data")
        else:
            left_out += ["recipe", "lock", "code", *(["data"] if record.data else [])]
            log.warning("the project here is not the one run %s was made from (recipe, lock, "
                        "code or data changed since): it is pushed without its %s, so it can "
                        "answer its run key but not be re-made from the remote alone",
                        record.run_key[7:19], ", ".join(left_out))
        notes = {KIND: "run", IDENTITY: record.run_key, "dev.repro.record": digest,
                 "dev.repro.env-id": record.env, "dev.repro.recipe": record.recipe.name,
                 CREATED: record.ended, **({"dev.repro.left-out": ",".join(left_out)}
                                           if left_out else {}),
                 **({"dev.repro.image": record.software.image} if record.software.image
                    else {})}
        self._upload(str(EMPTY_DESCRIPTOR["digest"]), 2, EMPTY, moved, "the empty config")
        run_manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "artifactType": ARTIFACT["run"],
                        "config": EMPTY_DESCRIPTOR, "layers": layers, "annotations": notes}
        subject = self._put_manifest(run_manifest, "run", record.run_key)
        if not subject.pop("kept", False):
            moved.tags.append(tag("run", record.run_key))
        for out, layer in zip(record.outputs, layers[1:], strict=False):
            for name in (out.digest, str(layer["digest"])):
                self._put_manifest({
                    "schemaVersion": 2, "mediaType": MANIFEST, "artifactType": ARTIFACT["out"],
                    "config": EMPTY_DESCRIPTOR, "layers": [EMPTY_DESCRIPTOR],
                    "subject": subject,
                    "annotations": {KIND: "out", IDENTITY: name, BLAKE3: out.digest,
                                    "dev.repro.run-key": record.run_key, TITLE: out.path,
                                    CREATED: record.ended}}, "out", name)
                moved.tags.append(tag("out", name))
        self._put_manifest({  # the record digest finds its run too (reproduce, lookup)
            "schemaVersion": 2, "mediaType": MANIFEST, "artifactType": ARTIFACT["out"],
            "config": EMPTY_DESCRIPTOR, "layers": [EMPTY_DESCRIPTOR], "subject": subject,
            "annotations": {KIND: "out", IDENTITY: digest, BLAKE3: digest,
                            "dev.repro.run-key": record.run_key, ROLE: "record",
                            CREATED: record.ended}}, "out", digest)
        moved.tags.append(tag("out", digest))
        return moved

    def _project_layers(self, project: Project, record: RunRecord, moved: Moved, *,
                        data: bool) -> list[dict[str, Any]]:
        """The recipe, the lock, the baseline (when committed), a code snapshot and (with
        `data`) the data inputs (a URL input's stored copy, if the store has one)."""
        from builder import baseline as baselines  # noqa: PLC0415
        from builder import lock  # noqa: PLC0415
        from builder.image.build import code_layer  # noqa: PLC0415

        recipe = project.recipe
        rel = recipe.lock_dir.relative_to(recipe.root)
        layers = [
            self._bytes_layer(recipe.path.read_bytes(), MEDIA["recipe"], moved, "the recipe",
                              **{ROLE: "recipe", TITLE: recipe.path.name}),
            self._bytes_layer((recipe.lock_dir / lock.PYLOCK).read_bytes(), MEDIA["pylock"],
                              moved, "the lock", **{ROLE: "pylock",
                                                    TITLE: str(rel / lock.PYLOCK)}),
            self._bytes_layer((recipe.lock_dir / lock.REPRO_LOCK).read_bytes(), MEDIA["lock"],
                              moved, "the lock", **{ROLE: "lock",
                                                    TITLE: str(rel / lock.REPRO_LOCK)}),
        ]
        base = recipe.lock_dir / baselines.FILE  # what statistical reproductions compare with
        if base.is_file():
            layers.append(self._bytes_layer(base.read_bytes(), MEDIA["baseline"], moved,
                                            "the baseline", **{ROLE: "baseline",
                                                               TITLE: str(rel / baselines.FILE)}))
        with self.store.scratch() as tmp:
            snapshot = code_layer(project, tmp, at="")
        assert snapshot.blob is not None  # noqa: S101  (write_layer stores it)
        layers.append(self._blob_layer(snapshot.blob, MEDIA["code"], moved, "the code",
                                       **{ROLE: "code", "dev.repro.code": record.code.digest}))
        if not data:
            return layers
        for name, facts in sorted(record.data.items()):
            path = recipe.root / facts.path
            notes = {ROLE: "data", TITLE: facts.path, "dev.repro.data": name,
                     "dev.repro.data-digest": facts.digest}
            if facts.url:  # the store's copy, if it has one; else it is fetched again
                if self.store.blobs.has(facts.digest):
                    layers.append(self._blob_layer(facts.digest, MEDIA["data"], moved,
                                                   f"data {name}", **notes,
                                                   **{"dev.repro.data-url": facts.url}))
            elif path.is_file():
                layers.append(self._file_layer(path, facts.digest, moved, notes))
            else:
                from builder.image import tarball  # noqa: PLC0415

                tree = tarball.write_layer([(path, "")], 0, self.store.blobs)
                assert tree.blob is not None  # noqa: S101  (write_layer stores it)
                layers.append(self._blob_layer(tree.blob, MEDIA["data-tree"], moved,
                                               f"data {name}", **notes))
        return layers

    def _push_image(self, project: Project, digest: str, moved: Moved) -> None:
        """The image a run ran in (code layer and all), by digest: its blobs from the
        image layout built here, then its manifest, which the run names."""
        from builder.image.build import build_image  # noqa: PLC0415

        built = build_image(project)  # layers from the store: an assembly, not a build
        if built.digest != digest:
            log.warning("the image built here is %s, not the %s run %s ran in: the image is "
                        "not pushed", built.digest, digest, project.recipe.name)
            return
        from builder import lock  # noqa: PLC0415
        from builder.registry import Reference  # noqa: PLC0415

        base = lock.base_ref(project.recipe, project.lock).partition("@")[0]
        source = None if base in ("scratch", "") or base.startswith("oci:") \
            else Reference.parse(base)
        mount = source.repository if source and source.registry == self.host else None
        folder = built.layout / "blobs" / "sha256"
        body = (folder / digest.removeprefix("sha256:")).read_bytes()
        manifest = json.loads(body)
        for x in [manifest["config"], *manifest["layers"]]:
            path = folder / str(x["digest"]).removeprefix("sha256:")
            self._upload(str(x["digest"]), int(x["size"]), functools.partial(path.open, "rb"),
                         moved, "an image layer", mount_from=mount)
        self.client.push_manifest(self.repo, digest, body, MANIFEST)

    def _file_layer(self, path: Path, digest: str, moved: Moved,
                    notes: dict[str, str]) -> dict[str, Any]:
        """A data file, uploaded from where it lies (no copy in the store): hashed once to
        check it is still what the run read, then streamed (the registry checks the sha256
        again, so a file changed in between fails the upload)."""
        import blake3  # noqa: PLC0415

        sha, b3 = hashlib.sha256(), blake3.blake3()
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                sha.update(chunk)
                b3.update(chunk)
            size = f.tell()
        if hashing.PREFIX + b3.hexdigest() != digest:
            raise StoreError(f"{path} changed since the run read it; it is not pushed", path)
        sha256 = "sha256:" + sha.hexdigest()
        self._upload(sha256, size, functools.partial(path.open, "rb"), moved, str(path))
        return {"mediaType": MEDIA["data"], "digest": sha256, "size": size,
                "annotations": {BLAKE3: digest, **notes}}

    def find_run(self, run_key: str) -> tuple[dict[str, Any], str] | None:
        """The run filed under a run key, and who vouches for it (one GET); None if none.

        Raises:
            Untrusted: it is not signed by a key trusted here.
        """
        manifest = self.manifest(tag("run", run_key))
        if manifest is None:
            return None
        return manifest, self.trusted(manifest, "run", run_key)

    def record_of(self, run_key: str, manifest: dict[str, Any],
                  moved: Moved) -> tuple[str, RunRecord]:
        """The run's record, pulled into the store's blobs (not yet indexed) and checked:
        the one the signed manifest names, a success, of this run key."""
        from builder.records import RunRecord  # noqa: PLC0415

        layers = [x for x in manifest.get("layers") or [] if isinstance(x, dict)]
        named = (manifest.get("annotations") or {}).get("dev.repro.record")
        first = next((x for x in layers if (x.get("annotations") or {}).get(ROLE) == "record"),
                     None)
        if first is None or (first.get("annotations") or {}).get(BLAKE3) != named:
            raise RegistryError(f"{self.url}: the run {run_key} has no record layer naming "
                                f"{named}")
        digest = self.fetch(first, moved)
        record = RunRecord.decode(self.store.blobs.get(digest), self.store.blobs.path(digest))
        if record.run_key != run_key or not record.succeeded:
            raise Untrusted(f"{self.url}: the record filed under run {run_key} is "
                            + ("a failed run" if record.run_key == run_key
                               else f"for run {record.run_key}") + ": not used")
        return digest, record

    def pull_run(self, run_key: str, *, everything: bool = False,
                 moved: Moved | None = None) -> tuple[str, RunRecord] | None:
        """A run from the remote into the store: its record and outputs (and, with
        `everything`, its data, recipe, lock and code), checked, then indexed so it answers
        its run key here. None when the remote has no such run.

        Raises:
            Untrusted: not signed by a trusted key. RegistryError: the remote failed.
        """
        moved = moved if moved is not None else Moved()
        found = self.find_run(run_key)
        if found is None:
            return None
        manifest, signer = found
        digest, record = self.record_of(run_key, manifest, moved)
        layers = {(x.get("annotations") or {}).get(BLAKE3): x
                  for x in manifest.get("layers") or [] if isinstance(x, dict)}
        for out in record.outputs:
            if out.digest not in layers:
                raise RegistryError(f"{self.url}: run {run_key} lacks its output {out.path}")
            self.fetch(layers[out.digest], moved)
        if everything:
            for layer in layers.values():
                self.fetch(layer, moved)
        self.store.records.index(digest, record)
        log.info("Pulled run %s from %s (vouched for by %s)", run_key[7:19], self.url, signer)
        return digest, record

    def answer(self, run_key: str) -> tuple[str, RunRecord] | None:
        """A run key's answer from the remote, pulled into the store; None when the remote
        has none, cannot be reached (a warning) or is not trusted (a warning)."""
        return self.safely("training instead",
                           lambda: self.pull_run(run_key), None)

    def producer(self, digest: str) -> tuple[str, RunRecord] | None:
        """Which run made the output with this digest (BLAKE3 or sha256), or has this
        record digest: the reverse index (one GET) then the run (one GET, its signature
        checked) and its record (read, not indexed: a lookup pulls no models)."""
        index = self.manifest(tag("out", digest))
        if index is None:
            return None
        run_key = str((index.get("annotations") or {}).get("dev.repro.run-key", ""))
        found = self.find_run(run_key) if hashing.is_digest(run_key) else None
        if found is None:
            return None
        record_digest, record = self.record_of(run_key, found[0], Moved())
        if digest != record_digest and not any(digest in (o.digest, _sha_of(found[0], o.digest))
                                               for o in record.outputs):
            raise Untrusted(f"{self.url}: {tag('out', digest)} names run {run_key}, which "
                            "did not make it: not used")
        return record_digest, record

    # -- environments ----------------------------------------------------------------------
    def push_env(self, project: Project) -> Moved:
        """Upload the env's package layers (built here first where the store lacks them) as
        `env-<env id>`: no code layer, so a code change never moves it."""
        from builder.image.build import package_layers  # noqa: PLC0415

        moved = Moved()
        layers = []
        for pkg, key, layer in package_layers(project):
            assert layer.blob is not None  # noqa: S101  (package layers are stored)
            self._upload(layer.digest, layer.size,
                         functools.partial(self.store.blobs.reader, layer.blob), moved,
                         f"{pkg.name} {pkg.version}")
            layers.append({"mediaType": MEDIA["layer"], "digest": layer.digest,
                           "size": layer.size,
                           "annotations": {BLAKE3: layer.blob, "dev.repro.layer-key": key,
                                           "dev.repro.diff-id": layer.diff_id,
                                           TITLE: f"{pkg.name} {pkg.version}"}})
        env_id = project.lock.env_id
        self._upload(str(EMPTY_DESCRIPTOR["digest"]), 2, EMPTY, moved, "the empty config")
        put = self._put_manifest({"schemaVersion": 2, "mediaType": MANIFEST,
                                  "artifactType": ARTIFACT["env"], "config": EMPTY_DESCRIPTOR,
                                  "layers": layers,
                                  "annotations": {KIND: "env", IDENTITY: env_id,
                                                  "dev.repro.recipe": project.recipe.name,
                                                  CREATED: _now()}}, "env", env_id)
        if not put.get("kept"):
            moved.tags.append(tag("env", env_id))
        return moved

    def env_layers(self, env_id: str) -> dict[str, dict[str, Any]]:
        """The env's layers by layer key ({} when the remote has none); one GET per env.

        Raises:
            Untrusted, RegistryError.
        """
        if env_id not in self._envs:
            self._envs[env_id] = None
            manifest = self.manifest(tag("env", env_id))
            if manifest is not None:
                self.trusted(manifest, "env", env_id)
                self._envs[env_id] = {
                    str(x["annotations"]["dev.repro.layer-key"]): x
                    for x in manifest.get("layers") or []
                    if isinstance(x, dict) and isinstance(x.get("annotations"), dict)
                    and "dev.repro.layer-key" in x["annotations"]}
        return self._envs[env_id] or {}

    def layer(self, env_id: str, key: str) -> Layer | None:
        """A package layer from the remote's env, into the store; None (with a warning when
        the remote failed or is not trusted) when there is none to use."""
        return self.safely("building the layer here", lambda: self._layer(env_id, key), None)

    def _layer(self, env_id: str, key: str, moved: Moved | None = None) -> Layer | None:
        """A package layer from the remote's env, into the store, its diff_id checked by
        decompressing it; None when the env has no layer of that key.

        Raises:
            Untrusted, RegistryError.
        """
        from builder.image.tarball import Layer  # noqa: PLC0415

        described = self.env_layers(env_id).get(key)
        if described is None:
            return None
        from builder.image import base  # noqa: PLC0415

        blob = self.fetch(described, moved if moved is not None else Moved())
        diff_id = described["annotations"].get("dev.repro.diff-id")
        try:
            unpacked = base.diff_id(self.store, blob, str(described["digest"]),
                                    base.max_layer_bytes())
        except base.BaseImageError as exc:  # not gzip, or a bomb: never used
            unpacked = exc.message
        if unpacked != diff_id:
            self.store.blobs.quarantine(blob, "its uncompressed digest is not the diff_id "
                                              "the remote's manifest names")
            raise RegistryError(f"{self.url}: a layer of env {env_id} is not the tar its "
                                "manifest describes")
        return Layer(str(diff_id), str(described["digest"]), int(described["size"]), None,
                     blob)

    def pull_env(self, env_id: str, moved: Moved) -> int:
        """An env's package layers into the store, each noted so `build --image` finds it.
        Returns how many; 0 when the remote has no such env.

        Raises:
            Untrusted, RegistryError.
        """
        from builder.image.tarball import note_layer  # noqa: PLC0415

        found = self.env_layers(env_id)
        for key in sorted(found):
            layer = self._layer(env_id, key, moved)
            assert layer is not None  # noqa: S101  (the key is the env's)
            note_layer(self.store, key, layer)
        return len(found)

    # -- the remote as a whole -------------------------------------------------------------
    def ls(self) -> dict[str, list[str]]:
        """Every tag, by kind (pages through the tag list: never on a lookup's path)."""
        kinds: dict[str, list[str]] = {"run": [], "env": [], "out": [], "other": []}
        for name in self.client.tags(self.repo):
            kind = name.split("-", 1)[0]
            kinds[kind if kind in kinds else "other"].append(name)
        return kinds

    def remove_older(self, days: float, *, dry_run: bool = False) -> list[str]:
        """Delete runs and envs pushed more than `days` ago, and the out- tags of those runs.

        Raises:
            RegistryError: the registry does not allow deletes.
        """
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
        kinds = self.ls()
        gone: list[str] = []
        for name in [*kinds["run"], *kinds["env"], *kinds["out"]]:
            found = self.client.manifest_if(self.repo, name)
            try:
                doc = json.loads(found[0]) if found else None
            except (ValueError, RecursionError):
                doc = None
            if doc is None or not _well_formed(doc):
                continue  # not repro's, or damaged: left for whoever wrote it
            created = (doc.get("annotations") or {}).get(CREATED, "")
            try:
                when = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
            except ValueError:
                continue
            if when >= cutoff:
                continue
            if not dry_run and found and not self.client.delete_manifest(
                    self.repo, hashing.sha256_digest(found[0])):
                raise RegistryError(f"{self.host} does not allow deletes",
                                    hint="enable them (Distribution: storage.delete.enabled: "
                                         "true), or use the registry's own retention rules")
            gone.append(name)
        return gone


@contextlib.contextmanager
def _counted(opener: Callable[[], Any], what: str, size: int) -> Iterator[Any]:
    """A stream to upload, drawing a progress bar (on a terminal) as it is read."""
    from builder.progress import progress  # noqa: PLC0415

    with opener() as stream, progress(what, size, unit="bytes") as advance:
        yield _Counting(stream, advance)


class _Counting:
    """Chunks of 1 MiB for http.client to send (a stream with `read` would be read 8 KiB at
    a time), counted as they go."""

    def __init__(self, stream: Any, advance: Callable[[float], None]) -> None:
        self.stream, self.advance = stream, advance

    def __iter__(self) -> Iterator[bytes]:
        while data := self.stream.read(CHUNK):
            self.advance(len(data))
            yield data


def _strings(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _well_formed(doc: object) -> bool:
    """A manifest whose parts have the types repro reads (a registry, or whoever wrote to
    it, can serve any JSON under a tag)."""
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        return False
    layers = doc.get("layers", [])
    return (_strings(doc.get("annotations", {})) and isinstance(layers, list)
            and all(isinstance(x, dict) and _strings(x.get("annotations", {})) for x in layers))


def _valid_signer(manifest: dict[str, Any], kind: str, identity: str) -> str | None:
    """The key whose signature over this manifest verifies, trusted here or not."""
    notes = manifest.get("annotations") if isinstance(manifest, dict) else None
    if not isinstance(notes, dict):
        return None
    signer, signature = notes.get(SIGNER), notes.get(SIGNATURE)
    if not (isinstance(signer, str) and isinstance(signature, str)):
        return None
    good = signing.verify(signer, signature, signing.fingerprint(
        kind, identity, content_digest(manifest)))
    return signer if good else None


def _sha_of(manifest: dict[str, Any], b3: str) -> str | None:
    return next((str(x["digest"]) for x in manifest.get("layers") or []
                 if isinstance(x, dict) and (x.get("annotations") or {}).get(BLAKE3) == b3),
                None)


def _same_inputs(project: Project, record: RunRecord) -> bool:
    """Whether the project here still has the recipe, lock, code and data the run had."""
    try:
        project.digest_inputs()
        return (project.recipe.digest() == record.recipe.digest
                and project.lock.env_id == record.env
                and project.code.digest == record.code.digest
                and all(project.data.get(n) == d.digest for n, d in record.data.items()))
    except (InputError, StoreError, CheckFailed):
        return False


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
