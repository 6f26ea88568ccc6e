"""GPU facts from nvidia-smi (captured-format fixtures; no GPU here) and the bitwise class."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from builder import hardware
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "nvidia-smi"


def fake_smi(folder: Path, name: str) -> Path:
    """An nvidia-smi that prints a fixture (the query, or -L) and notes each call: a fake
    stands in because no GPU (and no real nvidia-smi) is on this machine."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    listing = FIXTURES / f"{name}-L.txt"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> "{folder}/calls"\n'
        f'if [ "$1" = "-L" ]; then cat "{listing}"; else cat "{FIXTURES / name}.csv"; fi\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder


def seen(tmp_path: Path, name: str, **env: str) -> list[dict[str, object]]:
    bin_dir = fake_smi(tmp_path / "bin", name)
    return hardware.gpus({"PATH": f"{bin_dir}:{os.environ['PATH']}", **env})


def classes(gpus: list[dict[str, object]]) -> list[str]:
    return hardware.hardware_class({"arch": "x86_64", "cpu": {"model": "c"},
                                    "gpus": gpus})["gpus"]


def test_an_h100_is_its_model_and_compute_capability(tmp_path: Path) -> None:
    [gpu] = seen(tmp_path, "h100")
    assert (gpu["name"], gpu["compute_capability"], gpu["memory"], gpu["driver"], gpu["mig"]) \
        == ("NVIDIA H100 80GB HBM3", "9.0", "81559 MiB", "550.54.15", None)
    assert classes([gpu]) == ["NVIDIA H100 80GB HBM3 (compute 9.0)"]
    assert (tmp_path / "bin" / "calls").read_text().count("\n") == 1  # no -L: MIG is off


def test_an_a100_in_mig_mode_is_its_slices_each_another_class_than_the_whole_gpu(
        tmp_path: Path) -> None:
    slices = seen(tmp_path, "a100-mig")
    assert [(s["mig"], s["mig_uuid"]) for s in slices] == [
        ("3g.20gb", "MIG-ab5a5d6e-8f1a-5a5c-9b0e-2a1f3e4d5c6b"),
        ("3g.20gb", "MIG-7c1e9d2a-3b4f-5e6a-8c7d-1f2e3a4b5c6d")]
    assert classes(slices[:1]) == ["NVIDIA A100-SXM4-40GB (compute 8.0, MIG 3g.20gb)"]
    whole = {**slices[0], "mig": None}
    assert classes([whole]) != classes(slices[:1])
    one = seen(tmp_path, "a100-mig", CUDA_VISIBLE_DEVICES="MIG-7c1e9d2a")
    assert [s["mig_uuid"] for s in one] == ["MIG-7c1e9d2a-3b4f-5e6a-8c7d-1f2e3a4b5c6d"]


def test_two_mixed_gpus_and_cuda_visible_devices_choosing_one(tmp_path: Path) -> None:
    both = seen(tmp_path, "mixed")
    assert classes(both) == ["NVIDIA A100 80GB PCIe (compute 8.0)",
                             "NVIDIA RTX A6000 (compute 8.6)"]
    assert [g["name"] for g in seen(tmp_path, "mixed", CUDA_VISIBLE_DEVICES="1")] == [
        "NVIDIA RTX A6000"]
    by_uuid = seen(tmp_path, "mixed", CUDA_VISIBLE_DEVICES="GPU-1f2e3d4c,1")
    assert [g["index"] for g in by_uuid] == ["0", "1"]
    # as CUDA reads it: the list ends at the first entry that names no device
    assert [g["index"] for g in seen(tmp_path, "mixed", CUDA_VISIBLE_DEVICES="1,7,0")] == ["1"]
    assert seen(tmp_path, "mixed", CUDA_VISIBLE_DEVICES="-1") == []


def test_cuda_order_is_kept_in_the_class(tmp_path: Path) -> None:
    """cuda:0 is the first visible device: 1,0 and 0,1 are other machines to the code."""
    swapped = seen(tmp_path, "mixed", CUDA_VISIBLE_DEVICES="1,0")
    assert classes(swapped) == ["NVIDIA RTX A6000 (compute 8.6)",
                                "NVIDIA A100 80GB PCIe (compute 8.0)"]
    assert classes(swapped) != classes(seen(tmp_path, "mixed", CUDA_VISIBLE_DEVICES="0,1"))


def hostile_smi(folder: Path, body: str) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


@pytest.mark.parametrize("body", [
    "echo 'not a csv at all'\n",
    "printf '0, GPU-1, \\377\\376 bad, 9.0, 1 MiB, Disabled, 1\\n'\n",  # not UTF-8: replaced
    "echo '0, GPU-1, Name, with, comma, 9.0, 1 MiB, Disabled, 1'\n",
    "echo 'driver not loaded' >&2; exit 9\n",
])
def test_output_nvidia_smi_should_not_give_is_a_warning_never_a_crash(
        tmp_path: Path, body: str, caplog: pytest.LogCaptureFixture) -> None:
    found = hardware.gpus(hostile_smi(tmp_path / "bin", body))
    assert all(g["name"].startswith(("Name", "\ufffd")) for g in found)
    assert len(found) <= 1
    assert found or caplog.records  # what was left out is said


def test_a_hung_nvidia_smi_is_given_up_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(hardware, "SMI_TIMEOUT", 0.5)
    assert hardware.gpus(hostile_smi(tmp_path / "bin", "exec sleep 30\n")) == []
    assert "no answer after 0.5 s" in caplog.text


@pytest.mark.parametrize("visible", ["", " ", "-1", "banana"])
def test_no_visible_device_means_nvidia_smi_is_never_called(tmp_path: Path,
                                                             visible: str) -> None:
    assert seen(tmp_path, "h100", CUDA_VISIBLE_DEVICES=visible) == []
    assert not (tmp_path / "bin" / "calls").exists()


def test_a_cpu_machine_never_calls_nvidia_smi(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    calls: list[object] = []
    monkeypatch.setattr(hardware.proc, "run", lambda *a, **k: calls.append(a))
    assert hardware.gpus({"PATH": str(tmp_path)}) == []  # nothing called nvidia-smi there
    assert calls == []
    facts = {"arch": "x86_64", "cpu": {"model": "AMD EPYC"}, "gpus": []}
    assert hardware.hardware_class(facts) == {"arch": "x86_64", "cpu": "AMD EPYC", "gpus": []}


def test_a_gpu_recorded_before_these_facts_keeps_its_name_as_its_class() -> None:
    assert hardware.gpu_class({"name": "NVIDIA A100-SXM4-40GB", "driver": "535"}) == \
        "NVIDIA A100-SXM4-40GB"
