"""Code and data digests: what they cover, and that unchanged files are not read again."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from builder import hashing, inputs
from builder.errors import InputError
from builder.schema import parse_recipe
from tests.conftest import gen

RECIPE = '''[recipe]
name = "r"
schema = 1
[environment]
python = "3.11"
[code]
include = ["*.py", "src/**"]
exclude = ["src/scratch/*"]
[data]
table = { path = "data/t.csv" }
images = { path = "data/images" }
[train]
command = ["python", "train.py"]
'''


def project(root: Path) -> Path:
    return gen(root, {
        "repro.toml": RECIPE,
        "train.py": "print('train')\n",
        "notes.txt": "not code\n",
        "src": {"model.py": "W = 1\n", "scratch": {"tmp.py": "x\n"}},
        "data": {"t.csv": "a,b\n1,2\n", "images": {"0.png": b"\x89PNG0", "1.png": b"\x89PNG1"}},
    })


def state(root: Path, cache_path: Path | None = None) -> tuple[inputs.CodeState, dict[str, str]]:
    recipe = parse_recipe((root / "repro.toml").read_text(), root / "repro.toml")
    with inputs.stat_cache(cache_path) as cache:
        return inputs.code_state(recipe, cache), inputs.data_digests(recipe, cache)


def test_code_covers_included_files_only(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    code, _ = state(root)
    assert code.files == 2  # train.py, src/model.py
    assert code.commit is None  # not a git work tree
    (root / "notes.txt").write_text("changed\n")
    (root / "src" / "scratch" / "tmp.py").write_text("changed\n")
    assert state(root)[0].digest == code.digest
    (root / "src" / "model.py").write_text("W = 2\n")
    assert state(root)[0].digest != code.digest


def test_data_digests_are_location_independent(tmp_path: Path) -> None:
    _, a = state(project(tmp_path / "a"))
    _, b = state(project(tmp_path / "elsewhere" / "b"))
    assert a == b
    assert a["table"] == hashing.digest_bytes(b"a,b\n1,2\n")


def test_git_tracked_files_only_with_commit_and_dirty_flag(tmp_path: Path) -> None:
    root = project(tmp_path / "g")
    git = ["git", "-C", str(root), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "train.py", "repro.toml"], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    code, _ = state(root)
    assert code.files == 1  # src/model.py is untracked: never code
    assert code.commit is not None and len(code.commit) == 40
    assert code.dirty is False
    (root / "train.py").write_text("print('edited')\n")
    edited, _ = state(root)
    assert edited.dirty is True
    assert edited.digest != code.digest


def test_unchanged_data_is_not_read_again_and_one_change_rereads_one_file(
    tmp_path: Path,
) -> None:
    root = gen(tmp_path / "d", {"repro.toml": RECIPE.replace("data/images", "data/many"),
                                "train.py": "", "data": {"t.csv": "x"}})
    many = root / "data" / "many"
    many.mkdir()
    for i in range(200):
        (many / f"{i:03}.bin").write_bytes(os.urandom(64))
    recipe = parse_recipe((root / "repro.toml").read_text(), root / "repro.toml")
    db = tmp_path / "stat.sqlite"
    with inputs.stat_cache(db) as cache:
        first = inputs.data_digests(recipe, cache)
        assert cache.misses == 201
    with inputs.stat_cache(db) as cache:
        assert inputs.data_digests(recipe, cache) == first
        assert (cache.hits, cache.misses) == (201, 0)
    (many / "042.bin").write_bytes(b"changed")
    with inputs.stat_cache(db) as cache:
        changed = inputs.data_digests(recipe, cache)
        assert (cache.hits, cache.misses) == (200, 1)
    assert changed["table"] == first["table"]
    assert changed["images"] != first["images"]


def test_a_corrupt_stat_cache_costs_only_rereading(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    db = tmp_path / "stat.sqlite"
    db.write_bytes(b"this is not sqlite" * 100)
    assert state(root, db)[1] == state(root)[1]


def test_a_missing_data_input_is_named(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    (root / "data" / "t.csv").unlink()
    with pytest.raises(InputError, match=r"(?s)data\.table: .*data/t\.csv does not exist.*"
                                         r"fix data\.table\.path"):
        state(root)
