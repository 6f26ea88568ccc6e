"""The Nix backend with the real Nix (Debian's nix-bin, 2.8; no nixpkgs): the exported
expressions evaluate, fetch every wheel by its locked hash, build an env that trains the
examples' models, and are rebuilt bit for bit; a tampered env is found and repaired."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from builder import pylock
from tests.conftest import MACHINE_WHEELS, ROOT
from tests.func.helpers import repro

pytestmark = pytest.mark.skipif(
    shutil.which("nix-build") is None,
    reason="Nix is not installed (Debian package nix-bin; .ci/run installs it)")

TORCH = ROOT / "examples" / "torch-mlp"
TORCH_WHEEL = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
has_torch = pytest.mark.skipif(
    not (Path(MACHINE_WHEELS or "/nonexistent") / TORCH_WHEEL).is_file(),
    reason="the torch CPU wheel is not in $PIP_FIND_LINKS on this machine")


def nix_options() -> list[str]:
    """What a build on these machines needs: root without a nixbld group, no sandbox (the
    interpreter is the host's)."""
    return ["--option", "sandbox", "false", "--option", "build-users-group", ""]


def export(project: Path, folder: Path) -> dict:
    r = repro("export", "nix", "-o", folder, "--json", cwd=project)
    assert r.code == 0, r.err
    assert sorted(Path(p).name for p in r.json["files"]) == [
        "default.nix", "install-wheels.py", "lock.json"]
    return json.loads((folder / "lock.json").read_text())


@pytest.mark.parametrize("example", ["default", "torch"])
def test_the_export_parses_evaluates_and_matches_the_lock(example: str, project: Path,
                                                          tmp_path: Path) -> None:
    where = project if example == "default" else shutil.copytree(TORCH, tmp_path / "torch")
    rendered = export(where, tmp_path / "nix")
    subprocess.run(["nix-instantiate", "--parse", tmp_path / "nix" / "default.nix"], check=True,
                   capture_output=True)
    expr = (f"let e = import {tmp_path / 'nix'} {{}}; in {{ name = e.name; "
            "wheels = map (w: { inherit (w) name url outputHash; }) e.wheels; }")
    done = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
                          check=True, capture_output=True, text=True)
    evaluated = json.loads(done.stdout)
    lockdir = next((where / "lockfiles").iterdir())
    packages = pylock.loads((lockdir / "pylock.toml").read_text(), lockdir / "pylock.toml")
    # every locked package, its one wheel's URL and sha256, nothing else
    assert [(w["name"], w["version"], w["url"], w["sha256"]) for w in rendered["wheels"]] == [
        (p.name, p.version, p.wheels[0].url, p.wheels[0].sha256)
        for p in sorted(packages, key=lambda p: p.name)]
    assert [(w["name"], w["url"], w["outputHash"]) for w in evaluated["wheels"]] == [
        (w["filename"], w["url"], w["hash"]) for w in rendered["wheels"]]
    assert rendered["env"] in (lockdir / "repro.lock").read_text()


@pytest.mark.network
def test_nix_fetches_the_wheels_by_hash_and_refuses_a_tampered_one(project: Path,
                                                                     tmp_path: Path) -> None:
    folder = tmp_path / "nix"
    export(project, folder)
    fetched = subprocess.run(["nix-build", *nix_options(), "--no-out-link", "-E",
                              f"(import {folder} {{}}).wheels"],
                             capture_output=True, text=True, check=False)
    assert fetched.returncode == 0, fetched.stderr
    wheel = Path(fetched.stdout.split()[-1])
    assert wheel.name.endswith("numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64."
                               "manylinux_2_28_x86_64.whl")

    # a wrong sha256 in the lock, used unchecked (--frozen): Nix downloads, and refuses it
    lock = project / "lockfiles" / "digits-logreg" / "pylock.toml"
    good = pylock.loads(lock.read_text(), lock)[0].wheels[0].sha256
    lock.write_text(lock.read_text().replace(good, "0" * 64))
    r = repro("build", "--backend", "nix", "--frozen", cwd=project)
    assert r.code == 3, r.err
    assert "hash mismatch in fixed-output derivation" in r.err
    assert "does not have the sha256 the lock gives it" in r.err


@pytest.mark.network
def test_build_and_run_in_nix_give_the_venv_s_model_and_rebuild_bit_for_bit(
        project: Path, isolated: Path) -> None:
    built = repro("build", "--backend", "nix", "--json", cwd=project)
    assert built.code == 0, built.err
    store_path = Path(built.json["path"])
    assert store_path.parent == Path("/nix/store")
    assert built.json["cached"] is False
    manifest = json.loads(next((isolated / "nix" / "envs").glob("*/repro-env.json")).read_text())
    assert manifest["nix"]["store_path"] == str(store_path)
    assert manifest["nix"]["drv"].endswith(".drv")
    assert manifest["nix"]["tool"] == "nix-build"
    assert "interpreter" in manifest["nix"]["impure"][0]
    # the gc root lies in the store's nix area and points at the env
    root = isolated / "nix" / "roots" / built.json["env"].removeprefix("blake3:")
    assert root.resolve() == store_path
    again = repro("build", "--backend", "nix", "--json", cwd=project)
    assert again.json["cached"] is True
    assert again.json["nix"]["drv"] == manifest["nix"]["drv"]
    # a gc root removed by hand: said by cache verify, made again by the next use
    root.unlink()
    unrooted = repro("cache", "verify", "--json", cwd=project)
    assert unrooted.code == 1
    assert [p["path"] for p in unrooted.json["problems"]] == [str(root)]
    assert repro("build", "--backend", "nix", cwd=project).code == 0
    assert root.resolve() == store_path

    in_nix = repro("run", "--in", "nix", "--json", cwd=project)
    assert in_nix.code == 0, in_nix.err
    nix_model = (project / "model.npz").read_bytes()
    in_venv = repro("run", "--json", cwd=project)
    assert in_venv.code == 0, in_venv.err
    assert in_nix.json["run_key"] != in_venv.json["run_key"]  # other environments
    assert (project / "model.npz").read_bytes() == nix_model  # the same bytes
    shown = repro("show", in_nix.json["record"], "--json", cwd=project)
    assert shown.json["runner"] == "nix"

    # Nix builds the env again and finds every byte the same
    check = subprocess.run(["nix-build", *nix_options(), "--check", "--no-out-link",
                            next((isolated / "nix" / "envs").glob("*/expr"))],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr

    listed = repro("cache", "ls", "--json", cwd=project)
    assert {e["backend"] for e in listed.json["envs"]} == {"venv", "nix"}

    where = repro("exec", "--in", "nix", "--", "python", "-c",
                  "import numpy; print(numpy.__file__)", cwd=project)
    assert where.code == 0, where.err
    assert where.out.startswith(f"{store_path}/lib/python3.11/site-packages/numpy/")

    # gc: the unused Nix env's manifest and gc root go, and Nix is asked to free the path
    gone = repro("cache", "gc", "--older-than", "0", "--json", cwd=project)
    assert gone.code == 0, gone.err
    assert str(store_path) in gone.json["removed"]
    assert not root.is_symlink()
    if store_path.exists():  # deleted unless another root (an earlier run's store) holds it
        held = subprocess.run(["nix-store", "--query", "--roots", store_path],
                              capture_output=True, text=True, check=True).stdout
        assert held.strip() and str(root) not in held
    again = repro("build", "--backend", "nix", "--json", cwd=project)
    assert again.code == 0 and again.json["cached"] is False and root.is_symlink()


@pytest.mark.network
def test_an_edited_nix_env_is_found_and_repaired_before_use(project: Path) -> None:
    built = repro("build", "--backend", "nix", "--json", cwd=project)
    assert built.code == 0, built.err
    store_path = built.json["path"]
    target = Path(store_path) / "lib" / "python3.11" / "site-packages" / "numpy" / "version.py"
    try:
        os.chmod(target, 0o644)
        with target.open("a") as f:
            f.write("# edited\n")
        found = repro("cache", "verify", "--json", cwd=project)
        assert found.code == 1
        assert [p["path"] for p in found.json["problems"]] == [store_path]
        nix_says = subprocess.run(["nix-store", "--verify", "--check-contents"],
                                  capture_output=True, text=True, check=False)
        assert f"path '{store_path}' was modified" in nix_says.stderr

        rerun = repro("run", "--in", "nix", "--no-cache", "--json", cwd=project)
        assert rerun.code == 0, rerun.err
        assert "was changed after it was built" in rerun.err
        assert "repairing it" in rerun.err
        assert "# edited" not in target.read_text()
        assert repro("cache", "verify", cwd=project).code == 0
    finally:  # the Nix store is the machine's: never leave it damaged
        subprocess.run(["nix-store", "--repair-path", store_path], capture_output=True,
                       check=False)


@pytest.mark.network
@has_torch
def test_the_torch_example_builds_in_nix_from_the_wheel_folder(tmp_path: Path) -> None:
    copy = shutil.copytree(TORCH, tmp_path / "torch-mlp")
    lock = copy / "lockfiles/torch-mlp/pylock.toml"
    torch = next(p for p in pylock.loads(lock.read_text(), lock) if p.name == "torch")
    expected = Path(subprocess.run(["nix-store", "--print-fixed-path", "sha256",
                                    torch.wheels[0].sha256, TORCH_WHEEL],
                                   capture_output=True, text=True, check=True).stdout.strip())
    # an earlier build on this machine may have added it: removed where nothing keeps it
    subprocess.run(["nix-store", "--delete", expected], capture_output=True, check=False)
    there = expected.exists()
    built = repro("build", "--backend", "nix", "--find-links", MACHINE_WHEELS, cwd=copy)
    assert built.code == 0, built.err
    if not there:  # download.pytorch.org is not reachable here: it came from the folder
        assert f"Added {TORCH_WHEEL} to the Nix store from {MACHINE_WHEELS}" in built.err
    assert expected.is_file()
    env = Path(built.out.split()[0])
    assert (env / "bin" / "torchrun").is_file()  # torch's own console script
    # setuptools vendors wheel's .dist-info: its entry points are no scripts of this env
    assert not (env / "bin" / "wheel").exists()
    in_nix = repro("run", "--in", "nix", "--find-links", MACHINE_WHEELS, "--json", cwd=copy)
    assert in_nix.code == 0, in_nix.err
    nix_model = (copy / "model.pt").read_bytes()
    in_venv = repro("run", "--find-links", MACHINE_WHEELS, "--json", cwd=copy)
    assert in_venv.code == 0, in_venv.err
    assert (copy / "model.pt").read_bytes() == nix_model


def test_no_nix_on_path_says_how_to_get_nix_portable(project: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("git",):
        (bare / tool).symlink_to(shutil.which(tool) or "/usr/bin/git")
    r = repro("build", "--backend", "nix", cwd=project, env={"PATH": str(bare)})
    assert r.code == 3, r.err
    assert "neither nix-build nor nix-portable is on PATH" in r.err
    assert "nix-portable" in r.err.split("neither", 1)[1]
