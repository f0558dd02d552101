"""Honest timings of model calls: warm-up, interleaving, percentiles, and the machine they were taken on."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np


def latency(run: Any, warmup: int, runs: int, min_seconds: float) -> dict[str, float]:
    """Per-call latency of run() in milliseconds after warm-up: p50 / p90 / p99 / mean over at least `runs` calls."""
    return interleaved_latency({"run": run}, warmup, runs, min_seconds)["run"]


ROUNDS = 10  # interleaved timing visits every call this many times at least, a share of the runs each time


def interleaved_latency(calls: dict[str, Any], warmup: int, runs: int, min_seconds: float) -> dict[str, dict[str, float]]:
    """Per-call latency of several calls, timed in turns in this process, so that a slow spell of a shared machine
    falls on all of them alike: every call is warmed up, then visited round after round until it has at least
    `runs` calls and `min_seconds` of timing (at most 20 x `runs` calls), when it leaves the rotation.

    A visit is `runs // ROUNDS` calls, or more until the visit has taken `min_seconds / ROUNDS`: so every call
    gets about the same time a round and they reach `min_seconds` together, in about ROUNDS rounds. (Visits of a
    fixed count made every fast call wait for the slowest: a 0.2 ms student ran until a 400 ms teacher batch had
    its share, and a two-student benchmark took 9 minutes.)
    """
    for run in calls.values():
        for _ in range(warmup):
            run()
    per_visit, visit_seconds = max(1, runs // ROUNDS), min_seconds / ROUNDS
    times: dict[str, list[float]] = {name: [] for name in calls}
    spent = dict.fromkeys(calls, 0.0)

    def timing(name: str) -> bool:
        return (len(times[name]) < runs or spent[name] < min_seconds) and len(times[name]) < 20 * runs

    while active := [name for name in calls if timing(name)]:
        for name in active:
            run, visit, count = calls[name], 0.0, 0
            while count < per_visit or (visit < visit_seconds and timing(name)):
                t0 = time.perf_counter()
                run()
                elapsed = time.perf_counter() - t0
                times[name].append(elapsed * 1e3)
                spent[name] += elapsed
                visit += elapsed
                count += 1
    return {name: _stats(values) for name, values in times.items()}


def _stats(times: list[float]) -> dict[str, float]:
    values = np.asarray(times)
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p90_ms": float(np.percentile(values, 90)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": float(values.mean()),
        "runs": int(len(values)),
    }


def tile_batch(images: np.ndarray, batch: int) -> np.ndarray:
    """A batch of `batch` images taken in order from images, repeated as often as needed."""
    repeats = -(-batch // len(images))
    return np.concatenate([images] * repeats)[:batch]


# What INT8, bf16 and FP16 speed depend on: x86 VNNI, AMX and bf16/fp16 units, Arm dot products.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "asimddp", "i8mm")


def cpu_isa(cpuinfo: str | None = None) -> list[str]:
    """The instruction-set extensions INT8 speed depends on that this CPU has (x86 VNNI and AMX, Arm dot products),
    read from /proc/cpuinfo (or the text given)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            present = set(line.split(":", 1)[1].split())
            return [flag for flag in ISA_FLAGS if flag in present]
    return []


def cpu_name() -> str:
    """The CPU model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_busy_fraction(interval: float = 0.5) -> float | None:
    """Share of all cores busy over `interval` seconds while this process waits (Linux /proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def machine() -> dict[str, Any]:
    """CPU model, its INT8-relevant ISA flags, cores, load average and how busy the CPU is right now, reported with every timing."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    busy = cpu_busy_fraction()
    return {
        "cpu": cpu_name(),
        "isa": cpu_isa(),
        "arch": platform.machine(),
        "cores": os.cpu_count() or 1,
        "load_average_1m": round(load[0], 2),
        "cpu_busy_fraction": None if busy is None else round(busy, 3),
    }
