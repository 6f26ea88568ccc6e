"""Facts about the machine a run used, and the hardware class a `bitwise` run key covers."""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from builder import proc
from builder.errors import ToolError

log = logging.getLogger(__name__)
SMI_TIMEOUT = 10.0  # seconds: a hung driver must not hang every run


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor describes them all
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


QUERY = "index,uuid,name,compute_cap,memory.total,mig.mode.current,driver_version"
# `nvidia-smi -L` lines: "GPU 0: NAME (UUID: GPU-…)" and, under a GPU in MIG mode,
# "  MIG 3g.40gb     Device  0: (UUID: MIG-…)"
_GPU_LINE = re.compile(r"^GPU (\d+): .* \(UUID: (GPU-[0-9a-fA-F-]+)\)\s*$")
_MIG_LINE = re.compile(r"^\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: (MIG-[^)\s]+)\)\s*$")


def gpus(environ: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The NVIDIA GPUs (or MIG slices) a CUDA process started here would see, as nvidia-smi
    reports them: model, compute capability, memory, MIG profile, driver. nvidia-smi is not
    called when it is not on PATH, or when CUDA_VISIBLE_DEVICES hides every device."""
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not _names_a_device(visible.split(",")[0].strip()):
        return []  # "", "-1", …: CUDA sees nothing, and nvidia-smi is not asked
    smi = shutil.which("nvidia-smi", path=env.get("PATH"))
    if smi is None:
        return []
    try:
        listing = proc.run([smi, f"--query-gpu={QUERY}", "--format=csv,noheader"],
                           timeout=SMI_TIMEOUT)
        devices = parse_query(listing.stdout)
        if any(d["mig_mode"] == "Enabled" for d in devices):
            slices = proc.run([smi, "-L"], check=False, timeout=SMI_TIMEOUT)
            devices = with_mig(devices, slices.stdout if slices.returncode == 0 else "")
    except ToolError as exc:
        log.warning("%s failed, so this run records no GPU (and the CPU hardware class): "
                    "%s", smi, exc.stderr.strip().splitlines()[-1][:200] if exc.stderr.strip()
                    else f"exit status {exc.returncode}")
        return []
    return select(devices, visible)


def _names_a_device(entry: str) -> bool:
    return entry.isdigit() or entry.startswith(("GPU-", "MIG-"))


def parse_query(text: str) -> list[dict[str, Any]]:
    """`nvidia-smi --query-gpu=QUERY --format=csv,noheader` as one dict per GPU."""
    out = []
    for line in text.strip().splitlines():
        fields = [p.strip() for p in line.split(",")]
        if len(fields) != 7 or not fields[0].isdigit():
            log.warning("nvidia-smi gave a line repro cannot read (%r); that GPU is left out "
                        "of the record", line[:120])
            continue
        index, uuid, name, cc, memory, mig, driver = fields
        out.append({"index": index, "uuid": uuid, "name": name, "compute_capability": cc,
                    "memory": memory, "mig_mode": mig, "mig": None, "driver": driver})
    return out


def with_mig(devices: list[dict[str, Any]], listing: str) -> list[dict[str, Any]]:
    """Each GPU in MIG mode replaced by its MIG slices (what CUDA enumerates), from
    `nvidia-smi -L`; each slice keeps its GPU's facts, with its profile and UUID."""
    slices: dict[str, list[tuple[str, str]]] = {}
    parent = None
    for line in listing.splitlines():
        if m := _GPU_LINE.match(line):
            parent = m.group(2)
            slices[parent] = []
        elif (m := _MIG_LINE.match(line)) and parent is not None:
            slices[parent].append((m.group(1), m.group(3)))
    out = []
    for d in devices:
        if d["mig_mode"] != "Enabled":
            out.append(d)
            continue
        out += [{**d, "mig": profile, "mig_uuid": uuid, "memory": profile.split(".")[-1]}
                for profile, uuid in slices.get(d["uuid"], [])]
    return out


def select(devices: list[dict[str, Any]], visible: str | None) -> list[dict[str, Any]]:
    """The devices CUDA_VISIBLE_DEVICES leaves: indices (nvidia-smi's order), GPU- or MIG-
    UUIDs or unique prefixes of them; as CUDA does, the list ends at the first entry that
    names nothing (so "-1" hides all)."""
    if visible is None:
        return devices
    chosen: list[dict[str, Any]] = []
    for entry in (e.strip() for e in visible.split(",")):
        if entry.isdigit():
            found = [d for d in devices if d["index"] == str(int(entry))][:1]
        else:
            found = [d for d in devices if entry and (d["uuid"].startswith(entry) or str(
                d.get("mig_uuid", "")).startswith(entry))]
            if entry.startswith("GPU-") and len({d["uuid"] for d in found}) == 1:
                found = found[:1]  # a GPU in MIG mode: CUDA takes its first slice
        if len(found) != 1:
            break
        if found[0] not in chosen:
            chosen.append(found[0])
    return chosen


def gpu_class(gpu: dict[str, Any]) -> str:
    """What of a GPU decides bitwise equality: its model and compute capability, and the MIG
    profile of a slice (cuBLAS promises equal bits only for the same architecture and SM
    count; the model fixes a whole GPU's SM count, the profile a slice's)."""
    if "compute_capability" not in gpu:  # recorded before these facts: the name alone
        return str(gpu["name"])
    mig = f", MIG {gpu['mig']}" if gpu.get("mig") else ""
    return f"{gpu['name']} (compute {gpu['compute_capability']}{mig})"


def facts() -> dict[str, Any]:
    """What a run record says about the machine: CPU, memory, GPUs, OS and libc."""
    cpu = _cpuinfo()
    libc, libc_version = platform.libc_ver()
    try:
        os_name = platform.freedesktop_os_release().get("PRETTY_NAME", "")
    except OSError:
        os_name = ""
    return {
        "arch": platform.machine(),
        "cpu": {
            "model": cpu.get("model name", platform.processor()),
            "vendor": cpu.get("vendor_id", ""),
            "flags": sorted(cpu.get("flags", "").split()),
            "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
        },
        "memory_bytes": _memory_bytes(),
        "gpus": gpus(),
        "os": {"system": platform.system(), "release": platform.release(), "name": os_name},
        "libc": f"{libc} {libc_version}".strip(),
    }


def hardware_class(info: dict[str, Any]) -> dict[str, Any]:
    """What must match for bitwise-equal results: architecture, CPU model, and each visible
    GPU's model, compute capability and MIG profile, in the order CUDA numbers them (none
    on a CPU machine: its class, and
    every CPU run key, is what it was before GPUs were described).

    Core counts, memory and driver versions are recorded but not part of the class: they
    change speed, and where they change results (thread counts), the recipe pins them.
    """
    return {
        "arch": info["arch"],
        "cpu": info["cpu"]["model"],
        "gpus": [gpu_class(g) for g in info["gpus"]],  # CUDA's order: cuda:0 first
    }


def class_text(cls: dict[str, Any] | None) -> str:
    """A hardware class in words: `x86_64, AMD EPYC, no GPU`."""
    if not cls:
        return "none"
    return f"{cls['arch']}, {cls['cpu']}, " + (", ".join(cls.get("gpus") or []) or "no GPU")
