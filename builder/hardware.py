"""Facts about the machine a run used, and the hardware class a `bitwise` run key covers."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path
from typing import Any

from builder import proc


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


def gpus() -> list[dict[str, str]]:
    """NVIDIA GPUs as nvidia-smi reports them (name, driver, memory, CUDA driver API)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    listing = proc.run([smi, "--query-gpu=name,driver_version,memory.total",
                        "--format=csv,noheader"], check=False)
    if listing.returncode != 0:
        return []
    header = proc.run([smi], check=False).stdout
    cuda = ""
    if "CUDA Version:" in header:
        cuda = header.split("CUDA Version:", 1)[1].split()[0]
    out = []
    for line in listing.stdout.strip().splitlines():
        name, driver, memory = (part.strip() for part in line.split(",", 2))
        out.append({"name": name, "driver": driver, "memory": memory, "cuda_driver": cuda})
    return out


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
    """What must match for bitwise-equal results: architecture, CPU model, GPU models.

    Core counts, memory and driver versions are recorded but not part of the class: they
    change speed, and where they change results (thread counts), the recipe pins them.
    """
    return {
        "arch": info["arch"],
        "cpu": info["cpu"]["model"],
        "gpus": sorted(g["name"] for g in info["gpus"]),
    }
