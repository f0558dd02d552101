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
    for package in ("torch", "timm", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy", "scikit-learn", "kdcompress"):
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
