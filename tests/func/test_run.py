"""`repro run | lookup | runs | show | export provenance` on real training, in real envs."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import gen
from tests.func.helpers import repro

pytestmark = pytest.mark.network


def test_default_recipe_trains_then_answers_from_the_store(project: Path) -> None:
    first = repro("run", "--json", cwd=project, env={"SECRET_TOKEN": "hunter2-do-not-record"})
    assert first.code == 0, first.err
    run = first.json
    assert run["cached"] is False
    assert run["metrics"]["accuracy"] > 0.8
    model = project / "model.npz"
    assert run["outputs"][0]["path"] == "model.npz"
    assert Path(run["outputs"][0]["object"]).read_bytes() == model.read_bytes()

    model.unlink()
    second = repro("run", "--json", cwd=project)
    assert second.code == 0, second.err
    assert second.json["cached"] is True
    assert second.json["run_key"] == run["run_key"]
    assert second.json["record"] == run["record"]
    assert model.read_bytes() == Path(run["outputs"][0]["object"]).read_bytes()  # restored
    assert "Running" not in second.err  # nothing was trained

    # The model file names the run that made it; the recipe says it is trained.
    by_file = repro("lookup", "model.npz", "--json", cwd=project)
    assert by_file.code == 0
    assert [r["run_key"] for r in by_file.json["runs"]] == [run["run_key"]]
    by_recipe = repro("lookup", "--json", cwd=project)
    assert by_recipe.code == 0
    assert by_recipe.json["digest"] == run["run_key"]
    by_key = repro("lookup", run["run_key"][7:19], cwd=project)
    assert by_key.code == 0
    assert run["record"] in by_key.out

    # The record: every field, and no secret from the environment.
    shown = repro("show", run["run_key"], "--json", cwd=project).json
    for key in ("run_key", "recipe", "env", "code", "data", "command", "params", "seed",
                "hardware", "software", "started", "ended", "duration", "exit_status",
                "outputs", "metrics", "variables"):
        assert key in shown, key
    assert shown["software"]["packages"] == {"numpy": "2.4.6"}
    assert shown["hardware"]["cpu"]["cores"] >= 1
    assert shown["hardware_class"]["arch"] == shown["hardware"]["arch"]
    assert shown["variables"]["REPRO_SEED"] == "7"
    assert shown["variables"]["PYTHONHASHSEED"] == "7"
    assert "hunter2" not in json.dumps(shown)
    text = repro("show", cwd=project)
    assert text.code == 0
    assert f"run      {run['run_key']}" in text.out
    assert "packages numpy 2.4.6" in text.out

    statement = json.loads(repro("export", "provenance", run["record"], cwd=project).out)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    import hashlib

    assert statement["subject"] == [{
        "name": "model.npz",
        "digest": {"sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
                   "blake3": run["outputs"][0]["digest"][7:]},
    }]
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert {"uri": "pkg:pypi/numpy@2.4.6"}.items() <= next(
        d for d in deps if d.get("uri", "").startswith("pkg:pypi/numpy")).items()
    assert statement["predicate"]["runDetails"]["metadata"]["invocationId"] == run["run_key"]


def test_seed_params_code_and_data_each_change_the_run_key(project: Path) -> None:
    base = repro("run", "--json", cwd=project).json
    seeded = repro("run", "--seed", "8", "--json", cwd=project).json
    assert seeded["cached"] is False
    assert seeded["run_key"] != base["run_key"]
    assert seeded["seed"] == 8
    tuned = repro("run", "-p", "lr=0.25", "--json", cwd=project).json
    assert tuned["params"] == {"lr": 0.25, "epochs": 200}
    assert tuned["run_key"] not in (base["run_key"], seeded["run_key"])
    assert tuned["metrics"] != base["metrics"]  # the override reached the command

    data = project / "data" / "train.csv"
    data.write_text(data.read_text().replace("2.848085", "2.848086"))
    assert repro("run", "--json", cwd=project).json["run_key"] != base["run_key"]
    code = project / "train.py"
    code.write_text(code.read_text() + "\n# a change\n")
    assert repro("lookup", cwd=project).code == 1  # not trained yet with this code
    runs = repro("runs", "--json", cwd=project).json["runs"]
    assert len(runs) == 4
    assert all(r["status"] == "succeeded" for r in runs)


RUNTIME_TRAIN = '''
import json, os, sys
from builder.runtime import log_metrics, params, seed_everything
assert "numpy" not in sys.modules and "torch" not in sys.modules, "runtime imported them"
seed = seed_everything()
import numpy as np, random
assert seed == int(os.environ["REPRO_SEED"]) == 3
expected = np.random.RandomState(3).rand()
assert np.random.rand() == expected
assert random.Random(3).random() == (random.seed(3) or random.random())
p = params()
assert p == {"width": 4, "name": "x", "flag": True}, p
assert os.environ["REPRO_PARAM_WIDTH"] == "4"
log_metrics(loss=0.5)
log_metrics({"accuracy": 0.75})
open("out.bin", "wb").write(bytes(p["width"]))
'''


def _runtime_project(root: Path, script: str = RUNTIME_TRAIN, extra: str = "") -> Path:
    gen(root, {
        "train.py": script,
        "repro.toml": '[recipe]\nname = "rt"\nschema = 1\n[environment]\npython = "3.11"\n'
                      'dependencies = ["numpy==2.4.6"]\n[train]\ncommand = ["python", "train.py"]\n'
                      'seed = 3\nparams = { width = 4, name = "x", flag = true }\n'
                      'outputs = ["out.bin"]\nmetrics = "metrics.json"\n' + extra,
    })
    assert repro("lock", cwd=root).code == 0
    return root


def test_builder_runtime_seeds_passes_params_and_logs_metrics(tmp_path: Path) -> None:
    root = _runtime_project(tmp_path / "rt")
    r = repro("run", "--json", cwd=root)
    assert r.code == 0, r.err
    assert r.json["metrics"] == {"accuracy": 0.75, "loss": 0.5}


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("import sys\nprint('step 1 of 3')\nsys.exit(4)\n",
         r"(?s)exited with status 4.*step 1 of 3.*recorded as blake3:"),
        ("open('metrics.json', 'w').write('{}')\n",
         r"(?s)did not produce the declared output out\.bin.*fix train\.outputs"),
        ("open('out.bin', 'wb').write(b'x')\nopen('metrics.json', 'w').write('{oops')\n",
         r"(?s)metrics\.json is not valid JSON"),
    ],
)
def test_a_failed_run_is_recorded_but_never_answers_its_key(
    tmp_path: Path, script: str, expected: str,
) -> None:
    import re

    root = _runtime_project(tmp_path / "f", script)
    r = repro("run", cwd=root)
    assert r.code == 3
    assert re.search(expected, r.err), r.err
    runs = repro("runs", "--json", cwd=root).json["runs"]
    assert [x["status"] for x in runs] == ["failed"]
    assert repro("lookup", cwd=root).code == 1
    again = repro("run", cwd=root)
    assert again.code == 3  # tried again, not answered from the store
    assert len(repro("runs", "--json", cwd=root).json["runs"]) == 2


def test_bad_run_inputs_are_named(project: Path) -> None:
    r = repro("run", "-p", "lrr=0.1", cwd=project)
    assert r.code == 2
    assert "declares no param `lrr` (did you mean 'lr'?)" in r.err
    r = repro("run", "-p", "epochs=many", cwd=project)
    assert r.code == 2
    assert "--param epochs=many: expected int" in r.err
    (project / "data" / "train.csv").unlink()
    r = repro("run", cwd=project)
    assert r.code == 2
    assert "data.train:" in r.err
    assert "does not exist" in r.err


def test_ctrl_c_during_training_stores_nothing(tmp_path: Path, isolated: Path) -> None:
    root = _runtime_project(
        tmp_path / "slow",
        "import time\nopen('started', 'w').close()\ntime.sleep(60)\n")
    assert repro("build", cwd=root).code == 0
    child = subprocess.Popen([sys.executable, "-m", "builder", "run"], cwd=root,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (root / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 130, err
    assert not (isolated / "runs").exists()
    assert not (isolated / "by-recipe").exists()
    assert repro("lookup", cwd=root).code == 1


def test_the_default_recipe_is_bitwise_across_folders_stores_and_umasks(
    tmp_path: Path, project: Path,
) -> None:
    import os

    other = tmp_path / "elsewhere" / "copy"
    shutil.copytree(project, other)
    first = repro("run", "--json", cwd=project).json
    old = os.umask(0o077)
    try:
        second = repro("run", "--json", cwd=other, env={"REPRO_HOME": str(tmp_path / "store2")})
    finally:
        os.umask(old)
    assert second.code == 0, second.err
    assert second.json["cached"] is False
    assert second.json["run_key"] == first["run_key"]
    assert second.json["outputs"][0]["digest"] == first["outputs"][0]["digest"]
    assert (other / "model.npz").read_bytes() == (project / "model.npz").read_bytes()


def count_lock_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wrap the one reader of lock files; the list grows by one per read."""
    from builder import lock

    reads: list[str] = []
    real = lock.read_lock

    def counted(recipe: Any) -> Any:
        reads.append(recipe.name)
        return real(recipe)

    monkeypatch.setattr(lock, "read_lock", counted)
    return reads


def test_one_run_reads_its_lock_once(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from builder import cli

    reads = count_lock_reads(monkeypatch)
    assert cli.main(["run", "-r", str(project), "-q", "--json"]) == 0
    key = json.loads(capsys.readouterr().out)["run_key"]
    assert reads == ["digits-logreg"]  # a training run: plan, build, record
    reads.clear()
    assert cli.main(["run", "-r", str(project), "-q"]) == 0  # answered from the store
    assert reads == ["digits-logreg"]
    reads.clear()
    assert cli.main(["verify", "-r", str(project), "--against", key, "-q"]) == 0
    assert reads == ["digits-logreg"]  # a re-run and its comparison, one read
