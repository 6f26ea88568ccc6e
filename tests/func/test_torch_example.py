"""examples/torch-mlp: torch from the machine's wheel folder, bitwise-equal weights twice."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import MACHINE_WHEELS, ROOT, committed_baseline_runs
from tests.func.helpers import repro

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(
        not (Path(MACHINE_WHEELS or "/nonexistent") / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").is_file(),
        reason="the torch 2.13.0 CPU wheel is not in $PIP_FIND_LINKS on this machine; PyPI's "
               "torch is a multi-GB CUDA build that tests must not download",
    ),
]

EXAMPLE = ROOT / "examples" / "torch-mlp"


def test_the_committed_lock_holds_no_host_path_and_is_fresh(tmp_path: Path) -> None:
    text = (EXAMPLE / "lockfiles/torch-mlp/pylock.toml").read_text()
    assert "file:" not in text
    assert MACHINE_WHEELS not in text
    assert "https://download.pytorch.org/whl/cpu/torch-2.13.0%2Bcpu-cp311-cp311-" in text
    copy = shutil.copytree(EXAMPLE, tmp_path / "example")
    relocked = repro("lock", "--find-links", MACHINE_WHEELS, "--json", cwd=copy)
    assert relocked.code == 0, relocked.err
    assert relocked.json["changed"] is False


def test_two_fresh_runs_in_different_places_give_the_same_weights(tmp_path: Path) -> None:
    results = []
    for name in ("first", "second"):
        copy = shutil.copytree(EXAMPLE, tmp_path / name / "torch-mlp")
        r = repro("run", "--find-links", MACHINE_WHEELS, "--json", cwd=copy,
                  env={"REPRO_HOME": str(tmp_path / name / "store")})
        assert r.code == 0, r.err
        assert r.json["cached"] is False
        results.append((copy, r.json))
    (a_dir, a), (b_dir, b) = results
    assert a["run_key"] == b["run_key"]
    assert a["metrics"] == b["metrics"]
    assert a["metrics"]["accuracy"] > 0.9
    assert a["outputs"] == [{**b["outputs"][0], "object": a["outputs"][0]["object"]}]
    assert (a_dir / "model.pt").read_bytes() == (b_dir / "model.pt").read_bytes()

    found = repro("lookup", b_dir / "model.pt", "--json", cwd=a_dir,
                  env={"REPRO_HOME": str(tmp_path / "first" / "store")})
    assert found.code == 0
    assert found.json["runs"][0]["run_key"] == a["run_key"]


def test_verify_reproduces_the_committed_baseline_bit_for_bit(tmp_path: Path) -> None:
    committed_baseline_runs(EXAMPLE)
    copy = shutil.copytree(EXAMPLE, tmp_path / "example")
    r = repro("verify", "--find-links", MACHINE_WHEELS, "--json", cwd=copy)
    assert r.code == 0, r.err + r.out
    assert r.json["verdict"] == "reproduced"
    assert r.json["standard"] == "bitwise"
    assert r.json["checks"] == [{**r.json["checks"][0], "ok": True, "detail": "identical"}]
    recipe = copy / "repro.toml"
    recipe.write_text(recipe.read_text().replace("seed = 1234", "seed = 1235"))
    drift = repro("verify", "--find-links", MACHINE_WHEELS, "--json", cwd=copy)
    assert drift.code == 1
    assert [c["kind"] for c in drift.json["causes"]] == ["seed"]
    tensors = {t["name"]: t for t in drift.json["checks"][0]["tensors"]["tensors"]}
    assert tensors["0.weight"]["shape"] == [64, 2]  # the torch state dict, tensor by tensor
    assert all(t["differ"] > 0 for t in tensors.values())


def test_the_torch_image_has_one_digest_across_folders_stores_and_umasks(tmp_path: Path) -> None:
    import os

    digests = []
    for i, umask in enumerate((0o022, 0o077)):
        copy = shutil.copytree(EXAMPLE, tmp_path / f"copy{i}" / "torch-mlp",
                               ignore=shutil.ignore_patterns("model.pt", "metrics.json"))
        old = os.umask(umask)
        try:
            r = repro("build", "--image", "--find-links", MACHINE_WHEELS, "-o",
                      tmp_path / f"img{i}", "--json", cwd=copy,
                      env={"REPRO_HOME": str(tmp_path / f"store{i}")})
        finally:
            os.umask(old)
        assert r.code == 0, r.err
        digests.append(r.json["image"])
        torch_layer = next(x for x in r.json["layers"] if x["content"].startswith("torch "))
        assert torch_layer["size"] > 100_000_000
    assert digests[0] == digests[1]


@pytest.mark.skipif(shutil.which("docker-registry") is None,
                    reason="docker-registry (Debian package) is installed by .ci/run")
def test_trained_in_one_store_pushed_and_answered_in_another_from_the_remote(
        tmp_path: Path) -> None:
    from tests.func.bases import start_registry

    host, server = start_registry(tmp_path / "registry")
    remote = f"{host}/team/cache"
    try:
        key = tmp_path / "ci.key"
        public = repro("key", "generate", key).out.strip().splitlines()[-1]
        first = shutil.copytree(EXAMPLE, tmp_path / "a" / "torch-mlp",
                                ignore=shutil.ignore_patterns("model.pt", "metrics.json"))
        a = repro("run", "--find-links", MACHINE_WHEELS, "--push", "--require-remote",
                  "--remote", remote, "--sign-key", key, "--json", cwd=first,
                  env={"REPRO_HOME": str(tmp_path / "store-a")})
        assert a.code == 0, a.err
        assert a.json["source"] == "trained"

        second = shutil.copytree(first, tmp_path / "b" / "torch-mlp",
                                 ignore=shutil.ignore_patterns("model.pt", "metrics.json"))
        store_b = {"REPRO_HOME": str(tmp_path / "store-b"), "REPRO_REMOTE": remote,
                   "REPRO_TRUSTED_KEYS": public}
        b = repro("run", "--json", cwd=second, env=store_b)  # no wheels: nothing to install
        assert b.code == 0, b.err
        assert b.json["source"] == "remote"
        assert b.json["record"] == a.json["record"]
        assert (second / "model.pt").read_bytes() == (first / "model.pt").read_bytes()
        # the training command never ran here: it writes metrics.json (a hit restores only
        # the declared outputs) and it needs the environment, which was never built
        assert not (second / "metrics.json").exists()
        assert not (tmp_path / "store-b" / "envs").exists()

        c = repro("lookup", first / "model.pt", "--json", cwd=second,
                  env={**store_b, "REPRO_HOME": str(tmp_path / "store-c")})
        assert c.code == 0, c.err
        assert c.json["runs"][0]["run_key"] == a.json["run_key"]
    finally:
        server.terminate()
        server.wait()


def test_the_frameworks_facts_are_recorded_and_a_change_verify_sees_is_named(
        tmp_path: Path) -> None:
    copy = shutil.copytree(EXAMPLE, tmp_path / "example")
    # a knob the run key cannot see (a pass-env variable) that turns TF32 on: on a CPU the
    # weights stay the same, but the facts in force differ
    train = copy / "train.py"
    train.write_text(train.read_text().replace(
        "def main() -> None:",
        "def main() -> None:\n    torch.backends.cuda.matmul.allow_tf32 = bool(os.environ.get("
        "'TF32'))", 1))
    recipe = copy / "repro.toml"
    recipe.write_text(recipe.read_text().replace("threads = 1", 'threads = 1\npass-env = ["TF32"]'))
    first = repro("run", "--find-links", MACHINE_WHEELS, "--json", cwd=copy)
    assert first.code == 0, first.err
    shown = repro("show", "--json", cwd=copy).json
    [facts] = shown["framework"]
    assert (facts["torch"], facts["cuda_runtime"], facts["deterministic_algorithms"],
            facts["tf32_matmul"], facts["threads"]) == ("2.13.0+cpu", None, True, False, 1)
    assert facts["devices"] == []  # CUDA was never initialised

    same = repro("verify", "--against", first.json["record"], "--find-links", MACHINE_WHEELS,
                 "--json", cwd=copy)
    assert same.code == 0, same.err
    assert not any("framework" in n for n in same.json["notes"])
    changed = repro("verify", "--against", first.json["record"], "--find-links",
                    MACHINE_WHEELS, "--json", cwd=copy, env={"TF32": "1"})
    assert changed.code == 0, changed.err  # the bytes are the same: a note, not a drift
    [note] = [n for n in changed.json["notes"] if "framework" in n]
    assert "tf32_matmul False → True" in note
