"""The machine a run trains on, as Linux's `/proc/cpuinfo` and CUDA describe it."""

import os
import platform
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")


def cpuinfo_field(name: str, cpuinfo: Path = CPUINFO) -> str | None:
    """Return the first CPU's `name` field of `/proc/cpuinfo` (`model name`, `flags`), or None."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """Return the CPU's model name, or the platform's word for it."""
    return cpuinfo_field("model name", cpuinfo) or platform.processor() or platform.machine()


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str] | None:
    """Return the CPU's feature flags (x86), or None where `/proc/cpuinfo` lists none."""
    flags = cpuinfo_field("flags", cpuinfo)
    return None if flags is None else set(flags.split())


def machine_description(cpuinfo: Path = CPUINFO) -> dict[str, Any]:
    """Describe the machine this session of a run trains on: CPU model, cores, CUDA's GPU."""
    import torch  # here, so that reading results needs no torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(cpuinfo), "cores": os.cpu_count(), "gpu": gpu}
