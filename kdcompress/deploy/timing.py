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
    import time

    for _ in range(warmup):
        run()
    times = []
    start = time.perf_counter()
    while len(times) < runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 20 * runs:
            break
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


def measure_speed(session: Any, prep: Preprocessing, images: np.ndarray, batch: int, quick: bool) -> dict[str, Any]:
    """Batch-1 latency and throughput at `batch` for one onnxruntime session.

    Timed through session.run from host memory (copies included). On CUDA, `device_batch1` and
    `device_throughput_images_per_s` add the same timings with input and output bound on the GPU.
    """
    one = normalize(images[:1], prep)
    many = normalize(tile_batch(images, batch), prep)
    runs, min_seconds = (20, 0.2) if quick else (200, 2.0)
    single_args = dict(warmup=5 if quick else 20, runs=runs, min_seconds=min_seconds)
    bulk_args = dict(warmup=2 if quick else 5, runs=max(5, runs // 10), min_seconds=min_seconds / 2)
    provider = session.get_providers()[0]
    result: dict[str, Any] = {
        "provider": provider,
        "batch1": latency(session_call(session, one), **single_args),
        "throughput_batch": batch,
        "throughput_images_per_s": batch / (latency(session_call(session, many), **bulk_args)["p50_ms"] / 1e3),
        "copies": "included (host input and output, session.run)",
    }
    if provider == "CUDAExecutionProvider":
        result["device_batch1"] = latency(device_call(session, one), **single_args)
        device_bulk = latency(device_call(session, many), **bulk_args)
        result["device_throughput_images_per_s"] = batch / (device_bulk["p50_ms"] / 1e3)
    return result


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
    """CPU model, cores, load average and how busy the CPU is right now, reported with every timing."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    busy = cpu_busy_fraction()
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count() or 1,
        "load_average_1m": round(load[0], 2),
        "cpu_busy_fraction": None if busy is None else round(busy, 3),
    }
