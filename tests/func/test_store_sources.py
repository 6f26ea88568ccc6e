"""The store under interruption and concurrency, machine-only sources, and `repro cache`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests.conftest import MACHINE_WHEELS
from tests.func.helpers import complete_envs, make_wheel, repro, staging_left

pytestmark = pytest.mark.network

DECLARED = "https://wheels.example.invalid/simple"


def wheel_project(root: Path, *, declare: bool = True) -> Path:
    source = (f'[[environment.sources]]\nurl = "{DECLARED}"\npackages = ["repro-fixture-pkg"]\n'
              if declare else "")
    root.mkdir(parents=True, exist_ok=True)
    (root / "repro.toml").write_text(
        '[recipe]\nname = "local-wheel"\nschema = 1\n[environment]\npython = "3.11"\n'
        'dependencies = ["repro-fixture-pkg==1.0", "six==1.16.0"]\n' + source
    )
    return root


def test_a_wheel_from_a_machine_folder_is_locked_under_its_declared_source(
    tmp_path: Path, isolated: Path,
) -> None:
    wheels = tmp_path / "machine-wheels"
    make_wheel(wheels, "repro-fixture-pkg", "1.0")
    project = wheel_project(tmp_path / "a")
    r = repro("lock", "--find-links", wheels, "--json", cwd=project)
    assert r.code == 0, r.err
    text = (project / "lockfiles/local-wheel/pylock.toml").read_text()
    assert "file:" not in text
    assert str(tmp_path) not in text
    fixture = next(p for p in tomllib.loads(text)["packages"] if p["name"] == "repro-fixture-pkg")
    assert fixture["wheels"][0]["url"] == f"{DECLARED}/repro_fixture_pkg-1.0-py3-none-any.whl"
    assert fixture["index"] == DECLARED

    # Another machine keeps its wheels elsewhere (given by the environment): same lock bytes.
    other = tmp_path / "elsewhere" / "wheels"
    other.parent.mkdir()
    (wheels).rename(other)
    moved = wheel_project(tmp_path / "b")
    again = repro("lock", "--json", cwd=moved, env={"REPRO_FIND_LINKS": str(other)})
    assert again.code == 0, again.err
    assert (moved / "lockfiles/local-wheel/pylock.toml").read_text() == text
    assert again.json["env"] == r.json["env"]

    # The declared index does not exist: the machine folder replaces it for the install too.
    built = repro("exec", "--find-links", other, "--", "python", "-c",
                  "import repro_fixture_pkg, six; print(repro_fixture_pkg.VALUE)", cwd=moved)
    assert built.code == 0, built.err
    assert built.out.strip() == "42"


def test_a_machine_only_wheel_without_a_declared_source_is_refused(tmp_path: Path) -> None:
    wheels = tmp_path / "w"
    make_wheel(wheels, "repro-fixture-pkg", "1.0")
    project = wheel_project(tmp_path / "p", declare=False)
    r = repro("lock", "--find-links", wheels, cwd=project)
    assert r.code == 2
    assert "repro-fixture-pkg 1.0 was found only in a folder on this machine" in r.err
    assert '[[environment.sources]] url = "…" packages = ["repro-fixture-pkg"]' in r.err
    assert not (project / "lockfiles").exists()


@pytest.mark.skipif(not Path(MACHINE_WHEELS or "/nonexistent").is_dir(),
                    reason="PIP_FIND_LINKS names no wheel folder on this machine (torch CPU wheel)")
def test_torch_from_the_machine_folder_is_locked_under_the_pytorch_index(tmp_path: Path) -> None:
    (tmp_path / "repro.toml").write_text(
        '[recipe]\nname = "torch-cpu"\nschema = 1\n[environment]\npython = "3.11"\n'
        'dependencies = ["torch==2.13.0+cpu"]\nexclude-newer = "2026-11-01"\n'
        '[[environment.sources]]\nurl = "https://download.pytorch.org/whl/cpu"\n'
        'packages = ["torch"]\n'
    )
    r = repro("lock", "--find-links", MACHINE_WHEELS, "--json", cwd=tmp_path)
    assert r.code == 0, r.err
    text = (tmp_path / "lockfiles/torch-cpu/pylock.toml").read_text()
    assert MACHINE_WHEELS not in text
    assert "file:" not in text
    torch = next(p for p in tomllib.loads(text)["packages"] if p["name"] == "torch")
    assert torch["wheels"][0]["url"] == ("https://download.pytorch.org/whl/cpu/"
                                         "torch-2.13.0%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl")


def _wait_for(predicate, timeout: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def test_ctrl_c_during_a_build_leaves_nothing_half_built(project: Path, isolated: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "builder", "build"], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _wait_for(lambda: bool(staging_left(isolated)) or proc.poll() is not None)
    assert proc.poll() is None, "the build ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted; nothing half-built was left in the store" in err
    assert complete_envs(isolated) == []
    assert staging_left(isolated) == []
    # and the next build is a clean one
    assert repro("build", "--json", cwd=project).json["cached"] is False


def test_concurrent_builders_of_one_env_do_the_work_once(project: Path, isolated: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-m", "builder", "build", "--json"], cwd=project,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in results]
    import json

    outs = [json.loads(out) for out, _ in results]
    assert len({o["env"] for o in outs}) == 1
    assert sorted(o["cached"] for o in outs) == [False, True, True]
    assert len(complete_envs(isolated)) == 1


def test_cache_ls_and_gc(project: Path, isolated: Path) -> None:
    built = repro("build", "--json", cwd=project).json
    listed = repro("cache", "ls", "--json").json
    assert [e["env"] for e in listed["envs"]] == [built["env"]]
    assert listed["envs"][0]["recipe"] == "digits-logreg"
    assert listed["envs"][0]["size"] > 10_000_000  # numpy is in it
    leftover = isolated / "envs" / ".tmp-0123456789ab-dead"
    leftover.mkdir()
    os.utime(leftover, (0, 0))

    kept = repro("cache", "gc", "--json").json  # default: unused for 30 days
    assert kept["removed"] == [str(leftover)]
    assert not leftover.exists()
    dry = repro("cache", "gc", "--older-than", "0", "--dry-run", "--json").json
    assert dry["removed"][0] == built["path"]
    assert complete_envs(isolated) == [Path(built["path"])]
    gone = repro("cache", "gc", "--older-than", "0", "--json").json
    assert gone["removed"] == dry["removed"]
    assert gone["removed"][0] == built["path"]
    # the rest: blobs only the env reached (its pylock), now that nothing reaches them
    assert all(d["why"] == "blob nothing needs" for d in gone["details"][1:])
    assert gone["freed"] > 10_000_000
    assert complete_envs(isolated) == []
    assert repro("cache", "ls", "--json").json["envs"] == []
