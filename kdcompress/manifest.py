"""The artifacts folder contract: one folder per run, finished when its manifest.json exists."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from kdcompress.errors import KdcError

MANIFEST = "manifest.json"
FORMAT = "kdcompress-run/1"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=False)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """The manifest of a finished run, or a KdcError saying why there is none."""
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST
    if not run_dir.is_dir():
        raise KdcError(f"run folder not found: {run_dir}")
    if not path.is_file():
        raise KdcError(f"{run_dir} has no {MANIFEST}: it is not a finished kdc compress run")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise KdcError(f"cannot read {path} ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise KdcError(f"{path} is not a {FORMAT} manifest (format: {manifest.get('format')!r})")
    return manifest


def load_images(run_dir: Path, manifest: dict[str, Any], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a split saved in a run folder: key 'test_set' or 'calibration_set'."""
    path = Path(run_dir) / manifest["files"][key]
    if not path.is_file():
        raise KdcError(f"{path} is missing: the run folder is incomplete; run kdc compress again")
    data = np.load(path)
    return data["images"], data["labels"]


def list_runs(root: str | Path) -> list[Path]:
    """Finished runs under an artifacts root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()]
    return sorted(runs, key=lambda p: ((p / MANIFEST).stat().st_mtime, p.name))


def resolve_runs(path: str | Path, all_runs: bool = False) -> list[Path]:
    """A run folder itself, or the newest finished run (every run with all_runs) under an artifacts root."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return [path]
    if not path.is_dir():
        raise KdcError(f"folder not found: {path} (run kdc compress first, or pass a run folder)")
    runs = list_runs(path)
    if not runs:
        raise KdcError(f"no finished run in {path}: run kdc compress first (a run is finished once it has {MANIFEST})")
    return runs if all_runs else [runs[-1]]


def environment() -> dict[str, Any]:
    """Library versions and machine, recorded with every run."""
    versions = {}
    for package in ("torch", "timm", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy", "scikit-learn", "kdcompress"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": cpu_name(),
        "cpu_count": os.cpu_count(),
        "versions": versions,
    }


def cpu_name() -> str:
    """The CPU model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
