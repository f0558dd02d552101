"""Honest timings of onnxruntime sessions: warm-up, percentiles, throughput, and the machine they were taken on."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from kdcompress.deploy.preprocessing import Preprocessing, normalize
from kdcompress.deploy.sessions import device_call, session_call


def latency(run: Any, warmup: int, runs: int, min_seconds: float) -> dict[str, float]:
    """Per-call latency of run() in milliseconds after warm-up: p50 / p90 / p99 / mean over at least `runs` calls."""
    return interleaved_latency({"run": run}, warmup, runs, min_seconds)["run"]


ROUNDS = 10  # interleaved timing visits every call this many times at least, a share of the runs each time


def interleaved_latency(calls: dict[str, Any], warmup: int, runs: int, min_seconds: float) -> dict[str, dict[str, float]]:
    """Per-call latency of several calls, timed in turns in this process, so that a slow spell of a shared machine
    falls on all of them alike: every call is warmed up, then visited round after round, `runs // ROUNDS` calls a
    visit, until each has at least `runs` calls and `min_seconds` of timing (at most 20 x `runs` calls each)."""
    for run in calls.values():
        for _ in range(warmup):
            run()
    per_visit = max(1, runs // ROUNDS)
    times: dict[str, list[float]] = {name: [] for name in calls}
    spent = dict.fromkeys(calls, 0.0)
    while any(len(times[n]) < runs or spent[n] < min_seconds for n in calls) and min(map(len, times.values())) < 20 * runs:
        for name, run in calls.items():
            for _ in range(per_visit):
                t0 = time.perf_counter()
                run()
                elapsed = time.perf_counter() - t0
                times[name].append(elapsed * 1e3)
                spent[name] += elapsed
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


def measure_speeds(sessions: dict[str, Any], prep: Preprocessing, images: np.ndarray, batch: int, quick: bool) -> dict[str, Any]:
    """Batch-1 latency and throughput at `batch` of several onnxruntime sessions, timed interleaved.

    Timed through session.run from host memory (copies included). On CUDA, `device_batch1` and
    `device_throughput_images_per_s` add the same timings with input and output bound on the GPU.
    """
    one = normalize(images[:1], prep)
    many = normalize(tile_batch(images, batch), prep)
    runs, min_seconds = (20, 0.2) if quick else (200, 2.0)
    single_args = dict(warmup=5 if quick else 20, runs=runs, min_seconds=min_seconds)
    bulk_args = dict(warmup=2 if quick else 5, runs=max(5, runs // 10), min_seconds=min_seconds / 2)
    single = interleaved_latency({n: session_call(s, one) for n, s in sessions.items()}, **single_args)
    bulk = interleaved_latency({n: session_call(s, many) for n, s in sessions.items()}, **bulk_args)
    results: dict[str, Any] = {}
    for name, session in sessions.items():
        results[name] = {
            "provider": session.get_providers()[0],
            "batch1": single[name],
            "throughput_batch": batch,
            "throughput_images_per_s": batch / (bulk[name]["p50_ms"] / 1e3),
            "copies": "included (host input and output, session.run)",
        }
    on_device = {n: s for n, s in sessions.items() if s.get_providers()[0] == "CUDAExecutionProvider"}
    if on_device:
        device_single = interleaved_latency({n: device_call(s, one) for n, s in on_device.items()}, **single_args)
        device_bulk = interleaved_latency({n: device_call(s, many) for n, s in on_device.items()}, **bulk_args)
        for name in on_device:
            results[name]["device_batch1"] = device_single[name]
            results[name]["device_throughput_images_per_s"] = batch / (device_bulk[name]["p50_ms"] / 1e3)
    return results


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "asimddp", "i8mm")


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
