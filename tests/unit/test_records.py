"""Typed records: each writes, reads back equal, and reads the v1 files main wrote before them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from builder.errors import InputError, StoreError
from builder.records import KEY_V1, EnvManifest, RunRecord, is_run_record
from builder.verdicts import Baseline, Verification
from tests.conftest import ROOT

V1 = ROOT / "tests" / "fixtures" / "v1"  # written by repro at commit 30789d5 (records v1)


def v1(name: str) -> bytes:
    return (V1 / name).read_bytes()


@pytest.mark.parametrize("name", ["run-seed7.json", "run-seed8.json", "run-failed.json"])
def test_v1_run_records_read_and_round_trip_as_v2(name: str) -> None:
    old = json.loads(v1(name))
    record = RunRecord.decode(v1(name))
    assert record.run_key == old["run_key"]
    assert record.recipe.name == old["recipe"]["name"]
    assert record.code.digest == old["code"]["digest"]
    assert {k: d.digest for k, d in record.data.items()} == \
        {k: d["digest"] for k, d in old["data"].items()}
    assert [o.to_json() for o in record.outputs] == old["outputs"]
    assert record.software.packages == old["software"]["packages"]
    assert record.runner == "venv"
    assert record.key_format == KEY_V1
    assert record.succeeded is (old["exit_status"] == 0)
    assert (record.error is None) is ("error" not in old)
    written = record.encode()
    assert json.loads(written)["schema"] == "repro.run/v2"
    again = RunRecord.decode(written)
    assert again == record
    assert again.encode() == written  # canonical: one record, one digest


def test_a_v1_record_made_in_an_image_reads_as_an_image_run() -> None:
    old = json.loads(v1("run-seed7.json"))
    old["software"]["image"] = "sha256:" + "a" * 64
    record = RunRecord.from_json(old)
    assert record.runner == "image"
    assert record.software.image == "sha256:" + "a" * 64
    assert RunRecord.decode(record.encode()) == record


def test_records_of_unknown_schemas_or_shapes_are_store_errors_with_the_path(
    tmp_path: Path,
) -> None:
    path = tmp_path / "obj"
    for data, match in ((b"[1, 2]", "holds list"), (b"not json", "not a run record"),
                        (json.dumps({"schema": "repro.run/v9"}).encode(), "repro.run/v9"),
                        (json.dumps({"schema": "repro.run/v2"}).encode(), "missing field")):
        with pytest.raises(StoreError, match=match) as caught:
            RunRecord.decode(data, path)
        assert caught.value.path == path
    assert is_run_record(v1("run-seed7.json"))
    assert not is_run_record(b"\x00\x01binary model bytes")


@pytest.mark.parametrize("name", ["baseline.json", "baseline-torch.json"])
def test_v1_baselines_read_with_their_class_on_every_run(name: str) -> None:
    old = json.loads(v1(name))
    base = Baseline.decode(v1(name), V1 / name)
    assert base.key_format == KEY_V1
    assert base.env == old["env"]
    assert [r.seed for r in base.runs] == [r["seed"] for r in old["runs"]]
    assert all(r.hardware_class == old["hardware_class"] for r in base.runs)
    assert base.classes == [old["hardware_class"]]
    written = base.encode()
    assert written.endswith(b"\n")
    assert json.loads(written)["schema"] == "repro.baseline/v2"
    assert Baseline.decode(written, V1 / name) == base


def test_a_damaged_baseline_is_bad_input_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    with pytest.raises(InputError, match=r"baseline\.json is not a valid baseline: missing runs"):
        Baseline.decode(json.dumps({**json.loads(v1("baseline.json")), "runs": []}).encode(),
                        path)
    with pytest.raises(InputError, match="not a valid baseline"):
        Baseline.decode(b"{", path)


def test_v1_env_manifests_read_and_round_trip() -> None:
    manifest = EnvManifest.decode(v1("env-manifest.json"), V1 / "env-manifest.json")
    assert manifest.python == "3.11.7"
    assert manifest.packages == {"numpy": "2.4.6"}
    assert manifest.tree is None  # built before sealing: sealed as it is on first use
    sealed = dataclasses.replace(manifest, tree="blake3:" + "1" * 64,
                                 fingerprint="blake3:" + "2" * 64, files=3)
    written = sealed.encode()
    assert json.loads(written)["schema"] == "repro.envmanifest/v2"
    assert EnvManifest.decode(written, V1) == sealed
    with pytest.raises(StoreError, match="it has no seal"):  # a v2 one always has its seal
        EnvManifest.decode(manifest.encode(), V1)


def test_v1_verifications_read_and_round_trip() -> None:
    old = json.loads(v1("verification.json"))
    report = Verification.decode(v1("verification.json"), V1 / "verification.json")
    assert report.verdict == old["verdict"]
    assert [c.kind for c in report.causes] == [c["kind"] for c in old["causes"]]
    written = report.to_json()
    assert written.pop("schema") == "repro.verify/v2"
    assert written.pop("notes") == []  # v2: what no identity covers (none said in v1)
    assert written.pop("timings") == {}  # v2: wall time by phase (none kept in v1)
    # v2: the time-to-reproduce target (none in v1) and the total, the runs' duration
    assert (written.pop("target"), written.pop("over_target")) == (None, False)
    assert written.pop("total") == old["duration"]
    assert written.pop("hardware") is None  # v2: a hardware class that differs (none in v1)
    assert written == {k: v for k, v in old.items() if k != "schema"}  # the same fields
    assert Verification.decode(report.encode(), V1) == report


def test_a_v1_store_reads_through_the_store_areas(tmp_path: Path) -> None:
    import shutil

    from builder.store import Store

    store = Store(shutil.copytree(V1 / "store", tmp_path / "store"))
    recipe_runs = store.records.of_recipe("digits-logreg")
    assert len(recipe_runs) == 4
    records = [store.records.get(d) for d in recipe_runs]
    assert sorted(r.seed for r in records) == [7, 7, 7, 8]
    good = next(r for r in records if r.seed == 8)
    assert store.records.for_key(good.run_key) in recipe_runs
    assert store.records.find(good.run_key[7:19]) == store.records.for_key(good.run_key)
    assert store.blobs.get(good.outputs[0].digest)  # the model, checked against its digest
    assert [v.verdict for v in store.verifications.of("digits-logreg")] == ["drifted"]
