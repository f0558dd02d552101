"""What every record names: library versions and the machine (with the GPU where torch sees one)."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

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
