"""What machine a benchmark ran on, printed beside its numbers (results differ a lot between CPUs)."""
from __future__ import annotations

import os
import platform


def _cpuinfo(field: str) -> str | None:
    """The first `field : value` of /proc/cpuinfo (None off Linux or when absent)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else what `platform` knows."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_features() -> list[str]:
    """The x86 matrix/vector extensions that decide fp32/bf16/int8 speed here (empty off Linux/x86)."""
    flags = set((_cpuinfo("flags") or "").split())
    return [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16") if f in flags]


def describe_machine() -> dict:
    """{"cpu", "cpus", "features"}: enough to tell two benchmark runs' machines apart."""
    return {"cpu": cpu_name(), "cpus": os.cpu_count(), "features": cpu_features()}


def machine_line(machine: dict | None = None) -> str:
    """One line for a benchmark's header; `machine` as from `describe_machine()` (default: this one)."""
    machine = machine or describe_machine()
    features = ", ".join(machine["features"]) or "no AVX2"
    return f"machine: {machine['cpu']}, {machine['cpus']} CPU(s) ({features})"
