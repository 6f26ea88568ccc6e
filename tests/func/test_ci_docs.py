"""docs/ci.md: both workflows are valid YAML, and their repro commands pass on this repository."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import MACHINE_WHEELS, ROOT, committed_baseline_runs
from tests.func.helpers import repro

DOC = ROOT / "docs" / "ci.md"


def workflows() -> list[dict]:  # type: ignore[type-arg]
    return [yaml.safe_load(block)
            for block in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.DOTALL)]


def commands(node: object) -> list[str]:
    """Every `repro …` command line in a workflow (GitHub `run:` steps, GitLab `script:`)."""
    if isinstance(node, dict):
        return [c for v in node.values() for c in commands(v)]
    if isinstance(node, list):
        return [c for v in node for c in commands(v)]
    return [node] if isinstance(node, str) and node.startswith("repro ") else []


def test_both_workflows_parse_and_check_locks_on_change_and_verify_on_schedule() -> None:
    github, gitlab = workflows()
    assert set(github["jobs"]) == {"train", "reuse", "lock-check", "verify"}
    assert github["jobs"]["reuse"]["needs"] == "train"
    assert gitlab["reuse"]["needs"] == ["train"]
    triggers = github.get("on", github.get(True))  # YAML 1.1 (PyYAML) reads `on` as true
    assert "schedule" in triggers
    assert "repro lock --check" in commands(github["jobs"]["lock-check"])
    assert "repro verify --report verify.md" in commands(github["jobs"]["verify"])
    assert "repro lock --check" in gitlab["lock-check"]["script"]
    assert gitlab["verify"]["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "schedule"'}]
    assert commands(github) == commands(gitlab)


@pytest.mark.network
@pytest.mark.skipif(not Path(MACHINE_WHEELS or "/nonexistent").is_dir(),
                    reason="the torch example needs the machine's torch CPU wheel folder")
def test_the_workflow_commands_pass_on_this_repository(tmp_path: Path) -> None:
    committed_baseline_runs(ROOT)  # `repro verify` needs a baseline made on this class
    committed_baseline_runs(ROOT / "examples" / "torch-mlp")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("repro.toml", "train.py", "data", "lockfiles"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, checkout / name)
    shutil.copytree(ROOT / "examples" / "torch-mlp", checkout / "examples" / "torch-mlp",
                    ignore=shutil.ignore_patterns("model.pt", "metrics.json"))
    github, _ = workflows()
    for line in commands(github["jobs"]["lock-check"]) + commands(github["jobs"]["verify"]):
        r = repro(*shlex.split(line)[1:], cwd=checkout, env={"REPRO_FIND_LINKS": MACHINE_WHEELS})
        assert r.code == 0, f"{line}: {r.err}"
    assert "**reproduced**" in (checkout / "verify-torch.md").read_text()


@pytest.mark.skipif(shutil.which("docker-registry") is None,
                    reason="docker-registry (Debian package) is installed by .ci/run")
def test_the_train_job_pushes_and_the_reuse_job_on_an_empty_store_trains_nothing(
        tmp_path: Path) -> None:
    from tests.func.bases import start_registry

    github, gitlab = workflows()
    for job in ("train", "reuse"):
        assert commands(github["jobs"][job]) == commands(gitlab[job])
    host, server = start_registry(tmp_path / "registry")
    try:
        key = tmp_path / "ci.key"
        public = repro("key", "generate", key).out.strip().splitlines()[-1]
        remote = {"REPRO_REMOTE": f"{host}/repro-cache"}
        jobs = {"train": {**remote, "REPRO_SIGNING_KEY": str(key)},
                "reuse": {**remote, "REPRO_TRUSTED_KEYS": public}}
        for job, variables in jobs.items():  # each on a fresh runner: checkout and store new
            checkout = tmp_path / job
            checkout.mkdir()
            for name in ("repro.toml", "train.py", "lockfiles", "data"):
                src = ROOT / name
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, checkout / name)
            env = {**variables, "REPRO_HOME": str(tmp_path / f"{job}-store")}
            for line in commands(github["jobs"][job]):
                r = repro(*shlex.split(line)[1:], "--json", cwd=checkout, env=env)
                assert r.code == 0, f"{line}: {r.err}"
                if line.startswith("repro run"):
                    assert r.json["source"] == ("trained" if job == "train" else "remote")
        assert not (tmp_path / "reuse-store" / "envs").exists()  # nothing was built to train
    finally:
        server.terminate()
        server.wait()
