"""Deterministic layers: same files, same bytes, whatever the folder, clock or umask."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from builder.image import tarball
from tests.conftest import gen


def tree(root: Path) -> Path:
    gen(root, {"pkg": {"__init__.py": "x = 1\n", "data.bin": b"\x00\x01"}, "bin": {"tool": "#!/bin/sh\n"}})
    (root / "bin" / "tool").chmod(0o750)
    (root / "pkg" / "link.py").symlink_to("__init__.py")
    os.link(root / "pkg" / "data.bin", root / "pkg" / "same.bin")
    return root


def test_same_files_give_the_same_layer_anywhere(tmp_path: Path) -> None:
    a = tree(tmp_path / "a")
    old = os.umask(0o077)
    try:
        b = tree(tmp_path / "elsewhere" / "b")
    finally:
        os.umask(old)
    for path in b.rglob("*"):
        if not path.is_symlink():
            os.utime(path, (1_700_000_000, 1_700_000_000))
    assert tarball.layer([(a, "opt/site")]) == tarball.layer([(b, "opt/site")])


def test_entries_are_normalised_and_links_kept(tmp_path: Path) -> None:
    raw = tarball.tar_tree([(tree(tmp_path / "t"), "opt/site")], mtime=42)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert list(members) == sorted(members)
    assert list(members)[:2] == ["opt", "opt/site"]
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members.values()} == {(0, 0, "", "", 42)}
    assert members["opt/site/bin/tool"].mode == 0o755
    assert members["opt/site/pkg/__init__.py"].mode == 0o644
    assert members["opt/site/pkg/link.py"].issym()
    assert members["opt/site/pkg/link.py"].linkname == "__init__.py"
    assert members["opt/site/pkg/same.bin"].islnk()
    assert members["opt/site/pkg/same.bin"].linkname == "opt/site/pkg/data.bin"


def test_the_gzip_header_has_no_name_and_no_time() -> None:
    blob = tarball.gzip_bytes(b"layer")
    assert blob[3] == 0  # no FNAME flag
    assert blob[4:8] == b"\x00\x00\x00\x00"  # MTIME


def test_a_layers_diff_id_is_bounded_and_what_is_not_gzip_is_refused(tmp_path: Path) -> None:
    import gzip
    import hashlib

    from builder.image import base
    from builder.store import Store

    store = Store.open(tmp_path / "store")
    plain = store.blobs.put(b"not gzip at all")
    with pytest.raises(base.BaseImageError, match="is not gzip"):
        base.diff_id(store, plain, "sha256:plain", 1 << 20)
    bomb = store.blobs.put(gzip.compress(b"\0" * (2 << 20), mtime=0))
    with pytest.raises(base.BaseImageError, match="decompresses past 1048576 bytes"):
        base.diff_id(store, bomb, "sha256:bomb", 1 << 20)
    good = store.blobs.put(gzip.compress(b"a tar", mtime=0))
    assert base.diff_id(store, good, "sha256:good", 1 << 20) == \
        "sha256:" + hashlib.sha256(b"a tar").hexdigest()
