"""A store that never serves a wrong byte: corruption found and never served, a kill harness
over named fault points, gc under live use, a full disk, hostile base images."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from builder import hashing
from tests.func.helpers import Result, repro

pytestmark = pytest.mark.network


def flip(path: Path, at: int = 100) -> None:
    """Flip one byte of a file in the store (root ignores its read-only mode; so may others)."""
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[min(at, len(data) - 1)] ^= 0xFF
    path.write_bytes(bytes(data))


def blob(home: Path, digest: str) -> Path:
    h = digest.removeprefix("blake3:")
    return home / "objects" / h[:2] / h[2:]


def sound(cwd: Path) -> None:
    check = repro("cache", "verify", "--json", cwd=cwd)
    assert check.code == 0, check.out
    assert check.json["problems"] == []


def leftovers(home: Path) -> list[Path]:
    """Temp files, staging folders and sandboxes: what only a dead process leaves."""
    found = [*(home / "objects" / "tmp").glob("*"), *(home / "envs").glob(".*"),
             *(home / "sandbox").glob("*")]
    return sorted(p for p in found if p.exists())


# -- corruption: found, reported with its path, repaired or refused, never served ----------
def test_a_flipped_output_blob_is_never_restored(project: Path, isolated: Path) -> None:
    first = repro("run", "--json", cwd=project)
    assert first.code == 0, first.err
    out = first.json["outputs"][0]
    flip(blob(isolated, out["digest"]))
    (project / "model.npz").unlink()
    again = repro("run", "--json", cwd=project)
    assert again.code == 0, again.err
    assert again.json["cached"] is False  # trained again, not served
    assert "is damaged" in again.err and "training again" in again.err
    assert hashing.file_digest(project / "model.npz") == out["digest"]
    assert list((isolated / "quarantine").iterdir())
    sound(project)


def test_a_flipped_record_is_never_an_answer(project: Path, isolated: Path) -> None:
    first = repro("run", "--json", cwd=project)
    flip(blob(isolated, first.json["record"]), at=20)
    again = repro("run", "--json", cwd=project)
    assert again.code == 0, again.err
    assert again.json["cached"] is False
    assert again.json["outputs"][0]["digest"] == first.json["outputs"][0]["digest"]


def test_cache_verify_lists_each_damage_with_its_path_and_repairs(
    project: Path, isolated: Path,
) -> None:
    first = repro("run", "--json", cwd=project).json
    model = blob(isolated, first["outputs"][0]["digest"])
    flip(model)
    env = next(p for p in (isolated / "envs").iterdir() if not p.name.startswith("."))
    numpy = env / "lib/python3.11/site-packages/numpy/__init__.py"
    os.chmod(numpy, 0o644)
    numpy.write_text(numpy.read_text() + "\n# changed\n")
    listed = repro("cache", "verify", "--json", cwd=project)
    assert listed.code == 1
    paths = {p["path"]: p for p in listed.json["problems"]}
    assert str(model) in paths
    assert paths[str(env)]["problem"] == "its files differ from what was sealed when it was built"
    assert any(p["area"] == "records" and "model.npz" in p["problem"]
               for p in listed.json["problems"])
    fixed = repro("cache", "verify", "--repair", "--json", cwd=project)
    assert fixed.code == 1  # something was wrong (and is repaired: the list says how)
    assert all(p["repair"] for p in fixed.json["problems"])
    sound(project)
    rerun = repro("run", "--json", cwd=project)  # the env is rebuilt, the run made again
    assert rerun.code == 0, rerun.err
    assert rerun.json["outputs"][0]["digest"] == first["outputs"][0]["digest"]


def test_a_flipped_layer_blob_is_rebuilt_never_put_in_an_image(
    project: Path, isolated: Path,
) -> None:
    first = repro("build", "--image", "-o", "one", "--json", cwd=project)
    assert first.code == 0, first.err
    meta = json.loads(next((isolated / "layers").glob("*.json")).read_text())
    flip(blob(isolated, meta["blob"]), at=5000)
    second = repro("build", "--image", "-o", "two", "--json", cwd=project)
    assert second.code == 0, second.err
    assert second.json["image"] == first.json["image"]  # the same image, from a rebuilt layer
    assert "failed its digest; it is built again" in second.err
    assert (project / "one.tar").read_bytes() == (project / "two.tar").read_bytes()
    sound(project)


@pytest.mark.parametrize("change", ["edit", "add", "remove", "bytecode", "unseal"])
def test_a_changed_env_is_rebuilt_never_used(project: Path, isolated: Path, change: str) -> None:
    built = repro("build", "--json", cwd=project).json
    site = Path(built["path"]) / "lib/python3.11/site-packages/numpy"
    os.chmod(site, 0o755)  # noqa: S103  (undoing the seal, as an attacker would)
    if change == "bytecode":  # what Python runs: the build compiled every module
        pyc = next((site / "__pycache__").glob("version.cpython-311.pyc"))
        os.chmod(pyc, 0o644)
        pyc.write_bytes(pyc.read_bytes() + b"\0")
    elif change == "unseal":  # a tampered env whose manifest lost its seal is not re-sealed
        (site / "sitecustomize.py").write_text("print('evil')\n")
        manifest = Path(built["path"]) / "repro-env.json"
        data = json.loads(manifest.read_text())
        del data["tree"], data["fingerprint"]
        manifest.write_text(json.dumps(data))
    elif change == "edit":
        os.chmod(site / "version.py", 0o644)
        (site / "version.py").write_text("version = 'evil'\n")
    elif change == "add":
        (site / "sitecustomize.py").write_text("print('evil')\n")
    else:
        os.chmod(site / "version.py", 0o644)
        (site / "version.py").unlink()
    again = repro("build", "--json", cwd=project)
    assert again.code == 0, again.err
    assert again.json["cached"] is False
    assert ("was changed after it was built" in again.err
            or "it has no seal" in again.err), again.err
    assert not (Path(again.json["path"]) / "lib/python3.11/site-packages/numpy/sitecustomize.py"
                ).exists()
    sound(project)


# -- store files written by hand: damage, never a path out of the store --------------------
def test_digests_read_from_store_files_never_name_a_path_outside(
    project: Path, isolated: Path, tmp_path: Path,
) -> None:
    first = repro("run", "--json", cwd=project).json
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "important.txt").write_text("precious")
    key = "ab" * 32
    (isolated / "runs" / key).write_text(f"blake3:..//{victim}/important.txt")
    shown = repro("show", key[:10], cwd=project)
    assert shown.code == 3, shown.err
    assert "should name a record" in shown.err and "Traceback" not in shown.err
    odd = next((isolated / "by-recipe").iterdir()) / "..cache"
    odd.touch()
    listed = repro("cache", "verify", "--json", cwd=project)
    assert listed.code == 1, listed.err
    problems = {p["path"]: p["problem"] for p in listed.json["problems"]}
    assert problems[str(odd)] == "an index entry whose name is not a record digest"
    assert "should name a record" in problems[str(isolated / "runs" / key)]
    for args in (["cache", "gc", "--older-than", "0", "--dry-run"],
                 ["cache", "gc", "--older-than", "0"]):
        gc = repro(*args, cwd=project)
        assert gc.code == 0, gc.err
    assert (victim / "important.txt").read_text() == "precious"
    assert not odd.exists()
    assert first["outputs"]


def test_gc_refuses_a_store_with_links_out_of_it(project: Path, isolated: Path,
                                                 tmp_path: Path) -> None:
    assert repro("run", cwd=project).code == 0
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "99999-report.csv").write_text("data")
    tmp = isolated / "objects" / "tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.symlink_to(victim)
    gc = repro("cache", "gc", "--older-than", "0", cwd=project)
    assert gc.code == 3, gc.err
    assert "is a link" in gc.err and str(tmp) in gc.err  # refused before anything is read
    listed = repro("cache", "verify", "--repair", "--json", cwd=project)
    assert listed.code == 1
    assert [p["path"] for p in listed.json["problems"]] == [str(tmp)]
    assert (victim / "99999-report.csv").read_text() == "data"
    assert repro("cache", "gc", "--older-than", "0", cwd=project).code == 0
    assert (victim / "99999-report.csv").read_text() == "data"


def test_a_pointer_to_another_keys_record_is_never_an_answer(
    project: Path, isolated: Path,
) -> None:
    seven = repro("run", "--seed", "7", "--json", cwd=project).json
    eight = repro("run", "--seed", "8", "--json", cwd=project).json
    pointers = isolated / "runs"
    seven_key, eight_key = (r["run_key"].removeprefix("blake3:") for r in (seven, eight))
    shutil.copy(pointers / eight_key, pointers / seven_key)
    listed = repro("cache", "verify", "--json", cwd=project)
    assert listed.code == 1
    assert any("the answer of run key" in p["problem"] for p in listed.json["problems"])
    again = repro("run", "--seed", "7", "--json", cwd=project)
    assert again.code == 0, again.err
    assert again.json["cached"] is False  # trained again: seed 8's model is not seed 7's
    assert "the pointer is damaged" in again.err
    assert hashing.file_digest(project / "model.npz") == seven["outputs"][0]["digest"]


def test_special_and_malformed_store_entries_are_listed_never_read(
    project: Path, isolated: Path,
) -> None:
    assert repro("run", cwd=project).code == 0
    zero = isolated / "objects" / "ab" / ("c" * 62)
    zero.parent.mkdir(exist_ok=True)
    zero.symlink_to("/dev/zero")
    fifo = isolated / "objects" / "ab" / ("d" * 62)
    os.mkfifo(fifo)
    alias = isolated / "sha256" / ("e" * 64)
    alias.parent.mkdir(exist_ok=True)
    alias.write_bytes(b"\xff\xfe")
    folder_pointer = isolated / "runs" / ("f" * 64)
    folder_pointer.mkdir()
    listed = repro("cache", "verify", "--json", cwd=project, timeout=120)
    assert listed.code == 1, listed.err
    assert {str(zero), str(fifo), str(alias), str(folder_pointer)} <= {
        p["path"] for p in listed.json["problems"]}
    assert repro("show", "f" * 10, cwd=project).code == 3
    before = sorted(str(p) for p in isolated.rglob("*"))
    dry = repro("cache", "gc", "--older-than", "0", "--dry-run", "--json", cwd=project)
    assert dry.code == 0, dry.err
    assert sorted(str(p) for p in isolated.rglob("*")) == before  # a dry run changes nothing
    assert repro("cache", "verify", "--repair", cwd=project, timeout=120).code == 1
    sound(project)


def test_gc_dry_run_never_quarantines(project: Path, isolated: Path) -> None:
    first = repro("run", "--json", cwd=project).json
    record = blob(isolated, first["record"])
    flip(record, at=20)
    damaged = record.read_bytes()
    assert repro("cache", "gc", "--dry-run", cwd=project).code == 0
    assert record.read_bytes() == damaged
    assert not (isolated / "quarantine").exists()


HOLD = """
import sys, time
from pathlib import Path
from builder import leases
fd = leases.hold(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(600)
"""


def test_gc_leaves_what_a_live_writer_holds_whatever_its_name_says(
    project: Path, isolated: Path,
) -> None:
    """A writer is known by its lock, not a pid in a name: in another pid namespace (a
    container sharing the store) the pid means nothing."""
    assert repro("build", cwd=project).code == 0
    temp = isolated / "objects" / "tmp" / "4194303-notmine"  # a pid no process here has
    temp.parent.mkdir(parents=True, exist_ok=True)
    temp.write_bytes(b"half a blob")
    staging = isolated / "envs" / ".tmp-0123456789ab-4194303-x"
    staging.mkdir()
    holders = [subprocess.Popen([sys.executable, "-c", HOLD, str(p)], stdout=subprocess.PIPE,
                                text=True, cwd=Path(__file__).parents[2]) for p in (temp, staging)]
    try:
        for h in holders:
            assert h.stdout is not None and h.stdout.readline() == "held\n"
        gc = repro("cache", "gc", "--older-than", "0", "--json", cwd=project)
        assert gc.code == 0, gc.err
        assert temp.exists() and staging.exists()
    finally:
        for h in holders:
            h.kill()
            h.communicate()
    gc = repro("cache", "gc", "--older-than", "0", "--json", cwd=project)
    assert str(temp) in gc.json["removed"] and str(staging) in gc.json["removed"]
    assert not temp.exists() and not staging.exists()


def test_a_stat_cache_entry_that_lies_is_found_and_forgotten(project: Path, isolated: Path) -> None:
    import sqlite3

    first = repro("run", "--json", cwd=project).json
    data = project / "data" / "train.csv"
    lines = data.read_text().splitlines()
    data.write_text("\n".join([*lines[:-1], lines[1]]) + "\n")  # a changed row
    st = data.stat()
    db = sqlite3.connect(isolated / "cache" / "stat.sqlite")
    with db:  # the new stat given the old contents' digest, as a hand would
        db.execute("UPDATE stat SET key = ? WHERE path = ?",
                   (f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_ctime_ns}", str(data)))
    db.close()
    listed = repro("cache", "verify", "--repair", "--json", cwd=project)
    assert listed.code == 1, listed.err
    assert [p["path"] for p in listed.json["problems"]] == [str(data)]
    again = repro("run", "--json", cwd=project)
    assert again.code == 0, again.err
    assert again.json["cached"] is False
    assert again.json["run_key"] != first["run_key"]


WRITES_ITS_ENV = '''
import json, os, sys
site = [p for p in sys.path if p.endswith("site-packages")][0]
open(os.path.join(site, "planted.py"), "w").write("x = 1")
open("model.npz", "w").write("m")
json.dump({"accuracy": 1.0}, open("metrics.json", "w"))
'''


def test_a_run_that_writes_into_its_env_is_never_its_keys_answer(project: Path) -> None:
    (project / "train.py").write_text(WRITES_ITS_ENV)
    r = repro("run", cwd=project, env={"REPRO_SANDBOX": "folder"})  # bwrap: the env is read-only
    assert r.code == 3
    assert "was changed after it was built" in r.err
    assert "the run is not recorded as its key's answer" in r.err
    assert repro("lookup", cwd=project).code == 1


# -- the kill harness ------------------------------------------------------------------------
CASES = [
    (["build"], ["env-installing", "blob-temp-written", "blob-renamed", "env-before-publish"]),
    (["run"], ["run-trained", "blob-temp-written", "blob-renamed", "record-stored"]),
    (["build", "--image", "-o", "image"], ["layer-writing", "blob-renamed",
                                           "image-before-index"]),
    (["cache", "gc", "--older-than", "0"], ["gc-removing"]),
]
KILLS = [(args, point) for args, points in CASES for point in points]


@pytest.mark.parametrize(("args", "point"), KILLS, ids=[f"{a[0]}{len(a)}-{p}" for a, p in KILLS])
def test_a_kill_at_each_fault_point_leaves_a_sound_store(
    project: Path, isolated: Path, tmp_path: Path, args: list[str], point: str,
) -> None:
    if args[0] == "run":
        assert repro("build", "-q", cwd=project).code == 0  # the run's own points come first
    if args[0] == "cache":
        assert repro("run", "-q", cwd=project).code == 0
        dead = isolated / "envs" / ".tmp-0123456789ab-dead"  # something for gc to remove
        dead.mkdir()
        os.utime(dead, (0, 0))
    log = tmp_path / "faults.log"
    killed = subprocess.run([sys.executable, "-m", "builder", *args], cwd=project,
                            env={**os.environ, "REPRO_FAULT": point, "REPRO_FAULT_LOG": str(log)},
                            capture_output=True, text=True, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert log.read_text().splitlines() == [point]  # it got there, and died there
    sound(project)
    done = repro(*args, cwd=project)
    assert done.code == 0, done.err
    sound(project)
    assert repro("cache", "gc", cwd=project).code == 0
    assert leftovers(isolated) == []


def test_kills_at_random_moments_of_a_run_leave_a_sound_store(
    project: Path, isolated: Path,
) -> None:
    assert repro("build", "-q", cwd=project).code == 0
    chance = random.Random(20261128)  # noqa: S311  (when to kill, not a secret)
    for _ in range(6):
        child = subprocess.Popen([sys.executable, "-m", "builder", "run", "--no-cache", "-q"],
                                 cwd=project, env={**os.environ, "REPRO_FAULT": "delay"},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(chance.uniform(0.05, 1.2))
        child.kill()
        child.wait()
    sound(project)
    assert repro("run", "-q", cwd=project).code == 0
    assert repro("cache", "gc", cwd=project).code == 0
    assert leftovers(isolated) == []
    sound(project)


# -- gc under use ----------------------------------------------------------------------------
SLOW_TRAIN = '''
import json, time
time.sleep(4)
open("model.npz", "w").write("slow")
json.dump({"accuracy": 1.0}, open("metrics.json", "w"))
'''


def test_gc_under_a_running_build_and_a_running_training_removes_neither(
    project: Path, tmp_path: Path, isolated: Path,
) -> None:
    slow = shutil.copytree(project, tmp_path / "slow")
    (slow / "train.py").write_text(SLOW_TRAIN)
    assert repro("build", "-q", cwd=slow).code == 0
    other = shutil.copytree(project, tmp_path / "other")  # another env, built meanwhile
    recipe = other / "repro.toml"
    recipe.write_text(recipe.read_text().replace('dependencies = ["numpy>=2,<3"]',
                                                 'dependencies = ["numpy>=2,<3", "six"]'))
    assert repro("lock", "-q", cwd=other).code == 0
    training = subprocess.Popen([sys.executable, "-m", "builder", "run", "--json"], cwd=slow,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    building = subprocess.Popen([sys.executable, "-m", "builder", "build", "--json"],
                                cwd=other, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    sweeps = 0
    while training.poll() is None or building.poll() is None:
        assert repro("cache", "gc", "--older-than", "0", cwd=project).code == 0
        sweeps += 1
    trained, built = training.communicate(), building.communicate()
    assert training.returncode == 0, trained[1]
    assert building.returncode == 0, built[1]
    assert sweeps >= 3
    record = json.loads(trained[0])
    assert repro("show", record["run_key"], cwd=slow).code == 0
    sound(project)
    assert repro("cache", "gc", "--older-than", "0", cwd=project).code == 0  # nothing runs
    (slow / "model.npz").unlink()
    restored = repro("run", "--json", cwd=slow)
    assert restored.json["cached"] is True
    assert (slow / "model.npz").read_text() == "slow"


# -- a full disk -----------------------------------------------------------------------------
def tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")


def clean_failure(r: Result) -> None:
    assert r.code == 3, r.err
    assert "Traceback" not in r.err


@pytest.mark.skipif(shutil.which("mount") is None, reason="needs mount(8) for a small tmpfs")
def test_a_full_disk_during_a_build_and_during_storing_is_exit_3_and_reclaimed(
    project: Path, tmp_path: Path,
) -> None:
    small = tmp_path / "small-store"
    tmpfs(small, "16m")
    try:
        env = {"REPRO_HOME": str(small)}
        before = hashing.tree_digest(project, hashing.walk_files(project))
        clean_failure(repro("build", cwd=project, env=env))
        assert hashing.tree_digest(project, hashing.walk_files(project)) == before
        sound_here = repro("cache", "verify", "--json", cwd=project, env=env)
        assert sound_here.code == 0, sound_here.out
        assert repro("cache", "gc", cwd=project, env=env).code == 0
        assert leftovers(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)

    roomy = tmp_path / "roomy-store"
    assert repro("build", "-q", cwd=project, env={"REPRO_HOME": str(roomy)}).code == 0
    used = sum(p.stat().st_size for p in roomy.rglob("*") if p.is_file())
    shutil.rmtree(roomy)
    tmpfs(roomy, f"{used // 2**20 + 40}m")  # the env fits; a 30 MiB output, twice, does not
    try:
        env = {"REPRO_HOME": str(roomy)}
        assert repro("build", "-q", cwd=project, env=env).code == 0
        train = project / "train.py"
        train.write_text(train.read_text().replace(
            "    save_npz(args.out, {",
            "    open('big.bin', 'wb').write(bytes(30 << 20))\n    save_npz(args.out, {"))
        recipe = project / "repro.toml"
        recipe.write_text(recipe.read_text().replace('outputs = ["model.npz"]',
                                                     'outputs = ["model.npz", "big.bin"]'))
        before = hashing.tree_digest(project, hashing.walk_files(project))
        r = repro("run", cwd=project, env=env)
        clean_failure(r)
        assert hashing.tree_digest(project, hashing.walk_files(project)) == before
        assert repro("cache", "verify", "-q", cwd=project, env=env).code == 0
        assert repro("cache", "gc", cwd=project, env=env).code == 0
        assert leftovers(roomy) == []
    finally:
        subprocess.run(["umount", str(roomy)], check=False)


# -- hostile bases ---------------------------------------------------------------------------
def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def crafted_base(folder: Path, layer: bytes, *, diff_id: str | None = None,
                 size: int | None = None, env: list[str] | None = None,
                 digest: str | None = None) -> str:
    """An OCI layout holding one image with one layer, as an attacker would write it."""
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Env": env or ["PATH=/usr/bin"]},
                         "rootfs": {"type": "layers",
                                    "diff_ids": [diff_id or "sha256:" + "0" * 64]}}).encode()
    layer_digest = digest or _sha(layer)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": len(layer) if size is None else size}],
    }).encode()
    for data, name in ((config, _sha(config)), (manifest, _sha(manifest)), (layer, layer_digest)):
        (blobs / name.removeprefix("sha256:")).write_bytes(data)
    (folder / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return _sha(manifest)


def gzip_bomb(target: Path, uncompressed: int) -> bytes:
    """A gzip of a tar holding one file of zeros: tiny on disk, huge when opened."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
        info = tarfile.TarInfo("zeros")
        info.size = uncompressed
        gz.write(info.tobuf(format=tarfile.PAX_FORMAT))
        zeros = bytes(1 << 20)
        for _ in range(uncompressed >> 20):
            gz.write(zeros)
    return buf.getvalue()


def many_files(count: int) -> tuple[bytes, str]:
    """A gzip of a tar of `count` empty files (small on disk, a long listing), and its diff_id."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(count):
            tar.addfile(tarfile.TarInfo(f"d{i % 1000}/f{i}"))
    data = raw.getvalue()
    return gzip.compress(data, compresslevel=1, mtime=0), _sha(data)


def build_on(project: Path, base: Path, digest: str,
             env: dict[str, str] | None = None) -> tuple[Result, int]:
    """`repro build --image` on a base: the result, and its peak RSS in KiB (measured by a
    parent that waits for it alone)."""
    recipe = project / "repro.toml"
    recipe.write_text(recipe.read_text().split("\n[image]")[0]
                      + f'\n[image]\nbase = "oci:{base}@{digest}"\n')
    assert repro("lock", "-q", cwd=project).code == 0
    probe = subprocess.run(
        [sys.executable, "-c",
         "import json, resource, subprocess, sys\n"
         "done = subprocess.run([sys.executable, '-m', 'builder', 'build', '--image', '-o', "
         "sys.argv[1]], capture_output=True, text=True)\n"
         "print(json.dumps([done.returncode, done.stdout, done.stderr, "
         "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))",
         str(project / "image")],
        cwd=project, capture_output=True, text=True, check=True,
        env={**os.environ, **(env or {})})
    code, out, err, peak = json.loads(probe.stdout)
    return Result(code, out, err), peak


def test_hostile_bases_are_refused_with_memory_bounded(
        project: Path, tmp_path: Path, isolated: Path) -> None:
    bomb = gzip_bomb(tmp_path, 1 << 30)  # 1 GiB of zeros in about a megabyte
    assert len(bomb) < 2 << 20
    digest = crafted_base(tmp_path / "bomb", bomb)
    limited, peak = build_on(project, tmp_path / "bomb", digest,
                             {"REPRO_MAX_LAYER_BYTES": str(100 << 20)})
    assert limited.code == 2, limited.err
    assert "decompresses past 104857600 bytes (REPRO_MAX_LAYER_BYTES)" in limited.err
    assert peak < 300 * 1024, f"peak RSS {peak} KiB"
    whole, peak = build_on(project, tmp_path / "bomb", digest)  # all 1 GiB, read as a stream
    assert whole.code == 2, whole.err
    assert "does not match its diff_id" in whole.err
    assert peak < 300 * 1024, f"peak RSS {peak} KiB"
    assert not (project / "image").exists()

    many, diff_id = many_files(300_000)  # a listing that once grew memory without bound
    digest = crafted_base(tmp_path / "many", many, diff_id=diff_id)
    listed, peak = build_on(project, tmp_path / "many", digest)
    assert listed.code == 2, listed.err
    assert "no Python interpreter" in listed.err
    assert peak < 100 * 1024, f"peak RSS {peak} KiB"  # 29 MB here; 175 MB when names were kept
    scans = list((isolated / "bases").glob("*.json"))
    assert scans and all(p.stat().st_size < 4096 for p in scans)  # what matters, not all

    layer = gzip.compress(b"not much", mtime=0)
    cases = {
        "size": ({"size": 10**15}, f"is {len(layer)} bytes; its descriptor says 10000000000"),
        "env": ({"env": ["NOEQUALS"]}, "config.Env entries must be strings NAME=VALUE"),
        "digest": ({"digest": "sha256:" + "ab" * 32}, "arrived as sha256:"),
    }
    for name, (crafted, message) in cases.items():
        base = tmp_path / name
        d = crafted_base(base, layer, **crafted)  # type: ignore[arg-type]
        r, _ = build_on(project, base, d)
        assert r.code == 2, (name, r.err)
        assert message in r.err, (name, r.err)
        assert "Traceback" not in r.err
        assert not (project / "image").exists()


# -- a second attacker's pass: what runs beside the env, notes that lie, what never ends ---
def test_a_planted_runtime_file_never_reaches_a_run(project: Path, isolated: Path) -> None:
    first = repro("run", "--json", cwd=project).json
    runtime = next((isolated / "runtime").iterdir())
    (runtime / "sitecustomize.py").write_text(
        "import atexit\natexit.register(lambda: open('model.npz', 'ab').write(b'EVIL'))\n")
    again = repro("run", "--no-cache", "--json", cwd=project)
    assert again.code == 0, again.err
    assert "held more or other than repro's runtime" in again.err
    assert again.json["outputs"] == first["outputs"]
    assert not (project / "model.npz").read_bytes().endswith(b"EVIL")
    sound(project)


def test_an_env_edit_that_keeps_size_and_mtime_is_still_seen(project: Path,
                                                            isolated: Path) -> None:
    first = repro("run", "--json", cwd=project).json
    version = Path(repro("build", "--json", cwd=project).json["path"]) \
        / "lib/python3.11/site-packages/numpy/version.py"
    st = version.stat()
    os.chmod(version.parent, 0o755)  # noqa: S103  (undoing the seal, as an attacker would)
    os.chmod(version, 0o644)
    text = version.read_bytes()
    version.write_bytes(text[:-4] + b"#EVL")  # the same size
    os.chmod(version, st.st_mode)
    os.chmod(version.parent, 0o555)  # noqa: S103  (as the seal left it)
    os.utime(version, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same mtime
    again = repro("run", "--no-cache", "--json", cwd=project)
    assert again.code == 0, again.err
    assert "was changed after it was built" in again.err
    assert again.json["outputs"] == first["outputs"]


def test_a_layer_note_that_lies_is_rebuilt(project: Path, isolated: Path) -> None:
    first = repro("build", "--image", "-o", "one", "--json", cwd=project)
    assert first.code == 0, first.err
    for note in (isolated / "layers").glob("*.json"):
        data = json.loads(note.read_text())
        note.write_text(json.dumps({**data, "digest": "sha256:" + "cd" * 32,
                                    "diff_id": "sha256:" + "ab" * 32}))
    second = repro("build", "--image", "-o", "two", "--json", cwd=project)
    assert second.code == 0, second.err
    assert second.json["image"] == first.json["image"]
    assert (project / "one.tar").read_bytes() == (project / "two.tar").read_bytes()


def test_fifos_and_folders_in_the_stores_files_never_hang_a_command(
    project: Path, isolated: Path,
) -> None:
    first = repro("run", "--json", cwd=project).json
    assert repro("build", "--image", "-o", "one", cwd=project).code == 0
    pointer = isolated / "runs" / first["run_key"].removeprefix("blake3:")
    pointer.unlink()
    os.mkfifo(pointer)
    os.mkfifo(next((isolated / "sha256").iterdir()).with_name("f" * 64))
    note = next((isolated / "layers").glob("*.json"))
    note.unlink()
    note.mkdir()
    (isolated / "leases").mkdir(exist_ok=True)
    os.mkfifo(isolated / "leases" / "1-aa.lease")
    (isolated / "leases" / "999-dead.lease").write_text("blob x\n")
    for args in (["run", "--json"], ["build", "--image", "-o", "two"],
                 ["cache", "gc", "--dry-run", "--older-than", "0"]):
        done = repro(*args, cwd=project, timeout=300)
        assert done.code == 0, (args, done.err)
    assert (isolated / "leases" / "999-dead.lease").exists()  # a dry run removes nothing
    listed = repro("cache", "verify", "--repair", "--json", cwd=project, timeout=300)
    assert listed.code == 1, listed.err
    assert repro("cache", "gc", "--older-than", "0", cwd=project, timeout=300).code == 0
    sound(project)


def test_a_link_planted_as_a_lock_file_is_refused(project: Path, isolated: Path,
                                                   tmp_path: Path) -> None:
    built = repro("build", "--json", cwd=project).json
    use = isolated / "locks" / f"{built['env'].removeprefix('blake3:')}.use"
    use.unlink(missing_ok=True)
    use.symlink_to(tmp_path / "created-by-repro")
    again = repro("build", cwd=project)
    assert again.code == 3, again.err
    assert "is a link" in again.err
    assert not (tmp_path / "created-by-repro").exists()
    outside = tmp_path / "outside"
    outside.mkdir()
    locks = isolated / "locks"
    shutil.rmtree(locks)
    locks.symlink_to(outside)
    refused = repro("run", cwd=project)
    assert refused.code == 3 and "is a link" in refused.err
    assert list(outside.iterdir()) == []


@pytest.mark.skipif(shutil.which("chattr") is None, reason="needs chattr(1) (e2fsprogs)")
def test_what_could_not_be_removed_is_said_never_counted_as_done(
    project: Path, isolated: Path,
) -> None:
    """An entry that cannot be removed (immutable here; a read-only store alike): verify
    --repair and gc say so per path, and gc exits 3."""
    assert repro("run", cwd=project).code == 0
    stray = isolated / "envs" / ("e" * 64)
    (stray / "lib").mkdir(parents=True)
    (stray / "lib" / "x").write_text("x")
    locked = subprocess.run(["chattr", "+i", str(stray / "lib")], capture_output=True,
                            text=True, check=False)
    if locked.returncode != 0:
        pytest.skip(f"chattr +i does not work on this file system: {locked.stderr.strip()}")
    try:
        fixed = repro("cache", "verify", "--repair", "--json", cwd=project)
        assert fixed.code == 1, fixed.err
        [problem] = fixed.json["problems"]
        assert problem["path"] == str(stray)
        assert problem["repair"].startswith("could not repair")
        gc = repro("cache", "gc", "--older-than", "0", "--json", cwd=project)
        assert gc.code == 3, gc.err
        assert [f["path"] for f in gc.json["failed"]] == [str(stray)]
        assert str(stray) not in gc.json["removed"]
    finally:
        subprocess.run(["chattr", "-i", str(stray / "lib")], check=False)
    assert repro("cache", "gc", "--older-than", "0", cwd=project).code == 0
    assert not stray.exists()
