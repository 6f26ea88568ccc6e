"""`repro build --image`: the same digest under varied conditions; skopeo and umoci accept it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.func.helpers import repro

pytestmark = pytest.mark.network
needs = pytest.mark.skipif(not (shutil.which("skopeo") and shutil.which("umoci")),
                           reason="skopeo and umoci are installed by .ci/run (Debian packages)")


def build(project: Path, out: Path, **env: str) -> dict:  # type: ignore[type-arg]
    r = repro("build", "--image", "-o", out, "--json", cwd=project, env=env)
    assert r.code == 0, r.err
    return r.json  # type: ignore[no-any-return]


def test_two_builds_under_varied_conditions_give_one_digest(project: Path, tmp_path: Path) -> None:
    first = build(project, tmp_path / "a")
    other = tmp_path / "far" / "away"
    shutil.copytree(project, other)
    old = os.umask(0o027)
    try:
        second = build(other, tmp_path / "b", REPRO_HOME=str(tmp_path / "store2"),
                       SOURCE_DATE_EPOCH="1700000000", TZ="Asia/Tokyo")
    finally:
        os.umask(old)
    assert first["image"] == second["image"]
    assert first["cached_layers"] == second["cached_layers"] == 0
    if shutil.which("faketime"):  # the clock five years ahead (libfaketime); offline, since
        # TLS certificates would have expired by then (uv's cache holds the wheels already)
        import sys

        third = tmp_path / "clock"
        shutil.copytree(project, third)
        moved = subprocess.run(
            ["faketime", "2031-05-05 12:00:00", sys.executable, "-m", "builder", "build",
             "--image", "--offline", "-o", str(tmp_path / "c"), "--json"], cwd=third,
            capture_output=True,
            text=True, check=False, env={**os.environ, "REPRO_HOME": str(tmp_path / "store3")})
        assert moved.returncode == 0, moved.stderr
        assert json.loads(moved.stdout)["image"] == first["image"]
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    for folder in ("a", "b"):
        files = sorted(p.relative_to(tmp_path / folder) for p in (tmp_path / folder).rglob("*"))
        assert files == sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*"))


def test_a_code_change_rewrites_only_the_top_layer(project: Path, tmp_path: Path) -> None:
    first = build(project, tmp_path / "a")
    (project / "train.py").write_text((project / "train.py").read_text() + "\n# tuned\n")
    second = build(project, tmp_path / "a")
    assert second["image"] != first["image"]
    assert [x["digest"] for x in second["layers"][:-1]] == \
        [x["digest"] for x in first["layers"][:-1]]
    assert second["layers"][-1]["digest"] != first["layers"][-1]["digest"]
    assert second["cached_layers"] == len(second["layers"]) - 1


@needs
def test_skopeo_and_umoci_accept_the_image(project: Path, tmp_path: Path) -> None:
    image = build(project, tmp_path / "img")
    inspect = subprocess.run(["skopeo", "inspect", f"oci:{tmp_path / 'img'}"],
                             capture_output=True, text=True, check=True)
    facts = json.loads(inspect.stdout)
    assert facts["Digest"] == image["image"]
    assert facts["Labels"]["dev.repro.recipe"] == "digits-logreg"
    env_id = repro("lock", "--check", "--json", cwd=project).json["env"]
    assert facts["Labels"]["dev.repro.env-id"] == env_id
    assert "PYTHONPATH=/opt/repro/site-packages" in facts["Env"]
    archive = subprocess.run(["skopeo", "inspect", f"docker-archive:{tmp_path / 'img.tar'}"],
                             capture_output=True, text=True, check=True)
    assert json.loads(archive.stdout)["Labels"] == facts["Labels"]

    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image",
                    f"{tmp_path / 'img'}:{image['tag']}", str(bundle)],
                   check=True, capture_output=True)
    site = bundle / "rootfs" / "opt/repro/site-packages"
    assert (site / "numpy" / "__init__.py").is_file()
    assert (site / "bin" / "f2py").read_text().startswith("#!/usr/bin/env python3\n")
    assert not list(site.rglob("direct_url.json"))
    assert not list(site.rglob("__pycache__"))
    work = bundle / "rootfs" / "work"
    assert sorted(p.name for p in work.iterdir()) == ["lockfiles", "repro.toml", "train.py"]
    assert (work / "train.py").stat().st_mtime == 0


def test_bad_image_inputs(project: Path, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "precious.txt").write_text("keep me")
    r = repro("build", "--image", "-o", taken, cwd=project)
    assert r.code == 2
    assert "exists and is not an OCI image layout" in r.err
    assert (taken / "precious.txt").read_text() == "keep me"
    scratch = repro("run", "--in", "image", cwd=project)
    assert scratch.code == 2
    assert "the image has no Python to run the command" in scratch.err
    recipe = project / "repro.toml"
    recipe.write_text(recipe.read_text() + '\n[image]\nbase = "registry.local/python@sha256:'
                      + "a" * 64 + '"\n')
    r = repro("build", "--image", "-o", tmp_path / "fresh", cwd=project)
    assert r.code == 3
    assert "cannot reach the registry registry.local" in r.err
    assert not (tmp_path / "fresh").exists()


def test_an_image_names_the_recipe_env_and_lock_that_made_it(project: Path,
                                                              tmp_path: Path) -> None:
    image = build(project, tmp_path / "img")
    env_id = repro("lock", "--check", "--json", cwd=project).json["env"]
    for target in (tmp_path / "img", image["image"]):
        found = repro("lookup", target, "--json", cwd=project)
        assert found.code == 0, found.err
        assert found.json["kind"] == "image"
        assert found.json["digest"] == image["image"]
        assert found.json["image"]["recipe"] == "digits-logreg"
        assert found.json["image"]["env-id"] == env_id
    unknown = repro("lookup", "sha256:" + "0" * 64, cwd=project)
    assert unknown.code == 1
    assert "not found" in unknown.out


def test_a_wheel_for_another_platform_in_the_lock_is_refused(project: Path,
                                                              tmp_path: Path) -> None:
    arm = tmp_path / "arm"
    shutil.copytree(project, arm)
    recipe = arm / "repro.toml"
    recipe.write_text(recipe.read_text().replace('platform = "linux/x86_64"',
                                                 'platform = "linux/aarch64"'))
    assert repro("lock", cwd=arm).code == 0
    arm_lock = (arm / "lockfiles/digits-logreg/pylock.toml").read_text()
    arm_wheel = arm_lock.split("wheels = [\n")[1].split("\n")[0]
    pylock = project / "lockfiles/digits-logreg/pylock.toml"
    x86_wheel = pylock.read_text().split("wheels = [\n")[1].split("\n")[0]
    assert "aarch64" in arm_wheel and "x86_64" in x86_wheel
    pylock.write_text(pylock.read_text().replace(x86_wheel, arm_wheel))
    r = repro("build", "--image", "--frozen", "-o", tmp_path / "img", cwd=project)
    assert r.code == 3
    assert "installing numpy 2.4.6 for the image failed; no image was written" in r.err
    assert "a wheel for the recipe's platform must be in the lock" in r.err
    assert not (tmp_path / "img").exists()


@pytest.mark.skipif(shutil.which("podman") is None,
                    reason="podman (its Docker API service) is installed by .ci/run")
def test_load_puts_the_image_into_a_docker_api_engine(project: Path, tmp_path: Path) -> None:
    import time

    import docker

    sock = tmp_path / "podman.sock"
    log = tmp_path / "podman.log"
    runroot = Path(tempfile.mkdtemp(prefix="repro-podman-"))  # podman: at most 50 characters
    with log.open("w") as err:
        service = subprocess.Popen(
            ["podman", "--root", str(tmp_path / "root"), "--runroot", str(runroot),
             "--storage-driver", "vfs", "system", "service", "--time=0", f"unix://{sock}"],
            stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sock.exists(), log.read_text()
        r = repro("build", "--image", "--load", "-o", tmp_path / "img", "--json", cwd=project,
                  env={"DOCKER_HOST": f"unix://{sock}"})
        assert r.code == 0, r.err
        client = docker.DockerClient(base_url=f"unix://{sock}")
        image = client.images.get(f"localhost/{r.json['tag']}")
        assert image.labels["dev.repro.recipe"] == "digits-logreg"
        assert image.labels["dev.repro.env-id"].startswith("blake3:")
        client.close()
    finally:
        service.terminate()
        service.wait(timeout=30)
        shutil.rmtree(runroot, ignore_errors=True)
    gone = repro("build", "--image", "--load", "-o", tmp_path / "img", cwd=project,
                 env={"DOCKER_HOST": f"unix://{sock}"})
    assert gone.code == 3
    assert "podman system service" in gone.err
