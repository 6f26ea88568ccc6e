"""Shared fixtures: an isolated store and environment for every test, file-tree helpers."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
_AMBIENT = ("REPRO_", "UV_", "PIP_", "VIRTUAL_ENV", "SOURCE_DATE_EPOCH")
# The machine's wheel folder (the torch CPU build lies there), read before the fixture strips it.
MACHINE_WHEELS = os.environ.get("PIP_FIND_LINKS", "")


def gen(root: Path, tree: dict[str, Any]) -> Path:
    """Build a file tree in one call: {"a.txt": "text", "sub": {"b.bin": b"..."}}."""
    for name, content in tree.items():
        path = root / name
        if isinstance(content, dict):
            path.mkdir(parents=True, exist_ok=True)
            gen(path, content)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
    return root


def committed_baseline_runs(recipe_dir: Path) -> list[Any]:
    """The committed baseline's runs made on this machine's hardware class; skips the test
    when there are none.

    A bitwise run key covers the hardware class, and the torch example's weights differ in
    bytes between AMD EPYC and Intel Xeon: a committed baseline can vouch only for the
    classes of machine it was made on (`repro baseline set` on another class adds its runs).
    """
    from builder import hardware
    from builder.schema import load_recipe
    from builder.verdicts import Baseline

    recipe = load_recipe(recipe_dir / "repro.toml")
    path = recipe.lock_dir / "baseline.json"
    base = Baseline.decode(path.read_bytes(), path)
    here = hardware.hardware_class(hardware.facts())
    runs = base.for_class(here)
    if not runs:
        pytest.skip(f"{path.relative_to(ROOT)} has runs made on {base.classes}, none on this "
                    f"machine's class {here}: run `repro baseline set` on such a machine")
    return runs


@pytest.fixture(scope="session")
def uv_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uv cache for the whole run: each wheel is downloaded once, not once a test."""
    return tmp_path_factory.mktemp("uv-cache")


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, uv_cache: Path) -> Path:
    """No REPRO_*/UV_*/PIP_* from the caller; the store in a temp dir; a shared uv cache."""
    for key in list(os.environ):
        if key.startswith(_AMBIENT):
            monkeypatch.delenv(key)
    home = tmp_path / "repro-home"
    monkeypatch.setenv("REPRO_HOME", str(home))
    # no user config, Docker config or credentials of the machine's reach a test
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config-home"))
    docker = tmp_path / "docker-config"  # empty, as after a logout (buildah and skopeo
    docker.mkdir()                        # refuse a DOCKER_CONFIG without config.json)
    (docker / "config.json").write_text('{"auths": {}}\n')
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    monkeypatch.setenv("UV_CACHE_DIR", str(uv_cache))
    return home


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A copy of the repository's default recipe project (recipe, lock, code, data)."""
    dest = tmp_path / "project"
    dest.mkdir()
    for name in ("repro.toml", "train.py", "lockfiles", "data"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name)
        else:
            shutil.copy2(src, dest / name)
    yield dest
