"""What a point costs beyond its latency: the time to load it, its first inference, and the memory it adds.

People size devices and serverless functions by RAM and cold start. Each point is measured in a child process of its
own, so that one point's allocations (a runtime's arena, OpenVINO's compiled kernels) neither hide nor inflate
another's: the child imports the runtime, notes its peak resident memory, loads the file (onnxruntime's session
creation; OpenVINO's read and compile), runs one inference at batch 1 (timed apart: OpenVINO compiles for a new shape
then), then WARM more, and reports how far the peak resident memory rose above what it was before the load. The
child checks the file's SHA-256 against the manifest's before loading it, as every reader of a run does.

Run by `kdc benchmark` (not with --quick, unless --max-ram asks for it); `python -m kdcompress.deploy.footprint` is
the child's entry point.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WARM = 10  # inferences after the first, before the peak is read
TIMEOUT_S = 300  # one point's child process, at most


def measure(path: str, sha256: str | None, target: str, precision: str, threads: int, shape: list[int]) -> dict[str, float]:
    """In the child: load ms, first-inference ms, and the peak resident memory the point added (MB, 1e6 bytes)."""
    import resource

    import numpy as np

    from kdcompress.deploy.manifest import ModelFile
    from kdcompress.deploy.targets import TARGETS

    data = Path(path).read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise SystemExit(f"{path} is not the file the run wrote (its SHA-256 differs from the manifest's)")
    runtime = TARGETS[target]
    runtime.problem()  # imports the runtime: its own memory is not the point's
    sample = np.zeros(shape, np.float32)
    before = _start_peak(resource)
    started = time.perf_counter()
    loaded = runtime.load(ModelFile(Path(path), data), threads, precision)
    loaded_at = time.perf_counter()
    loaded.run(sample)
    first = time.perf_counter()
    for _ in range(WARM):
        loaded.run(sample)
    return {
        "load_ms": 1e3 * (loaded_at - started),
        "first_ms": 1e3 * (first - loaded_at),
        "peak_mb": max(0.0, (_peak_bytes(resource) - before) / 1e6),
    }


STATUS = Path("/proc/self/status")


def _start_peak(resource: Any) -> float:
    """Start measuring the peak from here: on Linux the kernel's high-water mark is reset to the resident memory now
    (clear_refs 5), so the imports' passing peak is not counted; returns the resident bytes now. Elsewhere, the peak
    so far (ru_maxrss), which can only under-count what the load adds."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_bytes("VmRSS")
    except OSError:
        return _peak_bytes(resource)


def _peak_bytes(resource: Any) -> float:
    """The process's peak resident memory so far: the kernel's high-water mark (Linux), or ru_maxrss (kilobytes on
    Linux, bytes on macOS)."""
    try:
        return _status_bytes("VmHWM")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return float(peak) if sys.platform == "darwin" else float(peak) * 1024


def _status_bytes(field: str) -> float:
    """A memory figure of /proc/self/status ('VmRSS:  1234 kB'), in bytes; OSError where there is none."""
    for line in STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return float(line.split()[1]) * 1024
    raise OSError(f"no {field} in {STATUS}")


def footprint(path: Path, sha256: str | None, target: str, precision: str, threads: int, shape: list[int]) -> dict[str, float]:
    """measure() in a fresh child process (this interpreter, `-m kdcompress.deploy.footprint`): its result, or a
    RuntimeError with the child's last line when it failed."""
    request = json.dumps({"path": str(path), "sha256": sha256, "target": target, "precision": precision,
                          "threads": threads, "shape": shape})  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "kdcompress.deploy.footprint", request], capture_output=True, text=True,
                          timeout=TIMEOUT_S)  # fmt: skip
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        said = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise RuntimeError(said[:200])
    return {key: float(value) for key, value in json.loads(lines[-1]).items()}


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    print(json.dumps(measure(**args)))
