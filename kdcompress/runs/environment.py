"""What every record names: library versions and the machine (with the GPU where torch sees one), and the seconds
each phase of a run took."""

from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Iterator

from kdcompress.deploy.timing import cpu_name


def environment() -> dict[str, Any]:
    """Library versions and machine (with the GPU, where torch sees one), recorded with every run."""
    versions = {}
    for package in ("torch", "timm", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "numpy", "scikit-learn", "kdcompress"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    machine = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": cpu_name(),
        "cpu_count": os.cpu_count(),
        "versions": versions,
    }
    import torch

    if torch.cuda.is_available():
        machine.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    return machine


def busy_warning() -> str | None:
    """A warning when the machine is already busy as a run starts: its load average over the last minute above its
    cores. Trainings sharing 2 cores ran 6-9x slower each than one alone (three kdc processes at once)."""
    from kdcompress.core.world import usable_cores

    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every system
        return None
    cores = usable_cores()
    if load <= cores:
        return None
    return (
        f"this machine is already busy (load average {load:.1f} on {cores} cores): the training will share the CPU and "
        f"run slower; timings recorded in this run are not comparable to those of a quiet machine"
    )


@dataclass
class Phases:
    """Seconds spent in each phase of one compress call, in the order they ran (the manifest's training.seconds).

    start and data: the imports (torch, timm), then loading and checking the images; teacher: trained, or read
    from the cache; students: their training, the checkpoints, and the exports started in worker processes
    (export.Exports); test and exports: the test scores and the exports, finished or made here; INT8 (--int8);
    total: the whole call from its start.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - began, 2)

    def record(self) -> dict[str, float]:
        return {**self.seconds, "total": round(time.perf_counter() - self.started, 2)}

    @staticmethod
    def words(record: dict[str, float]) -> str:
        """One line for a record: the total, then each phase."""
        phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in record.items() if name != "total")
        return f"took {record['total']:.0f} s: {phases}"
