"""`repro lock | build | exec | status` with the real uv (and pip-tools) against the real PyPI."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.func.helpers import complete_envs, repro, staging_left

pytestmark = pytest.mark.network

LOCKS = ROOT / "lockfiles" / "digits-logreg"


LOCK_FILES = ("pylock.toml", "repro.lock")


def lock_bytes(project: Path) -> dict[str, bytes]:
    folder = project / "lockfiles" / "digits-logreg"
    return {name: (folder / name).read_bytes() for name in LOCK_FILES}


def committed() -> dict[str, bytes]:
    return {name: (LOCKS / name).read_bytes() for name in LOCK_FILES}


def test_committed_lock_matches_the_default_recipe(project: Path) -> None:
    r = repro("lock", "--check", "--json", cwd=project)
    assert r.code == 0, r.err
    assert r.json["recipe"] == "digits-logreg"
    assert r.json["changed"] is False
    assert r.json["env"].startswith("blake3:")


def test_relocking_elsewhere_gives_byte_identical_files(tmp_path: Path, project: Path) -> None:
    moved = tmp_path / "some" / "other" / "place"
    shutil.copytree(project, moved)
    shutil.rmtree(moved / "lockfiles")
    old = os.umask(0o077)
    try:
        r = repro("lock", "--json", cwd=moved)
    finally:
        os.umask(old)
    assert r.code == 0, r.err
    assert r.json["changed"] is True
    assert lock_bytes(moved) == committed()
    assert (moved / "lockfiles/digits-logreg/repro.lock").stat().st_mode & 0o777 == 0o644
    again = repro("lock", "--json", cwd=moved)
    assert again.json["changed"] is False
    assert again.json["env"] == r.json["env"]


@pytest.mark.parametrize("resolver", ["uv", "pip-tools"])
def test_ambient_tool_configuration_cannot_steer_a_lock(
    tmp_path: Path, project: Path, monkeypatch: pytest.MonkeyPatch, resolver: str,
) -> None:
    # uv reads uv.toml and pyproject.toml upwards from its working folder, pip-tools reads
    # .pip-tools.toml, pip reads pip.conf and PIP_*: each here points at an index that
    # does not exist. A lock that heard any of them would fail or differ.
    hostile = tmp_path / "tmp-with-config"
    hostile.mkdir()
    dead = "http://127.0.0.1:9/simple"
    (hostile / "uv.toml").write_text(f'index-url = "{dead}"\n')
    (hostile / ".pip-tools.toml").write_text(f'[tool.pip-tools]\nindex-url = "{dead}"\n')
    (project / "pyproject.toml").write_text(f'[tool.uv]\nindex-url = "{dead}"\n')
    shutil.rmtree(project / "lockfiles")
    r = repro("lock", "--resolver", resolver, "--json", cwd=project,
              env={"TMPDIR": str(hostile), "PIP_INDEX_URL": dead, "UV_INDEX_URL": dead,
                   "PIP_CONFIG_FILE": str(hostile / "uv.toml")})
    assert r.code == 0, r.err
    assert lock_bytes(project) == committed()


def test_build_twice_then_exec_and_status(project: Path, isolated: Path) -> None:
    first = repro("build", "--json", cwd=project)
    assert first.code == 0, first.err
    second = repro("build", "--json", cwd=project)
    assert second.code == 0, second.err
    assert first.json["cached"] is False
    assert second.json["cached"] is True
    assert first.json["env"] == second.json["env"]
    assert first.json["path"] == second.json["path"] == str(isolated / "envs" / first.json["env"][7:])
    assert first.json["python"].startswith("3.11.")

    ran = repro("exec", "--", "python", "-c",
                "import numpy, sys; print(numpy.__version__, sys.prefix)", cwd=project)
    assert ran.code == 0, ran.err
    assert ran.out.split() == ["2.4.6", first.json["path"]]
    failing = repro("exec", "--json", "--", "python", "-c", "raise SystemExit(5)", cwd=project)
    assert failing.code == 5
    assert failing.json["exit_code"] == 5

    status = repro("status", "--json", cwd=project)
    assert status.code == 0
    assert status.json["lock"]["state"] == "fresh"
    assert status.json["env"]["built"] is True
    assert status.json["env"]["id"] == first.json["env"]
    assert status.json["recipe"]["digest"].startswith("blake3:")


def test_a_stale_lock_is_explained_refused_when_locked_and_relocked_otherwise(
    project: Path,
) -> None:
    recipe = project / "repro.toml"
    recipe.write_text(recipe.read_text().replace('["numpy>=2,<3"]', '["numpy>=2,<3", "six"]'))
    check = repro("lock", "--check", cwd=project)
    assert check.code == 1
    assert "is out of date" in check.err
    assert "environment.dependencies: added six" in check.err
    assert "hint: run `repro lock`" in check.err

    locked = repro("build", "--locked", "--json", cwd=project)
    assert locked.code == 1
    assert locked.json["error"]["type"] == "CheckFailed"

    auto = repro("build", "--json", cwd=project)
    assert auto.code == 0, auto.err
    assert auto.json["relocked"] is True
    assert auto.json["packages"] == 2
    assert repro("lock", "--check", cwd=project).code == 0


def test_a_tampered_lock_is_refused_and_nothing_is_built(project: Path, isolated: Path) -> None:
    pylock = project / "lockfiles/digits-logreg/pylock.toml"
    text = pylock.read_text()
    wheel_sha = "89cd468399cfd2504718f0ba50e410dca55a170b61a02ad92bb18c8a65186e93"
    assert wheel_sha in text
    pylock.write_text(text.replace(wheel_sha, "0" * 64))

    refused = repro("build", cwd=project)
    assert refused.code == 1
    assert "pylock.toml was changed after locking" in refused.err
    # --frozen skips repro's own check: the installer's hash check must still refuse it.
    frozen = repro("build", "--frozen", cwd=project)
    assert frozen.code == 3
    assert "nothing was stored" in frozen.err
    assert "does not match the sha256 in pylock.toml" in frozen.err
    assert complete_envs(isolated) == []
    assert staging_left(isolated) == []


def test_offline_with_an_empty_cache_fails_clearly(
    project: Path, isolated: Path, tmp_path: Path,
) -> None:
    r = repro("build", "--offline", cwd=project, env={"UV_CACHE_DIR": str(tmp_path / "empty")})
    assert r.code == 3
    assert "run the build once without --offline" in r.err
    assert complete_envs(isolated) == []


@pytest.mark.parametrize(
    ("python", "dependency", "expected"),
    [
        ("3.8", "numpy>=2", r"cannot be resolved:(?s:.*)numpy"),
        ("3.11", "numpy-does-not-exist-repro", r"(?s)was not found in the package registry.*"
                                               r"check the spelling of `numpy-does-not-exist-repro`"),
    ],
)
def test_unresolvable_dependencies_show_the_resolvers_explanation(
    tmp_path: Path, python: str, dependency: str, expected: str,
) -> None:
    (tmp_path / "repro.toml").write_text(
        f'[recipe]\nname = "x"\nschema = 1\n[environment]\npython = "{python}"\n'
        f'dependencies = ["{dependency}"]\n'
    )
    r = repro("lock", cwd=tmp_path)
    assert r.code == 2
    import re

    assert re.search(expected, r.err), r.err
    assert not (tmp_path / "lockfiles").exists()


def test_a_python_that_is_not_installed_is_bad_input(tmp_path: Path, isolated: Path) -> None:
    (tmp_path / "repro.toml").write_text(
        '[recipe]\nname = "old"\nschema = 1\n[environment]\npython = "3.7"\n'
        'dependencies = ["six"]\n'
    )
    r = repro("build", cwd=tmp_path)
    assert r.code == 2
    assert "environment.python = '3.7': no such interpreter on this machine" in r.err
    assert "hint: install CPython 3.7" in r.err
    assert complete_envs(isolated) == []
    assert staging_left(isolated) == []


def test_no_recipe_found(tmp_path: Path) -> None:
    r = repro("build", "--json", cwd=tmp_path)
    assert r.code == 2
    assert r.json["error"]["type"] == "RecipeNotFoundError"
    assert f"no repro.toml in {tmp_path}" in r.err
