"""The blob store's two ways in and out (a kernel copy checked after it lands, or hashing as
bytes stream) give the same digests, and neither hands out a damaged blob."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from builder import hashing
from builder.blobs import Blobs, CorruptBlob


@pytest.fixture
def blobs(tmp_path: Path) -> Blobs:
    return Blobs(tmp_path / "objects", tmp_path / "sha256", tmp_path / "quarantine")


def flip(path: Path, at: int) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[at] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("size", [0, 5, 9 << 20])  # empty, small, and past the mapped-hash size
def test_put_file_and_copy_to_agree_with_the_files_digest(
        blobs: Blobs, tmp_path: Path, size: int) -> None:
    source = tmp_path / "model.bin"
    source.write_bytes(os.urandom(size))
    stored = blobs.put_file(source)
    assert stored.digest == hashing.file_digest(source)
    assert stored.size == size
    named = tmp_path / "restored.bin"
    with named.open("wb") as f:  # a file opened by name: the kernel copy
        assert blobs.copy_to(stored.digest, f) == size
    assert named.read_bytes() == source.read_bytes()
    stream = io.BytesIO()  # no name: hashed as it streams
    blobs.copy_to(stored.digest, stream)
    assert stream.getvalue() == source.read_bytes()
    assert blobs.put_file(source, sha256=True).digest == stored.digest  # the streaming writer


@pytest.mark.parametrize("named", [True, False])
def test_a_flipped_blob_is_quarantined_never_copied_out(
        blobs: Blobs, tmp_path: Path, named: bool) -> None:
    source = tmp_path / "model.bin"
    source.write_bytes(os.urandom(9 << 20))
    digest = blobs.put_file(source).digest
    flip(blobs.path(digest), 4 << 20)
    with pytest.raises(CorruptBlob, match=str(blobs.path(digest))):
        if named:
            with (tmp_path / "out.bin").open("wb") as f:
                blobs.copy_to(digest, f)
        else:
            blobs.copy_to(digest, io.BytesIO())
    assert not blobs.has(digest)
    assert len(list(blobs.quarantined.iterdir())) == 1


def test_storing_again_replaces_a_damaged_blob(blobs: Blobs, tmp_path: Path) -> None:
    source = tmp_path / "model.bin"
    source.write_bytes(b"weights" * 1000)
    digest = blobs.put_file(source).digest
    flip(blobs.path(digest), 3)
    assert not blobs.verify(digest)
    assert blobs.put_file(source).digest == digest
    assert blobs.verify(digest)
    assert blobs.get(digest) == source.read_bytes()


def test_a_download_that_trickles_is_given_up_once_past_its_grace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from builder import blobs as module

    clock = iter(range(0, 10**6, 10))  # each look at the clock: 10 more seconds

    class Trickle:
        def read1(self, n: int) -> bytes:
            return b"x"  # a byte a read, for ever

    monkeypatch.setattr(module, "time", SimpleNamespace(monotonic=lambda: float(next(clock))))
    seen = []
    with pytest.raises(module.Stalled, match="slower than 16 KiB/s"):
        for chunk in module.arriving(Trickle()):  # type: ignore[arg-type]
            seen.append(chunk)
    assert len(seen) == module.GRACE // 10  # served until the grace ran out, then given up
    fast = io.BytesIO(b"y" * (3 << 20))  # no read1: read() in 1 MiB chunks
    assert [len(c) for c in module.arriving(fast)] == [1 << 20] * 3
