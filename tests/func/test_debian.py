"""System packages locked by hash (examples/debian-image): apt resolves bookworm's packages
into repro.lock, the image is assembled from the .deb files with no registry and no package
manager, and trains with the venv's bytes.

Debian moves: the pool drops superseded versions, so each test re-locks a temp copy of the
example first (`repro lock --upgrade-system`) instead of building the committed lock as it
is; a security update never fails CI."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.func.helpers import committed, repro

pytestmark = [
    pytest.mark.network,  # deb.debian.org
    pytest.mark.skipif(shutil.which("apt-get") is None or not Path(
        "/usr/share/keyrings/debian-archive-keyring.gpg").is_file(),
        reason="apt and debian-archive-keyring resolve system packages (a Debian host; "
               ".ci/run installs the keyring)"),
]

EXAMPLE = ROOT / "examples" / "debian-image"
LOCK = Path("lockfiles/digits-debian/repro.lock")


def relocked(tmp_path: Path, name: str, **env: str) -> Path:
    """A temp copy of the example, re-locked to what the pool has now, in git."""
    copy = shutil.copytree(EXAMPLE, tmp_path / name / "debian-image")
    shutil.rmtree(copy / "lockfiles")
    done = repro("lock", "--upgrade-system", cwd=copy, env=env)
    assert done.code == 0, done.err
    return committed(copy)


def test_the_lock_is_made_again_byte_for_byte_from_another_clone_and_store(
        tmp_path: Path) -> None:
    a = relocked(tmp_path, "a")
    b = relocked(tmp_path, "b", REPRO_HOME=str(tmp_path / "store-b"))
    assert (a / LOCK).read_bytes() == (b / LOCK).read_bytes()
    debs = {d["name"]: d for d in tomllib.loads((a / LOCK).read_text())["debian"]}
    assert {"python3.11-minimal", "libgomp1", "ca-certificates", "libc6"} <= set(debs)
    gomp = debs["libgomp1"]
    assert len(gomp["sha256"]) == 64 and gomp["size"] > 0
    assert gomp["filename"].startswith("pool/main/g/gcc-12/libgomp1_")
    assert gomp["url"] == f"https://deb.debian.org/debian/{gomp['filename'].replace('+', '%2B')}"
    assert gomp["snapshot"].startswith("https://snapshot.debian.org/archive/debian/")
    # the committed lock names the same packages (versions may have moved since)
    committed_lock = tomllib.loads((EXAMPLE / LOCK).read_text())
    assert {d["name"] for d in committed_lock["debian"]} == set(debs)
    assert repro("lock", "--check", cwd=a).code == 0


def test_the_image_runs_python_from_debian_and_trains_the_venvs_bytes(tmp_path: Path) -> None:
    project = relocked(tmp_path, "p")
    built = repro("build", "--image", "-o", tmp_path / "img", "--json", cwd=project)
    assert built.code == 0, built.err
    contents = [layer["content"] for layer in built.json["layers"]]
    gomp = next(d for d in tomllib.loads((project / LOCK).read_text())["debian"]
                if d["name"] == "libgomp1")
    assert contents[0].startswith("debian: base-files ")  # every package, one layer
    assert f"libgomp1 {gomp['version']}" in contents[0]
    assert contents[1] == "repro: maintainer steps"

    root = tmp_path / "bh"
    buildah = ["buildah", "--root", str(root / "root"), "--runroot", str(root / "run"),
               "--storage-driver", "vfs"]
    ctr = subprocess.run([*buildah, "from", "--quiet", f"oci:{tmp_path / 'img'}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    ran = subprocess.run([*buildah, "run", "--isolation", "chroot", ctr, "--", "python3", "-c",
                          "import getpass, numpy, os, ssl, stat, tempfile; "
                          "print(numpy.__version__, "
                          "ssl.create_default_context().cert_store_stats()['x509_ca'] > 100, "
                          "getpass.getuser(), tempfile.gettempdir(), "
                          "oct(stat.S_IMODE(os.stat('/tmp').st_mode)))"],
                         capture_output=True, text=True, check=False)
    assert ran.returncode == 0, ran.stderr
    # numpy from the lock, the CA bundle made, a user and a /tmp as maintainer scripts would
    assert ran.stdout.split() == ["2.4.6", "True", "root", "/tmp", "0o1777"]

    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image",
                    f"{tmp_path / 'img'}:{built.json['tag']}", str(bundle)],
                   check=True, capture_output=True)
    status = bundle / "rootfs" / "var/lib/dpkg/status.d"
    assert "Package: libgomp1\n" in (status / "libgomp1").read_text()
    assert (status / "python3.11-minimal.md5sums").is_file()
    assert "ID=debian" in (bundle / "rootfs" / "usr/lib/os-release").read_text()

    in_image = repro("run", "--in", "image", "--json", cwd=project)
    assert in_image.code == 0, in_image.err
    image_model = (project / "model.npz").read_bytes()
    in_venv = repro("run", "--json", cwd=project)
    assert in_venv.code == 0, in_venv.err
    assert (project / "model.npz").read_bytes() == image_model
    assert in_image.json["outputs"][0]["digest"] == in_venv.json["outputs"][0]["digest"]


def test_two_assemblies_in_other_folders_stores_and_umasks_give_one_digest(
        tmp_path: Path) -> None:
    a = relocked(tmp_path, "a")
    first = repro("build", "--image", "-o", tmp_path / "img-a", "--json", cwd=a)
    assert first.code == 0, first.err
    b = shutil.copytree(a, tmp_path / "far" / "away" / "b")
    old = os.umask(0o077)
    try:
        second = repro("build", "--image", "-o", tmp_path / "img-b", "--json", cwd=b,
                       env={"REPRO_HOME": str(tmp_path / "store-2"), "TZ": "Asia/Tokyo"})
    finally:
        os.umask(old)
    assert second.code == 0, second.err
    assert second.json["cached_layers"] == 0  # built again from the .deb files, not reused
    assert first.json["image"] == second.json["image"]


def test_a_tampered_sha256_is_refused_and_cached_debs_build_offline(tmp_path: Path,
                                                                      isolated: Path) -> None:
    project = relocked(tmp_path, "p")
    assert repro("build", "--image", "-o", tmp_path / "img", cwd=project).code == 0
    # the mirror unreachable: the .deb files in the store are enough (layers made again)
    lock = project / LOCK
    text = lock.read_text()
    lock.write_text(text.replace("https://deb.debian.org/", "http://127.0.0.1:9/"))
    shutil.rmtree(isolated / "layers")
    offline = repro("build", "--image", "-o", tmp_path / "img2", "--frozen", cwd=project)
    assert offline.code == 0, offline.err
    # an empty store and --offline: nothing is fetched, and what is missing is named
    empty = repro("build", "--image", "--offline", "-o", tmp_path / "img4", cwd=project,
                  env={"REPRO_HOME": str(tmp_path / "empty-store")})
    assert empty.code == 3, empty.err
    assert "is not in the store, and --offline fetches nothing" in empty.err
    # a sha256 changed in the lock: the download does not match it, both digests said
    gomp = next(d for d in tomllib.loads(text)["debian"] if d["name"] == "libgomp1")
    lock.write_text(text.replace(gomp["sha256"], "0" * 64))
    bad = repro("build", "--image", "-o", tmp_path / "img3", "--frozen", cwd=project)
    assert bad.code == 3, bad.err
    assert f"sha256:{'0' * 64}" in bad.err
    assert "served bytes whose sha256 is sha256:" in bad.err


def test_bad_system_packages_are_named(tmp_path: Path) -> None:
    copy = shutil.copytree(EXAMPLE, tmp_path / "bad")
    recipe = copy / "repro.toml"
    text = recipe.read_text()
    recipe.write_text(text.replace('"libgomp1"', '"libgompp1"'))
    unknown = repro("lock", cwd=copy)
    assert unknown.code == 2, unknown.err
    assert "libgompp1 is no package of bookworm, bookworm-updates, bookworm-security" in \
        unknown.err
    assert "did you mean libgomp1" in unknown.err
    missing = text.replace('suites = ["bookworm", "bookworm-updates", "bookworm-security"]',
                           'suites = ["bookworm-security"]')
    recipe.write_text(missing)
    none = repro("lock", cwd=copy)
    assert none.code == 2, none.err
    assert "has no version in bookworm-security (amd64)" in none.err
    # python3.11 is in the security suite; what it depends on (media-types) is not
    recipe.write_text(missing.replace(
        'system-packages = ["python3.11", "libstdc++6", "libgomp1", "ca-certificates"]',
        'system-packages = ["python3.11"]'))
    unmet = repro("lock", cwd=copy)
    assert unmet.code == 2, unmet.err
    assert "cannot be installed together" in unmet.err
    assert "Depends:" in unmet.err
    cases = {  # recipe change: (exit code, what the message says)
        '"libgomp1=1.0-1"': (2, "libgomp1=1.0-1 is not in bookworm"),
        '"awk"': (2, "awk is a virtual package"),
        '"libgomp1", "libgomp1=1.0-1"': (2, "names libgomp1 twice"),
    }
    for change, (code, said) in cases.items():
        recipe.write_text(text.replace('"libgomp1"', change))
        got = repro("lock", cwd=copy)
        assert (got.code, said in got.err) == (code, True), (change, got.err)
    recipe.write_text(text.replace('"bookworm-updates"', '"bookwrom-updates"'))
    typo = repro("lock", cwd=copy)
    assert typo.code == 2 and "'bookwrom-updates' is not a suite of" in typo.err, typo.err
    recipe.write_text(text.replace('[environment.debian]', '[environment.debian]\n'
                                   'components = ["main", "bogus"]'))
    component = repro("lock", cwd=copy)
    assert component.code == 2 and "bookworm has no 'bogus' for amd64" in component.err
    recipe.write_text(text.replace('suites = ["bookworm"', 'mirror = "http://127.0.0.1:9/debian"'
                                   '\nsuites = ["bookworm"'))
    down = repro("lock", cwd=copy)
    assert down.code == 3, down.err
    assert "could not be read" in down.err


def test_diff_shows_system_package_changes_between_locks() -> None:
    shown = repro("diff", EXAMPLE, ROOT, "--json", cwd=ROOT)
    assert shown.code in (0, 1), shown.err
    removed = shown.json["differences"]["system-packages"]["removed"]
    assert "libgomp1" in removed and "python3.11-minimal" in removed
    text = repro("diff", EXAMPLE, ROOT, cwd=ROOT).out
    assert "system-packages:\n" in text and "  - libgomp1 " in text


def test_the_committed_lock_is_whole_and_says_when_the_pool_has_moved(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The committed lock as it is: every entry whole and its env id its own; whether each
    .deb is still in the pool is said, never failed (Debian drops superseded versions)."""
    import urllib.error
    import urllib.request

    from builder.lock import inspect
    from builder.schema import load_recipe

    current, stale, tampered = inspect(load_recipe(EXAMPLE / "repro.toml"))
    assert current is not None and not stale and not tampered
    debs = current.debs
    assert len({d.name for d in debs}) == len(debs) > 40
    assert all(len(d.sha256) == 64 and d.size > 0 and d.url.endswith(".deb") for d in debs)
    moved = []
    for d in debs:
        try:
            urllib.request.urlopen(urllib.request.Request(d.url, method="HEAD"), timeout=20)  # noqa: S310
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
            moved.append(d.name)
    with capsys.disabled():
        print(f"\nexamples/debian-image: the pool moved on from {', '.join(moved)}; "
              "`repro lock --upgrade-system` there" if moved else
              "\nexamples/debian-image: every locked .deb is still in the pool")
