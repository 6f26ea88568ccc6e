"""The content-addressed store: blobs, environments, locks between processes, garbage collection.

    $REPRO_HOME/
        objects/<2 hex>/<62 hex>     immutable blobs, named by their BLAKE3 digest
        envs/<64 hex>/               a complete environment, named by its env id
        envs/.tmp-*                  a build in progress (or one that was interrupted)
        locks/<64 hex>.lock          held while an environment is built or removed
        runs/<64 hex>                the record digest of the last successful run with that key
        by-output/<64 hex>/<64 hex>  artefact digest → records of the runs that produced it
        by-recipe/<name>/<64 hex>    recipe name → records of its runs (failed ones too)
        verifications/<name>/*.json  verification reports, oldest first
        cache/stat.sqlite            file digests by stat, so unchanged data is not re-read
        runtime/<64 hex>/builder/    builder.runtime, put on the PYTHONPATH of runs
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder import hashing
from builder.errors import ReproError

MANIFEST = "repro-env.json"


def default_home() -> Path:
    """`$REPRO_HOME`, else the platform's user cache directory."""
    home = os.environ.get("REPRO_HOME")
    if home:
        return Path(home).expanduser().resolve()
    from platformdirs import user_cache_dir  # noqa: PLC0415

    return Path(user_cache_dir("repro"))


@contextlib.contextmanager
def replacing(path: Path, mode: int = 0o644) -> Iterator[Path]:
    """A temp file beside `path` to fill; renamed over `path` (whole or not at all) on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file whole or not at all: a temp file in the same folder, then rename."""
    with replacing(path) as tmp, tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _hex(digest: str) -> str:
    return digest.removeprefix(hashing.PREFIX)


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def _listing(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return [hashing.PREFIX + p.name for p in sorted(folder.iterdir()) if len(p.name) == 64]


def _looks_like_record(store: Store, digest: str) -> bool:
    """A small JSON object with the run schema (artefacts share objects/; skip big ones)."""
    path = store.object_path(digest)
    if path.stat().st_size > 1 << 20:
        return False
    try:
        return store.record(digest).get("schema") == "repro.run/v1"
    except (ValueError, ReproError):
        return False


@dataclass(frozen=True)
class Store:
    root: Path

    @classmethod
    def open(cls, root: Path | None = None) -> Store:
        return cls((root or default_home()).resolve())

    @property
    def envs(self) -> Path:
        return self.root / "envs"

    def env_path(self, env_id: str) -> Path:
        return self.envs / _hex(env_id)

    def env_ready(self, env_id: str) -> bool:
        """True when the environment was built to the end (its manifest is the last thing in)."""
        return (self.env_path(env_id) / MANIFEST).is_file()

    def touch(self, env_id: str) -> None:
        """Mark an environment used now, for `cache gc --older-than`."""
        with contextlib.suppress(OSError):
            os.utime(self.env_path(env_id) / MANIFEST)

    @contextlib.contextmanager
    def locked(self, env_id: str, *, timeout: float = -1) -> Iterator[None]:
        """Hold the lock of one environment: concurrent builders of it wait for one another."""
        from filelock import FileLock  # noqa: PLC0415

        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        with FileLock(self.root / "locks" / f"{_hex(env_id)}.lock", timeout=timeout):
            yield

    @contextlib.contextmanager
    def staging(self, env_id: str) -> Iterator[Path]:
        """A temp folder beside `envs/<id>`, removed unless it was moved into place."""
        self.envs.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.envs, prefix=f".tmp-{_hex(env_id)[:12]}-"))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def publish(self, staged: Path, env_id: str) -> Path:
        """Move a finished staging folder to its final name in one rename."""
        final = self.env_path(env_id)
        os.rename(staged, final)
        return final

    def put(self, data: bytes) -> str:
        """Store a blob by its digest; storing the same bytes twice is a no-op."""
        digest = hashing.digest_bytes(data)
        path = self.object_path(digest)
        if not path.exists():
            atomic_write(path, data)
        return digest

    def object_path(self, digest: str) -> Path:
        h = _hex(digest)
        return self.root / "objects" / h[:2] / h[2:]

    def get(self, digest: str) -> bytes:
        """A blob, checked against its digest.

        Raises:
            ReproError: the blob is missing or its bytes no longer match its name.
        """
        path = self.object_path(digest)
        data = path.read_bytes()
        if hashing.digest_bytes(data) != digest:
            raise ReproError(f"store object {path} is corrupt (its digest changed)",
                             hint=f"delete {path}; it is re-created the next time it is needed")
        return data

    def put_file(self, path: Path, digest: str) -> Path:
        """Store a file's bytes under their (already computed) digest; returns the object."""
        target = self.object_path(digest)
        if not target.exists():
            with replacing(target, 0o444) as tmp:
                shutil.copyfile(path, tmp)
        return target

    # -- run records --------------------------------------------------------------------
    def add_record(self, record: dict[str, Any], *, succeeded: bool) -> str:
        """Store a run record and index it; only a success answers its run key."""
        digest = self.put(hashing.canonical_json(record))
        h = _hex(digest)
        _touch(self.root / "by-recipe" / record["recipe"]["name"] / h)
        if succeeded:
            for out in record["outputs"]:
                _touch(self.root / "by-output" / _hex(out["digest"]) / h)
            atomic_write(self.root / "runs" / _hex(record["run_key"]), digest.encode())
        return digest

    def record(self, digest: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.get(digest))
        return data

    def run_for_key(self, run_key: str) -> str | None:
        path = self.root / "runs" / _hex(run_key)
        return path.read_text().strip() if path.is_file() else None

    def records_of(self, recipe_name: str) -> list[str]:
        return _listing(self.root / "by-recipe" / recipe_name)

    def records_producing(self, artefact: str) -> list[str]:
        return _listing(self.root / "by-output" / _hex(artefact))

    def find_record(self, ref: str) -> str | None:
        """A record digest from a run key or record digest, whole or a prefix (8+ hex)."""
        h = _hex(ref.strip()).lower()
        if len(h) < 8 or not all(c in "0123456789abcdef" for c in h):
            return None
        for folder, is_key in ((self.root / "runs", True), (self.root / "objects" / h[:2], False)):
            if not folder.is_dir():
                continue
            rest = h if is_key else h[2:]
            names = [p.name for p in folder.iterdir() if p.name.startswith(rest)]
            if len(names) == 1:
                if is_key:
                    return (folder / names[0]).read_text().strip()
                digest = hashing.PREFIX + h[:2] + names[0]
                if _looks_like_record(self, digest):
                    return digest
        return None

    def add_verification(self, recipe_name: str, report: dict[str, Any]) -> Path:
        """Keep a verification report, named so that listing order is time order."""
        data = hashing.canonical_json(report)
        stamp = report["started"].replace(":", "").replace("-", "")
        path = (self.root / "verifications" / recipe_name
                / f"{stamp}-{_hex(hashing.digest_bytes(data))[:12]}.json")
        atomic_write(path, data)
        return path

    def verifications_of(self, recipe_name: str) -> list[dict[str, Any]]:
        folder = self.root / "verifications" / recipe_name
        if not folder.is_dir():
            return []
        return [json.loads(p.read_bytes()) for p in sorted(folder.glob("*.json"))]

    def remove_env(self, env_id: str) -> None:
        """Remove an environment: renamed away first, so it never looks half there."""
        path = self.env_path(env_id)
        trash = self.envs / f".trash-{_hex(env_id)[:12]}-{os.getpid()}"
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def leftovers(self, min_age: float = 3600) -> list[Path]:
        """Staging folders of builds that died without cleaning up, older than `min_age` s."""
        if not self.envs.is_dir():
            return []
        now = time.time()
        return [p for p in self.envs.iterdir()
                if p.name.startswith((".tmp-", ".trash-")) and now - p.stat().st_mtime > min_age]
