"""`repro baseline set | verify | diff | history` on real re-runs, with deliberate drifts."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import gen
from tests.func.helpers import repro

pytestmark = pytest.mark.network


def baseline(project: Path) -> dict:  # type: ignore[type-arg]
    assert repro("run", "-q", cwd=project).code == 0
    r = repro("baseline", "set", "--json", cwd=project)
    assert r.code == 0, r.err
    return r.json  # type: ignore[no-any-return]


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_an_unchanged_recipe_reproduces_with_a_report(project: Path, tmp_path: Path) -> None:
    base = baseline(project)
    assert base["runs"][0]["seed"] == 7
    stored = json.loads((project / "lockfiles/digits-logreg/baseline.json").read_text())
    assert stored["runs"][0]["outputs"] == base["runs"][0]["outputs"]
    report_file = tmp_path / "report.md"
    r = repro("verify", "--json", "--report", report_file, cwd=project)
    assert r.code == 0, r.err
    assert r.json["verdict"] == "reproduced"
    assert r.json["causes"] == []
    assert [c["ok"] for c in r.json["checks"]] == [True]
    assert r.json["baseline_duration"] > 0
    md = report_file.read_text()
    assert md.startswith("# ✅ `digits-logreg`: **reproduced**")
    assert "## Time to reproduce" in md
    assert "](report.svg)" in md  # the history chart, written beside the report
    assert ET.parse(tmp_path / "report.svg").getroot().tag == "{http://www.w3.org/2000/svg}svg"
    history = repro("history", "--json", cwd=project).json["verifications"]
    assert [h["verdict"] for h in history] == ["reproduced"]


def test_a_time_to_reproduce_over_the_target_warns_and_fails_with_strict(
        project: Path) -> None:
    baseline(project)
    edit(project / "repro.toml", "[reproducibility]\n",
         '[reproducibility]\ntime-to-reproduce = "0.001s"\n')  # no re-run is that quick
    r = repro("verify", cwd=project)
    assert r.code == 0, r.err
    assert "warning: time to reproduce" in r.out
    assert "over the recipe's target 0.001s" in r.out
    r = repro("verify", "--strict", "--json", cwd=project)
    assert r.code == 1, r.err
    assert r.json["verdict"] == "reproduced"
    assert r.json["over_target"] is True and r.json["target"] == 0.001
    assert r.json["total"] == pytest.approx(sum(r.json["timings"].values()), abs=0.01)
    assert set(r.json["timings"]) == {"environment", "training", "comparison"}
    shown = repro("history", "--plot", project / "h.svg", cwd=project)
    assert shown.out.count("over target") == 2
    assert "target 0.001s" in shown.out.splitlines()[-1]
    panels = {g.get("data-series"): g for g in ET.parse(project / "h.svg").getroot()
              if g.get("data-series")}
    assert list(panels) == ["verdict", "time to reproduce", "metric accuracy", "metric loss"]
    verdicts = [c.get("class") for c in panels["verdict"] if c.tag.endswith("circle")]
    assert verdicts == ["point ok", "point ok"]  # one mark per recorded verification


@pytest.mark.parametrize(
    ("change", "cause", "detail"),
    [
        ("package", "env", r"packages: numpy 2\.4\.6 → 2\.3\.5"),
        ("code", "code", r"code digest"),
        ("data", "data", r"data\.train changed"),
        ("seed", "seed", r"seed 7 → 8"),
    ],
)
def test_each_deliberate_drift_is_caught_and_named(
    project: Path, change: str, cause: str, detail: str,
) -> None:
    baseline(project)
    if change == "package":
        edit(project / "repro.toml", "numpy>=2,<3", "numpy==2.3.5")
    elif change == "code":
        edit(project / "train.py", "w -= args.lr * (x[train].T @ grad + args.l2 * w)",
             "w -= args.lr * (x[train].T @ grad + 2 * args.l2 * w)")
    elif change == "data":
        edit(project / "data/train.csv", "2.848085", "2.948085")
    else:
        edit(project / "repro.toml", "seed = 7", "seed = 8")
    r = repro("verify", "--json", cwd=project)
    assert r.code == 1, r.err
    assert r.json["verdict"] == "drifted"
    assert [c["kind"] for c in r.json["causes"]] == [cause]
    assert re.search(detail, r.json["causes"][0]["detail"])
    output = r.json["checks"][0]
    if change == "package":  # a numpy release that computes the same bits: said so
        assert output["ok"] is True
        assert "still match the baseline" in repro("verify", cwd=project).out
    else:  # and where the weights moved, tensor by tensor
        assert output["ok"] is False
        tensors = {t["name"]: t for t in output["tensors"]["tensors"]}
        assert set(tensors) == {"b", "mean", "std", "w"}
        assert tensors["w"]["differ"] > 0
        assert tensors["w"]["max_abs"] > 0


STATISTICAL = '''
[reproducibility]
standard = "statistical"
tolerance = { accuracy = { abs = 0.02 }, loss = { abs = TOL } }

[[reproducibility.nondeterminism]]
source = "seed"
reason = "any seed of this recipe should do as well"
metric = "loss"
abs = 0.0
'''


def _statistical(project: Path, loss_tolerance: float) -> None:
    recipe = project / "repro.toml"
    text = recipe.read_text().split("[reproducibility]")[0]
    recipe.write_text(text + STATISTICAL.replace("TOL", str(loss_tolerance)))


def test_statistical_passes_within_bounds_for_another_seed_and_fails_outside(
    project: Path,
) -> None:
    _statistical(project, 0.05)
    baseline(project)
    edit(project / "repro.toml", "seed = 7", "seed = 8")
    ok = repro("verify", "--json", cwd=project)
    assert ok.code == 0, ok.err
    assert ok.json["verdict"] == "reproduced"
    loss = next(c for c in ok.json["checks"] if c["name"] == "loss")
    assert 0 < loss["difference"] <= loss["threshold"] == 0.05
    assert loss["test"].startswith("mean within tolerance")
    assert ok.json["nondeterminism"][0]["source"] == "seed"

    _statistical(project, 0.001)  # the recipe keeps seed 8
    bad = repro("verify", "--json", "--seeds", "2", cwd=project)
    assert bad.code == 1
    loss = next(c for c in bad.json["checks"] if c["name"] == "loss")
    assert loss["ok"] is False
    assert loss["n"] == 2
    assert loss["n_baseline"] == 1
    assert [r["seed"] for r in bad.json["runs"]] == [8, 9]


EVAL = '''
import numpy as np
from builder.runtime import log_metrics
m = np.load("model.npz")
t = np.loadtxt("data/train.csv", delimiter=",", skiprows=1)
x = (t[:, :-1] - m["mean"]) / m["std"]
log_metrics(accuracy=float(((x @ m["w"] + m["b"]).argmax(1) == t[:, -1]).mean()))
'''


def test_functional_runs_the_evaluation_on_the_reproduced_model(project: Path) -> None:
    gen(project, {"eval.py": EVAL})
    recipe = project / "repro.toml"
    edit(recipe, 'include = ["train.py"]', 'include = ["train.py", "eval.py"]')  # its sandbox
    recipe.write_text(recipe.read_text().split("[reproducibility]")[0] +
                      '[reproducibility]\nstandard = "functional"\n'
                      'evaluate = ["python", "eval.py"]\n'
                      'tolerance = { accuracy = { abs = 0.01 } }\n')
    base = baseline(project)
    assert 0.8 < base["runs"][0]["evaluation"]["accuracy"] < 1
    ok = repro("verify", "--json", cwd=project)
    assert ok.code == 0, ok.err
    assert ok.json["checks"][0]["name"] == "accuracy"
    edit(recipe, "epochs = 200", "epochs = 1")
    bad = repro("verify", "--json", cwd=project)
    assert bad.code == 1
    assert [c["kind"] for c in bad.json["causes"]] == ["params"]
    assert bad.json["checks"][0]["ok"] is False


def test_diff_explains_two_runs_of_different_package_versions(project: Path) -> None:
    first = repro("run", "--json", cwd=project).json
    edit(project / "repro.toml", "numpy>=2,<3", "numpy==2.3.5")
    second = repro("run", "--json", cwd=project).json
    r = repro("diff", first["record"], second["run_key"], "--json", cwd=project)
    assert r.code == 0, r.err
    groups = r.json["differences"]
    assert groups["packages"] == {"added": {}, "removed": {}, "changed": {"numpy": ["2.4.6", "2.3.5"]}}
    assert "env" in groups
    assert "code" not in groups and "data" not in groups and "params" not in groups
    text = repro("diff", first["record"], second["record"], cwd=project).out
    assert "~ numpy 2.4.6 -> 2.3.5" in text
    envs = repro("diff", first["env"], second["env"][7:], "--json", cwd=project)
    assert envs.code == 0, envs.err
    assert envs.json["a"] == f"env {first['env']}"
    assert envs.json["differences"]["packages"]["changed"] == {"numpy": ["2.4.6", "2.3.5"]}
    lock_vs_run = repro("diff", project, first["record"], "--json", cwd=project)
    assert lock_vs_run.code == 0, lock_vs_run.err
    assert lock_vs_run.json["a"].startswith("lock ")
    assert lock_vs_run.json["differences"]["packages"]["changed"] == {"numpy": ["2.3.5", "2.4.6"]}


def test_bad_baselines_and_tolerances_are_explained(project: Path) -> None:
    (project / "lockfiles/digits-logreg/baseline.json").unlink()  # the committed one
    none = repro("verify", cwd=project)
    assert none.code == 2
    assert "has no baseline yet" in none.err
    assert "`repro baseline set`" in none.err

    baseline(project)
    path = project / "lockfiles/digits-logreg/baseline.json"
    good = path.read_text()
    path.write_text(good.replace('"recipe":"digits-logreg"', '"recipe":"other-model"'))
    other = repro("verify", cwd=project)
    assert other.code == 2
    assert "is a baseline of recipe 'other-model', not 'digits-logreg'" in other.err
    path.write_text(good[: len(good) // 2])
    corrupt = repro("verify", cwd=project)
    assert corrupt.code == 2
    assert "is not a valid baseline" in corrupt.err
    assert "restore it from version control" in corrupt.err
    path.write_text(good)

    _statistical(project, 0.05)
    edit(project / "repro.toml", "loss = {", "f1 = {")
    missing = repro("verify", cwd=project)
    assert missing.code == 2
    assert "does not produce a metric `f1`" in missing.err


def test_against_a_run_and_an_output_missing_from_the_re_run(project: Path) -> None:
    first = repro("run", "--json", cwd=project).json
    edit(project / "repro.toml", 'outputs = ["model.npz"]', 'outputs = []')
    r = repro("verify", "--against", first["run_key"], "--json", cwd=project)
    assert r.code == 1
    check = r.json["checks"][0]
    assert check["name"] == "model.npz"
    assert check["detail"] == "missing from the re-run"


TENSORS = """
import json, struct, sys
import numpy as np
a = np.arange(6, dtype=np.float32).reshape(2, 3)
b = a.copy(); b[1, 2] += 0.5
np.save("a.npy", a); np.save("b.npy", b)
def safetensors(path, tensors):
    header, body = {}, b""
    for name, t in tensors.items():
        raw = t.tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [len(body), len(body) + len(raw)]}
        body += raw
    text = json.dumps(header).encode()
    open(path, "wb").write(struct.pack("<Q", len(text)) + text + body)
safetensors("a.safetensors", {"w": a, "bias": a[0]})
safetensors("b.safetensors", {"w": b, "bias": a[0]})
"""


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_tensordiff_reads_each_format_inside_the_env(project: Path, suffix: str) -> None:
    from tests.conftest import ROOT

    gen(project, {"make.py": TENSORS})
    assert repro("exec", "--", "python", "make.py", cwd=project).code == 0
    r = repro("exec", "--", "env", f"PYTHONPATH={ROOT}", "python", "-m", "builder.tensordiff",
              f"a{suffix}", f"b{suffix}", cwd=project)
    assert r.code == 0, r.err
    result = json.loads(r.out)
    changed = [t for t in result["tensors"] if not t["equal"]]
    assert len(changed) == 1
    assert changed[0]["differ"] == 1
    assert changed[0]["max_abs"] == 0.5
    assert changed[0]["max_rel"] == pytest.approx(0.5 / 5.5)


def test_another_hardware_class_is_said_first_and_declared_tolerances_then_apply(
        project: Path) -> None:
    baseline(project)
    path = project / "lockfiles/digits-logreg/baseline.json"
    stored = json.loads(path.read_text())
    for run in stored["runs"]:  # as if every baseline run was made on another CPU
        run["hardware_class"] = {**run["hardware_class"], "cpu": "Another CPU"}
        run["outputs"][0]["digest"] = "blake3:" + "0" * 64  # whose bytes differ
    path.write_text(json.dumps(stored))
    drifted = repro("verify", cwd=project)
    assert drifted.code == 1, drifted.err
    verdict, first = drifted.out.splitlines()[:2]
    assert verdict.startswith("drifted")
    assert first.startswith("hardware class differs: x86_64, Another CPU, no GPU → ")
    as_json = repro("verify", "--json", cwd=project).json
    assert as_json["causes"][0]["kind"] == "hardware"
    assert "framework" not in repro("show", "--json", cwd=project).json  # numpy only: none

    edit(project / "repro.toml", 'standard = "bitwise"',
         'standard = "bitwise"\ntolerance = { accuracy = { abs = 0.001 } }')
    tolerated = repro("verify", "--json", cwd=project)
    assert tolerated.code == 0, tolerated.err
    out = tolerated.json
    assert out["verdict"] == "reproduced"
    assert "Another CPU" in out["hardware"]
    assert [c["kind"] for c in out["checks"]] == ["metric"]
    assert any("tolerances were applied to its metrics" in n for n in out["notes"])
