"""Images on a real base: a Debian rootfs with Python, pushed to a real registry on loopback,
pulled by digest by repro, run by buildah."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder import hashing
from builder.image import layout, tarball
from tests.conftest import MACHINE_WHEELS, ROOT, committed_baseline_runs
from tests.func import bases
from tests.func.helpers import repro

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("docker-registry", "skopeo", "buildah", "apt-get")),
        reason="docker-registry, skopeo and buildah are installed by .ci/run (Debian packages)"),
]


@pytest.fixture(scope="session")
def python_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    try:
        return bases.python_base(tmp_path_factory.mktemp("base"))
    except RuntimeError as exc:
        pytest.skip(f"{exc} (run apt-get update first)")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The CNCF Distribution registry, serving on loopback from a temp folder."""
    host, server = bases.start_registry(tmp_path_factory.mktemp("registry"))
    yield host
    server.terminate()
    server.wait(timeout=30)


def buildah(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["buildah", "--root", str(tmp / "root"), "--runroot",
                           str(tmp / "runroot"), "--storage-driver", "vfs", *args],
                          capture_output=True, text=True, check=False)


def with_base(project: Path, base: str) -> None:
    recipe = project / "repro.toml"
    recipe.write_text(recipe.read_text() + f'\n[image]\nbase = "{base}"\n')
    assert repro("lock", cwd=project).code == 0


def test_a_base_pulled_by_digest_runs_the_locked_packages_in_buildah(
    project: Path, tmp_path: Path, python_base: tuple[Path, str], registry: str,
) -> None:
    base_layout, digest = python_base
    bases.push(base_layout, "base:3.11", f"{registry}/python:3.11")
    with_base(project, f"{registry}/python@{digest}")
    built = repro("build", "--image", "-o", tmp_path / "img", "--push",
                  f"{registry}/digits:nightly", "--json", cwd=project)
    assert built.code == 0, built.err
    image = built.json
    assert image["layers"][0]["content"] == f"base {digest}"

    pushed = subprocess.run(["skopeo", "inspect", "--tls-verify=false",
                             f"docker://{registry}/digits:nightly"],
                            capture_output=True, text=True, check=True)
    assert json.loads(pushed.stdout)["Digest"] == image["image"]

    ctr = buildah(tmp_path, "from", "--isolation", "chroot", f"oci:{tmp_path / 'img'}:{image['tag']}")
    assert ctr.returncode == 0, ctr.stderr
    ran = buildah(tmp_path, "run", "--isolation", "chroot", ctr.stdout.strip(), "--",
                  "/usr/bin/python3.11", "-c",
                  "import numpy, sys, os; print(numpy.__version__, sys.version.split()[0], "
                  "os.getcwd())")
    assert ran.returncode == 0, ran.stderr
    version, python, cwd = ran.stdout.split()
    assert (version, python[:4], cwd) == ("2.4.6", "3.11", "/work")

    # Another store pulls the base again from the registry: the same image.
    again = repro("build", "--image", "-o", tmp_path / "img2", "--json", cwd=project,
                  env={"REPRO_HOME": str(tmp_path / "store2")})
    assert again.code == 0, again.err
    assert again.json["image"] == image["image"]


def test_a_local_layout_or_archive_can_be_the_base(project: Path, tmp_path: Path,
                                                   python_base: tuple[Path, str]) -> None:
    import tarfile

    base_layout, digest = python_base
    with_base(project, f"oci:{base_layout}@{digest}")
    r = repro("build", "--image", "-o", tmp_path / "img", "--json", cwd=project)
    assert r.code == 0, r.err
    assert len(r.json["layers"]) == 3
    archive = tmp_path / "base.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(base_layout, arcname=".")
    recipe = project / "repro.toml"
    recipe.write_text(recipe.read_text().replace(f"oci:{base_layout}@", f"oci:{archive}@"))
    assert repro("lock", cwd=project).code == 0
    from_archive = repro("build", "--image", "-o", tmp_path / "img2", "--json", cwd=project,
                         env={"REPRO_HOME": str(tmp_path / "store2")})
    assert from_archive.code == 0, from_archive.err
    assert from_archive.json["layers"][0] == r.json["layers"][0]


def test_bad_bases_fail_before_any_image_is_written(
    project: Path, tmp_path: Path, python_base: tuple[Path, str], registry: str,
) -> None:
    base_layout, digest = python_base
    out = tmp_path / "img"
    with_base(project, f"{registry}/python@sha256:{'0' * 64}")
    missing = repro("build", "--image", "-o", out, cwd=project)
    assert missing.code == 3
    assert "HTTP 404" in missing.err
    assert not out.exists()

    project_toml = project / "repro.toml"
    text = project_toml.read_text().replace(registry, f"127.0.0.1:{bases.free_port()}")
    project_toml.write_text(text)
    unreachable = repro("build", "--image", "-o", out, "--frozen", cwd=project)
    assert unreachable.code == 3
    assert "cannot reach the registry" in unreachable.err
    assert not out.exists()

    empty = tmp_path / "empty-rootfs"
    (empty / "etc").mkdir(parents=True)
    no_python = layout.assemble([tarball.layer([(empty, "")])], architecture="amd64", env={},
                                entrypoint=[], workdir="/", labels={},
                                created="1970-01-01T00:00:00Z")
    layout.write_layout(no_python, tmp_path / "no-python", "x:1")
    project_toml.write_text(text.split("\n[image]")[0] +
                            f'\n[image]\nbase = "oci:{tmp_path / "no-python"}@{no_python.digest}"\n')
    assert repro("lock", cwd=project).code == 0
    r = repro("build", "--image", "-o", out, cwd=project)
    assert r.code == 2
    assert "has no Python interpreter, but the lock is for Python 3.11" in r.err
    assert not out.exists()
    assert not (tmp_path / "repro-home" / "layers").exists()  # no layer was built

    musl = tmp_path / "musl-rootfs"
    (musl / "lib").mkdir(parents=True)
    (musl / "lib/ld-musl-x86_64.so.1").write_bytes(b"")
    (musl / "usr/bin").mkdir(parents=True)
    (musl / "usr/bin/python3.11").write_bytes(b"")
    alpine = layout.assemble([tarball.layer([(musl, "")])], architecture="amd64", env={},
                             entrypoint=[], workdir="/", labels={},
                             created="1970-01-01T00:00:00Z")
    layout.write_layout(alpine, tmp_path / "musl", "m:1")
    project_toml.write_text(project_toml.read_text().replace(
        f"oci:{tmp_path / 'no-python'}@{no_python.digest}",
        f"oci:{tmp_path / 'musl'}@{alpine.digest}"))
    assert repro("lock", cwd=project).code == 0
    r = repro("build", "--image", "-o", out, cwd=project)
    assert r.code == 2
    assert "is musl-based" in r.err
    assert not out.exists()

    project_toml.write_text(project_toml.read_text().replace('python = "3.11"',
                                                             'python = "3.12"')
                            .replace(f"oci:{tmp_path / 'musl'}@{alpine.digest}",
                                     f"oci:{base_layout}@{digest}"))
    assert repro("lock", cwd=project).code == 0
    r = repro("build", "--image", "-o", out, cwd=project)
    assert r.code == 2
    assert "has Python 3.11, but the lock is for Python 3.12" in r.err


def test_the_exported_dockerfile_builds_with_buildah_and_installs_the_lock(
    project: Path, tmp_path: Path, python_base: tuple[Path, str], registry: str,
) -> None:
    pip_layout, pip_digest = bases.python_base(tmp_path / "pip-base", pip=True)
    bases.push(pip_layout, "base:3.11", f"{registry}/python-pip:1")
    with_base(project, f"{registry}/python-pip@{pip_digest}")

    exported = repro("export", "dockerfile", "--json", cwd=project)
    assert exported.code == 0, exported.err
    text = (project / "Dockerfile").read_text()
    assert f"FROM {registry}/python-pip@{pip_digest}" in text
    assert "--require-hashes" in text
    assert "--hash=sha256:89cd468399cfd2504718f0ba50e410dca55a170b61a02ad92bb18c8a65186e93" in \
        (project / "lockfiles/digits-logreg/requirements.txt").read_text()

    bud = buildah(tmp_path, "bud", "--isolation", "chroot", "--tls-verify=false", "-f",
                  str(project / "Dockerfile"), "-t", "exported", str(project))
    assert bud.returncode == 0, bud.stderr[-2000:]
    ctr = buildah(tmp_path, "from", "exported")
    ran = buildah(tmp_path, "run", "--isolation", "chroot", ctr.stdout.strip(), "--",
                  "/usr/bin/python3.11", "-c",
                  "import importlib.metadata as m, json; print(json.dumps(sorted("
                  "(d.metadata['Name'].lower(), d.version) for d in m.distributions("
                  "path=['/opt/repro/site-packages']))))")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == [["numpy", "2.4.6"]]


def test_a_run_inside_the_image_matches_the_venv_run_bit_for_bit(
    project: Path, python_base: tuple[Path, str], registry: str,
) -> None:
    base_layout, digest = python_base
    bases.push(base_layout, "base:3.11", f"{registry}/python:3.11")
    with_base(project, f"{registry}/python@{digest}")
    in_venv = repro("run", "--json", cwd=project)
    assert in_venv.code == 0, in_venv.err
    in_image = repro("run", "--in", "image", "--json", cwd=project)
    assert in_image.code == 0, in_image.err
    a, b = in_venv.json, in_image.json
    assert b["cached"] is False
    assert b["run_key"] != a["run_key"]  # the image digest is part of the key
    assert [o["digest"] for o in b["outputs"]] == [o["digest"] for o in a["outputs"]]
    assert b["metrics"] == a["metrics"]
    record = repro("show", b["record"], "--json", cwd=project).json
    assert record["software"]["image"].startswith("sha256:")
    assert record["software"]["python"] == "/usr/bin/python3.11"
    assert record["variables"]["REPRO_SEED"] == "7"
    again = repro("run", "--in", "image", "--json", cwd=project)
    assert again.json["cached"] is True

    # pushed to a remote on the base's registry: the image by digest (base layers mounted
    # from the base's repository, not sent), named by the run's manifest
    image = record["software"]["image"]
    pushed = repro("push", b["record"], "--remote", f"{registry}/team/cache", "--json",
                   cwd=project)
    assert pushed.code == 0, pushed.err
    inspected = subprocess.run(["skopeo", "inspect", "--tls-verify=false",
                                f"docker://{registry}/team/cache@{image}"],
                               capture_output=True, text=True, check=False)
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["Digest"] == image
    base_layers = len(json.loads(subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{registry}/python@{digest}"],
        capture_output=True, text=True, check=True).stdout)["Layers"])
    assert pushed.json["skipped"] >= base_layers  # mounted, not uploaded


def test_a_run_made_in_its_image_is_reproduced_in_it_from_an_empty_store(
    project: Path, tmp_path: Path, python_base: tuple[Path, str], registry: str,
    key: tuple[Path, str],
) -> None:
    private, public = key
    base_layout, digest = python_base
    bases.push(base_layout, "base:3.11", f"{registry}/python:3.11")
    with_base(project, f"{registry}/python@{digest}")
    remote = f"{registry}/reproduce/cache"
    made = repro("run", "--in", "image", "--push", "--remote", remote, "--sign-key", private,
                 "--json", cwd=project)
    assert made.code == 0, made.err
    assert repro("push", "--env", "--remote", remote, "--sign-key", private,
                 cwd=project).code == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    # capitals in the store's path: buildah names an image after its layout's path, and
    # refuses capitals in a name
    remade = repro("reproduce", made.json["outputs"][0]["digest"], "--in", "image", "--remote",
                   remote, "--trust", public, "-o", tmp_path / "remade", "--json", cwd=empty,
                   env={"REPRO_HOME": str(tmp_path / "Store-B")})
    assert remade.code == 0, remade.err
    out = remade.json
    assert (out["verdict"], out["run_key"]) == ("reproduced", made.json["run_key"])  # one image
    assert (tmp_path / "remade" / "model.npz").read_bytes() == \
        (project / "model.npz").read_bytes()


@pytest.mark.skipif(not (Path(MACHINE_WHEELS or "/nonexistent") /
                         "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").is_file(),
                    reason="the torch 2.13.0 CPU wheel is not in $PIP_FIND_LINKS here")
def test_the_torch_example_trains_to_the_same_weights_inside_its_image(
    tmp_path: Path, python_base: tuple[Path, str], registry: str,
) -> None:
    # the committed baseline was trained in a venv on the host's Python 3.11.7, on a machine
    # of this hardware class
    runs = committed_baseline_runs(ROOT / "examples" / "torch-mlp")
    base_layout, digest = python_base
    bases.push(base_layout, "base:3.11", f"{registry}/python:3.11")
    example = shutil.copytree(ROOT / "examples" / "torch-mlp", tmp_path / "torch-mlp",
                              ignore=shutil.ignore_patterns("model.pt", "metrics.json"))
    recipe = example / "repro.toml"
    recipe.write_text(recipe.read_text() + f'\n[image]\nbase = "{registry}/python@{digest}"\n')
    machine = {"REPRO_FIND_LINKS": MACHINE_WHEELS}
    assert repro("lock", cwd=example, env=machine).code == 0
    in_image = repro("run", "--in", "image", "--json", cwd=example, env=machine)
    assert in_image.code == 0, in_image.err
    assert in_image.json["outputs"][0]["digest"] == runs[0].outputs[0].digest


def test_a_base_by_tag_is_refused_until_update_base_records_its_digest(
    project: Path, tmp_path: Path, python_base: tuple[Path, str], registry: str,
) -> None:
    base_layout, digest = python_base
    bases.push(base_layout, "base:3.11", f"{registry}/moving:stable")
    recipe = project / "repro.toml"
    recipe.write_text(recipe.read_text() + f'\n[image]\nbase = "{registry}/moving:stable"\n')
    refused = repro("lock", cwd=project)
    assert refused.code == 2
    assert "is not pinned by digest" in refused.err
    assert "repro lock --update-base" in refused.err

    first = repro("lock", "--update-base", "--json", cwd=project)
    assert first.code == 0, first.err
    assert f'base = "{digest}"' in (project / "lockfiles/digits-logreg/repro.lock").read_text()
    assert repro("lock", "--check", cwd=project).code == 0
    built = repro("build", "--image", "-o", tmp_path / "img", "--json", cwd=project)
    assert built.code == 0, built.err
    assert built.json["layers"][0]["content"] == f"base {digest}"

    # The tag moves; the lock does not, until asked.
    other, other_digest = bases.python_base(tmp_path / "other", pip=True)
    bases.push(other, "base:3.11", f"{registry}/moving:stable")
    kept = repro("lock", "--json", cwd=project)
    assert kept.json["env"] == first.json["env"]
    moved = repro("lock", "--update-base", "--json", cwd=project)
    assert moved.json["env"] != first.json["env"]
    assert f'base = "{other_digest}"' in (project / "lockfiles/digits-logreg/repro.lock").read_text()


def test_a_run_in_the_image_reads_its_lock_once(
    project: Path, python_base: tuple[Path, str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from builder import cli
    from tests.func.test_run import count_lock_reads

    base_layout, digest = python_base
    with_base(project, f"oci:{base_layout}@{digest}")
    reads = count_lock_reads(monkeypatch)
    assert cli.main(["run", "--in", "image", "-r", str(project), "-q"]) == 0, \
        capsys.readouterr().err
    assert reads == ["digits-logreg"]  # the image, the key, the run and the record


def test_an_image_output_that_is_a_symlink_to_a_host_file_is_refused_unread(
    project: Path, python_base: tuple[Path, str], tmp_path: Path, isolated: Path,
) -> None:
    base_layout, digest = python_base
    with_base(project, f"oci:{base_layout}@{digest}")
    secret = tmp_path / "host-secret.txt"
    secret.write_text("the host's secret 4f1c9e")
    train = project / "train.py"
    train.write_text(train.read_text().replace(
        "    save_npz(args.out, {",
        f"    __import__('os').symlink({str(secret)!r}, args.out)\n    save_npz('elsewhere.npz', {{"))
    before = {p.name: p.read_bytes() for p in project.iterdir() if p.is_file()}
    r = repro("run", "--in", "image", cwd=project)
    assert r.code == 2, r.err
    assert "the declared output model.npz was written as (or through) the symlink model.npz" \
        in r.err
    assert {p.name: p.read_bytes() for p in project.iterdir() if p.is_file()} == before
    leaked = [p for p in isolated.rglob("*") if p.is_file() and not p.is_symlink()
              and b"4f1c9e" in p.read_bytes()]
    assert leaked == []


def test_an_image_run_writes_outputs_into_folders_the_project_lacks(
    project: Path, python_base: tuple[Path, str],
) -> None:
    base_layout, digest = python_base
    with_base(project, f"oci:{base_layout}@{digest}")
    recipe = project / "repro.toml"
    recipe.write_text(recipe.read_text().replace('outputs = ["model.npz"]',
                                                 'outputs = ["out/model.npz"]')
                      .replace('"--seed", "{seed}"]', '"--seed", "{seed}", "--out", '
                                                      '"out/model.npz"]'))
    assert not (project / "out").exists()
    r = repro("run", "--in", "image", "--json", cwd=project)
    assert r.code == 0, r.err
    assert hashing.file_digest(project / "out" / "model.npz") == r.json["outputs"][0]["digest"]
    shown = repro("show", "--json", cwd=project).json
    assert (shown["sandbox"], shown["runner"]) == ("image", "image")
