"""Benchmarking support shared by `endofuse bench` and the scripts in benchmarks/.

`describe_machine()` says what a number was measured on (CPU, cores, load,
library versions: results differ a lot between CPUs and on a shared machine),
and `time_calls()` is the one timing loop every benchmark uses.
"""
from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from importlib import metadata


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


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none): how busy the machine was."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def describe_machine() -> dict:
    """{"cpu", "cpus", "features", "load_average", "python", "torch", "onnxruntime"} for a benchmark record."""
    return {
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "features": cpu_features(),
        "load_average": load_average(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
    }


def machine_line(machine: dict | None = None) -> str:
    """One line for a benchmark's header; `machine` as from `describe_machine()` (default: this one)."""
    machine = machine or describe_machine()
    features = ", ".join(machine["features"]) or "no AVX2"
    line = f"machine: {machine['cpu']}, {machine['cpus']} CPU(s) ({features})"
    if machine.get("load_average"):
        line += f", load {machine['load_average'][0]:.2f}"
    return line


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 0, *,
               clock: Callable[[], float] = time.perf_counter, sync: Callable[[], object] | None = None) -> list[float]:
    """Milliseconds of each of `repeats` calls of `fn()`, after `warmup` untimed calls.

    `sync` (e.g. `torch.cuda.synchronize`) runs after every call inside the timed
    region, so asynchronous device work is counted. `clock=time.thread_time`
    gives CPU time, which barely moves when other processes share the cores.
    """
    for _ in range(warmup):
        fn()
    if sync is not None:
        sync()
    samples = []
    for _ in range(repeats):
        start = clock()
        fn()
        if sync is not None:
            sync()
        samples.append((clock() - start) * 1000.0)
    return samples
