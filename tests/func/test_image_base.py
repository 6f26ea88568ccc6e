"""Images on a real base: a Debian rootfs with Python, pushed to a real registry on loopback,
pulled by digest by repro, run by buildah."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.image import layout, tarball
from tests.func.helpers import repro

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("docker-registry", "skopeo", "buildah", "apt-get")),
        reason="docker-registry, skopeo and buildah are installed by .ci/run (Debian packages)"),
]

# What python3.11 needs to import numpy on Debian 12, as .deb files (no maintainer scripts).
DEBS = ["python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6",
        "zlib1g", "libexpat1", "libffi8", "libbz2-1.0", "liblzma5", "libcrypt1", "libgcc-s1",
        "libssl3", "libstdc++6", "libsqlite3-0", "libuuid1", "libtinfo6", "libncursesw6",
        "libreadline8"]


@pytest.fixture(scope="session")
def python_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An OCI layout of a Debian rootfs holding python3.11 (and its manifest digest)."""
    work = tmp_path_factory.mktemp("base")
    debs, rootfs = work / "debs", work / "rootfs"
    debs.mkdir()
    done = subprocess.run(["apt-get", "download", *DEBS], cwd=debs, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"apt-get download failed (run apt-get update first): {done.stderr[-300:]}")
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(rootfs)], check=True)
    image = layout.assemble([tarball.layer([(rootfs, "")])], architecture="amd64",
                            env={"PATH": "/usr/local/bin:/usr/bin:/bin"}, entrypoint=[],
                            workdir="/", labels={}, created="1970-01-01T00:00:00Z",
                            cmd=["/usr/bin/python3.11"])
    layout.write_layout(image, work / "layout", "base:3.11")
    return work / "layout", image.digest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The CNCF Distribution registry, serving on loopback from a temp folder."""
    work = tmp_path_factory.mktemp("registry")
    host = f"127.0.0.1:{_free_port()}"
    (work / "config.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {work / 'data'}\n"
        f"http:\n  addr: {host}\nlog:\n  level: error\n")
    server = subprocess.Popen(["docker-registry", "serve", str(work / "config.yml")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://{host}/v2/", timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
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
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{base_layout}:base:3.11",
                    f"docker://{registry}/python:3.11"], check=True, capture_output=True)
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


def test_a_local_layout_can_be_the_base(project: Path, tmp_path: Path,
                                        python_base: tuple[Path, str]) -> None:
    base_layout, digest = python_base
    with_base(project, f"oci:{base_layout}@{digest}")
    r = repro("build", "--image", "-o", tmp_path / "img", "--json", cwd=project)
    assert r.code == 0, r.err
    assert len(r.json["layers"]) == 3


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
    text = project_toml.read_text().replace(registry, f"127.0.0.1:{_free_port()}")
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

    project_toml.write_text(project_toml.read_text().replace('python = "3.11"',
                                                             'python = "3.12"')
                            .replace(f"oci:{tmp_path / 'no-python'}@{no_python.digest}",
                                     f"oci:{base_layout}@{digest}"))
    assert repro("lock", cwd=project).code == 0
    r = repro("build", "--image", "-o", out, cwd=project)
    assert r.code == 2
    assert "has Python 3.11, but the lock is for Python 3.12" in r.err


def test_the_exported_dockerfile_builds_with_buildah_and_installs_the_lock(
    project: Path, tmp_path: Path, python_base: tuple[Path, str], registry: str,
) -> None:
    # A base with pip: Debian's pip wheel, importable from PYTHONPATH (no installer run).
    base_layout, _ = python_base
    debs = tmp_path / "pip"
    debs.mkdir()
    subprocess.run(["apt-get", "download", "python3-pip-whl"], cwd=debs, check=True,
                   capture_output=True)
    rootfs = tmp_path / "pip-rootfs"
    subprocess.run(["dpkg-deb", "-x", str(next(debs.glob("*.deb"))), str(rootfs)], check=True)
    wheel = next((rootfs / "usr/share/python-wheels").glob("pip-*.whl"))
    certs = rootfs / "etc/ssl/certs"  # Debian's pip reads the system bundle; ours will do
    certs.mkdir(parents=True)
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", certs)
    index = json.loads((base_layout / "index.json").read_text())
    manifest = json.loads((base_layout / "blobs/sha256" / index["manifests"][0]["digest"][7:])
                          .read_bytes())
    base_layer = (base_layout / "blobs/sha256" / manifest["layers"][0]["digest"][7:]).read_bytes()
    config = json.loads((base_layout / "blobs/sha256" / manifest["config"]["digest"][7:])
                        .read_bytes())
    layers = [tarball.Layer(config["rootfs"]["diff_ids"][0], manifest["layers"][0]["digest"],
                            len(base_layer), base_layer), tarball.layer([(rootfs, "")])]
    image = layout.assemble(layers, architecture="amd64", entrypoint=[], workdir="/",
                            labels={}, created="1970-01-01T00:00:00Z",
                            env={"PATH": "/usr/bin:/bin",
                                 "PYTHONPATH": f"/usr/share/python-wheels/{wheel.name}"})
    layout.write_layout(image, tmp_path / "pip-layout", "pip:1")
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'pip-layout'}:pip:1",
                    f"docker://{registry}/python-pip:1"], check=True, capture_output=True)
    with_base(project, f"{registry}/python-pip@{image.digest}")

    exported = repro("export", "dockerfile", "--json", cwd=project)
    assert exported.code == 0, exported.err
    text = (project / "Dockerfile").read_text()
    assert f"FROM {registry}/python-pip@{image.digest}" in text
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
