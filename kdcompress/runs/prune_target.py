"""`--prune-to-ms`: the least pruning of the teacher whose exported file meets a latency on this machine."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from kdcompress.train.prune import prune

RATIO_STEPS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # what --prune-to-ms searches: 0.05 ... 0.95


def ratio_for_latency(teacher: Any, target_ms: float, prep: Any, images: Any, reporter: Any) -> tuple[float | None, str]:
    """The smallest ratio of RATIO_STEPS whose pruned teacher, exported to ONNX, runs at batch 1 within target_ms on
    onnxruntime's CPU provider with one thread, timed here as kdc benchmark times a point (latency falls as the ratio
    grows, so a bisection of the steps). Returns the ratio (None: the teacher itself is within the target already) and
    what was measured, in words."""
    from kdcompress.deploy.preprocessing import normalize
    from kdcompress.deploy.targets import create_session, session_call
    from kdcompress.deploy.timing import interleaved_latency
    from kdcompress.train.export import export_onnx

    one = normalize(images[:1], prep)
    measured: dict[float, float] = {}

    def latency(ratio: float, folder: Path) -> float:
        model = teacher if ratio == 0 else prune(teacher, ratio, prep.channels, prep.image_size)
        path = folder / f"{ratio:.2f}.onnx"
        export_onnx(model, path, prep, images[:4])
        call = session_call(create_session(path, "cpu", 1), one)
        measured[ratio] = interleaved_latency({"p": call}, warmup=10, runs=100, min_seconds=1.0)["p"]["p50_ms"]
        reporter.info(f"--prune-to-ms: {'the teacher' if ratio == 0 else f'pruned {ratio:.0%}'} runs at {measured[ratio]:.2f} ms")
        return measured[ratio]

    with tempfile.TemporaryDirectory(prefix="kdc-prune-to-ms-") as folder:
        if latency(0.0, Path(folder)) <= target_ms:
            return None, f"the teacher itself runs at {measured[0.0]:.2f} ms, within {target_ms:g} ms: no pruned student is needed"
        low, high = 0, len(RATIO_STEPS) - 1
        if latency(RATIO_STEPS[high], Path(folder)) > target_ms:
            return RATIO_STEPS[high], (f"even pruned {RATIO_STEPS[high]:.0%} it runs at {measured[RATIO_STEPS[high]]:.2f} ms, "
                                       f"over {target_ms:g} ms: that ratio is used, the closest")  # fmt: skip
        while low < high:  # RATIO_STEPS[high] meets the target; find the first that does
            middle = (low + high) // 2
            if latency(RATIO_STEPS[middle], Path(folder)) <= target_ms:
                high = middle
            else:
                low = middle + 1
    ratio = RATIO_STEPS[high]
    return ratio, f"pruned {ratio:.0%}, the least pruning within {target_ms:g} ms, runs at {measured[ratio]:.2f} ms here (onnxruntime-cpu, 1 thread, batch 1)"
