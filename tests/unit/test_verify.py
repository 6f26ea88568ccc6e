"""Verification logic on synthetic records: bounds, causes, baselines, reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from builder import baseline, report, verify
from builder.errors import InputError
from builder.recipe import Tolerance
from builder.records import RunRecord
from builder.schema import parse_recipe
from builder.verdicts import Cause, OutputCheck, Verification

RECIPE = '[recipe]\nname = "m"\nschema = 1\n[environment]\npython = "3.11"\n' \
         '[train]\ncommand = ["python", "t.py"]\nseed = 1\n'


def record(**changes: Any) -> RunRecord:
    r: dict[str, Any] = {
        "schema": "repro.run/v2", "recipe": {"name": "m", "digest": "blake3:r",
                                             "standard": "bitwise"},
        "exit_status": 0, "run_key": "blake3:k", "seed": 1,
        "env": "blake3:" + "e" * 64, "software": {"packages": {"numpy": "2.4.6"},
                                                  "python": "3.11.7"},
        "code": {"digest": "blake3:c", "files": 1, "commit": None, "dirty": None},
        "data": {"train": {"path": "d.csv", "digest": "blake3:d"}},
        "params": {"lr": 0.1}, "hardware_class": {"arch": "x86_64", "cpu": "A", "gpus": []},
        "outputs": [{"path": "m.npz", "digest": "blake3:" + "0" * 64, "size": 1}],
        "metrics": {"accuracy": 0.9}, "duration": 1.5, "command": ["python", "t.py"],
        "variables": {}, "hardware": {}, "started": "2026-11-27T10:00:00Z",
        "ended": "2026-11-27T10:00:01Z",
    }
    for key, value in changes.items():
        r[key] = {**r[key], **value} if key in ("recipe", "software", "code") else value
    return RunRecord.from_json(r)


def test_bounds_add_abs_and_rel_of_the_baseline_and_declared_sources() -> None:
    assert verify._bound(0.8, Tolerance(abs=0.01)) == pytest.approx(0.01)
    assert verify._bound(0.8, Tolerance(rel=0.1)) == pytest.approx(0.08)
    assert verify._bound(-2.0, Tolerance(abs=0.01, rel=0.1), [Tolerance(abs=0.5)]) == \
        pytest.approx(0.71)


def test_causes_name_each_changed_identity(tmp_path: Path) -> None:
    recipe = parse_recipe(RECIPE, tmp_path / "repro.toml")
    base = baseline.from_records(recipe, [("blake3:r", record())])
    assert verify.causes(base, base.runs, record(), "bitwise") == []
    changed = record(env="blake3:" + "f" * 64, software={"packages": {"numpy": "2.3.5",
                                                                      "six": "1.17.0"}},
                     code={"digest": "blake3:c2", "commit": "abc", "dirty": True},
                     data={"train": {"path": "d.csv", "digest": "blake3:d2"}},
                     params={"lr": 0.2}, seed=2,
                     hardware_class={"arch": "x86_64", "cpu": "B", "gpus": []})
    kinds = {c.kind: c.detail for c in verify.causes(base, base.runs, changed, "bitwise")}
    assert kinds["env"] == "packages: numpy 2.4.6 → 2.3.5, +six 1.17.0"
    assert kinds["code"].endswith("(commit abc, dirty)")
    assert kinds["data"] == "data.train changed"
    assert kinds["params"] == "lr: 0.1 → 0.2"
    assert kinds["seed"] == "seed 1 → 2"
    assert "hardware" in kinds
    statistical = {c.kind for c in verify.causes(base, base.runs, changed, "statistical")}
    assert "seed" not in statistical and "hardware" not in statistical


def test_a_baseline_takes_runs_that_differ_only_in_seed(tmp_path: Path) -> None:
    recipe = parse_recipe(RECIPE, tmp_path / "repro.toml")
    two = baseline.from_records(recipe, [("blake3:b", record(seed=2)), ("blake3:a", record())])
    assert [r.seed for r in two.runs] == [1, 2]
    with pytest.raises(InputError, match="differs in params"):
        baseline.from_records(recipe, [("blake3:a", record()),
                                       ("blake3:b", record(seed=2, params={"lr": 1}))])
    with pytest.raises(InputError, match="is of recipe 'other'"):
        baseline.from_records(recipe, [("blake3:a", record(recipe={"name": "other"}))])
    with pytest.raises(InputError, match="failed; a baseline must be a good run"):
        baseline.from_records(recipe, [("blake3:a", record(exit_status=1))])


def test_a_written_baseline_reads_back_and_is_canonical(tmp_path: Path) -> None:
    recipe = parse_recipe(RECIPE, tmp_path / "repro.toml")
    data = baseline.from_records(recipe, [("blake3:a", record())])
    path = baseline.path_of(recipe)
    path.parent.mkdir(parents=True)
    path.write_bytes(data.encode())
    assert baseline.load(recipe) == data
    assert path.read_bytes() == json.dumps(data.to_json(), sort_keys=True,
                                           separators=(",", ":")).encode() + b"\n"


def test_reports_say_the_verdict_causes_and_history() -> None:
    from dataclasses import replace

    result = Verification(
        recipe="m", standard="bitwise", verdict="drifted", baseline="b.json",
        causes=(Cause("seed", "seed 1 → 2"),),
        checks=(OutputCheck("m.npz", 2, "blake3:o", False, "1 of 1 tensors differ", "blake3:p",
                            {"tensors": [{"name": "w", "equal": False, "differ": 3,
                                          "elements": 4, "max_abs": 0.5, "max_rel": 0.25}]}),),
        runs=(), nondeterminism=({"source": "gpu", "reason": "atomics", "metric": None,
                                  "abs": 1e-6, "rel": None},),
        duration=2.0, baseline_duration=1.5, started="2026-11-27T10:00:00Z")
    text = report.text(result)
    assert text.splitlines()[0] == "drifted: m (bitwise) against b.json"
    assert "w: 3 of 4 elements differ, max abs 0.5, max rel 0.25" in text
    assert text.splitlines()[-1] == "time to reproduce 2.00s (baseline 1.50s)"
    timed = report.text(replace(result, timings={"training": 2.5, "fetch": 0.5}))
    assert timed.splitlines()[-1] == ("time to reproduce 3.00s: fetch 0.50s, training 2.50s; "
                                      "the run itself 2.00s (baseline 1.50s)")
    assert not replace(result, timings={"training": 2.5}).over_target  # no target declared
    late = replace(result, timings={"training": 2.5, "fetch": 0.5}, target=2.9)
    assert late.over_target and late.total == 3.0
    assert report.text(late).splitlines()[-1] == (
        "warning: time to reproduce 3.00s is over the recipe's target 2.9s "
        "([reproducibility] time-to-reproduce)")
    assert Verification.decode(late.encode(), Path("v.json")) == late
    old = {k: v for k, v in late.to_json().items() if k != "target"}  # written before targets
    assert Verification.decode(json.dumps(old).encode(), Path("v.json")).target is None
    md = report.markdown(result, [replace(result, duration=d) for d in (1.0, 2.0, 4.0)])
    assert md.startswith("# ❌ `m`: **drifted**")
    assert "| seed | seed 1 → 2 |" in md
    assert "- **gpu**: atomics, abs ≤ 1e-06" in md
    assert "`▁▃█`" in md


def test_verify_names_what_no_identity_covers() -> None:
    assert verify._unvouched(record(sandbox="bwrap", network=False)) == []
    notes = verify._unvouched(record(sandbox="off", network=True))
    assert notes[0].startswith("the run could reach the network")
    assert "[train] sandbox = false" in notes[1]
    assert "folder sandbox" in verify._unvouched(record(sandbox="folder", network=True))[1]
