"""Canonical JSON and digests: what identities are made of."""

from __future__ import annotations

import json
import os
from pathlib import Path

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from builder import hashing
from builder.errors import InputError
from tests.conftest import gen

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text()
    | st.floats(-1e15, 1e15) | st.floats(-1e-6, 1e-6),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def test_canonical_json_follows_rfc8785() -> None:
    # Examples from RFC 8785: sorted keys, no whitespace, ECMAScript number forms.
    assert hashing.canonical_json({"b": 1.0, "a": [0.1, 1e21, -0.0]}) == b'{"a":[0.1,1e+21,0],"b":1}'
    assert hashing.canonical_json({"€": "é", "a\n": True}) == '{"a\\n":true,"€":"é"}'.encode()


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_key_order_never_changes_a_digest(value: dict[str, object]) -> None:
    reordered = dict(reversed(list(value.items())))
    assert hashing.digest_json(value) == hashing.digest_json(reordered)


@given(json_values)
def test_canonical_json_is_a_fixed_point(value: object) -> None:
    once = hashing.canonical_json(value)
    assert hashing.canonical_json(json.loads(once)) == once


plain_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(plain_values)
def test_the_fast_path_writes_exactly_what_rfc8785_writes(value: object) -> None:
    import rfc8785

    assert hashing.canonical_json(value) == rfc8785.dumps(value)


def test_integers_beyond_json_precision_are_refused_with_a_reason() -> None:
    with pytest.raises(InputError, match=r"(?s)2\^53.*write it as a string"):
        hashing.digest_json({"seed": 2**63})


def test_digest_is_prefixed_blake3_of_the_bytes() -> None:
    assert hashing.digest_bytes(b"abc") == "blake3:" + blake3.blake3(b"abc").hexdigest()
    assert len(hashing.digest_json({})) == len("blake3:") + 64


def test_file_digest_small_and_large_paths_agree(tmp_path: Path) -> None:
    data = os.urandom(9 << 20)  # above the mmap threshold
    big = tmp_path / "big.bin"
    big.write_bytes(data)
    small = tmp_path / "small.bin"
    small.write_bytes(data[:1000])
    assert hashing.file_digest(big) == hashing.digest_bytes(data)
    assert hashing.file_digest(small) == hashing.digest_bytes(data[:1000])


def _tree(root: Path) -> str:
    return hashing.tree_digest(root, hashing.walk_files(root))


def test_tree_digest_ignores_mtime_and_location(tmp_path: Path) -> None:
    a = gen(tmp_path / "a", {"x.py": "print(1)\n", "sub": {"y.txt": "y"}})
    b = gen(tmp_path / "elsewhere" / "b", {"sub": {"y.txt": "y"}, "x.py": "print(1)\n"})
    os.utime(b / "x.py", (0, 0))
    assert _tree(a) == _tree(b)


def test_tree_digest_covers_content_paths_and_executable_bit(tmp_path: Path) -> None:
    root = gen(tmp_path / "t", {"x.py": "print(1)\n", "sub": {"y.txt": "y"}})
    before = _tree(root)
    (root / "x.py").chmod(0o755)
    executable = _tree(root)
    assert executable != before
    (root / "x.py").chmod(0o644)
    assert _tree(root) == before
    (root / "sub" / "y.txt").rename(root / "sub" / "z.txt")
    renamed = _tree(root)
    assert renamed != before
    (root / "sub" / "z.txt").write_text("z")
    assert _tree(root) != renamed


def test_tree_records_symlinks_without_following_them(tmp_path: Path) -> None:
    root = gen(tmp_path / "t", {"real.txt": "data"})
    (root / "link").symlink_to("real.txt")
    entries = hashing.tree_entries(root, hashing.walk_files(root))
    assert entries[0] == {"path": "link", "type": "symlink", "target": "real.txt"}
    assert entries[1]["path"] == "real.txt"
    assert entries[1]["type"] == "file"
