"""Export a trained network to a self-contained ONNX file and prove it computes what PyTorch does."""

from __future__ import annotations

import logging
import multiprocessing
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from kdcompress.core.errors import KdcError
from kdcompress.core.world import usable_cores
from kdcompress.deploy.preprocessing import Preprocessing
from kdcompress.deploy.sessions import run_logits
from kdcompress.deploy.targets import create_session
from kdcompress.train.loop import predict_logits

# Largest accepted |onnxruntime - torch| logit difference, relative to the logit scale: 1e-3 for logits
# up to 1 in magnitude, 1e-3 * max|logit| beyond. Float32 itself is no closer: for a network whose
# logits reach ~100, PyTorch's own float32 output differs from float64 by ~2e-3.
PARITY_TOLERANCE = 1e-3
PARITY_IMAGES = 256  # real test images compared
WORKER_CPUS = 8  # from this many cores on, exports run in worker processes beside the training (Exports)
MAX_WORKERS = 4  # one per model of a run


def export_workers(spawn_safe: bool) -> int:
    """Worker processes for a run's exports: none below WORKER_CPUS cores, where they would take the training's.

    Only when the caller says spawning is safe (the kdc command does): a spawned process first imports the
    program's main module, and a user's script that calls compress() without an `if __name__ == "__main__":`
    guard would run again in every worker.
    """
    cpus = usable_cores()
    return min(MAX_WORKERS, cpus // 4) if spawn_safe and cpus >= WORKER_CPUS else 0


class Exports:
    """The ONNX export of each model of a run, started as soon as the model is trained.

    `submit` saves the model's checkpoint at once. With worker processes (export_workers), the export is then
    built from that checkpoint in a worker while the next model trains: the dynamo export and its checks are
    CPU work, about 9 s for EfficientNet-B3 and 2.5 s for ResNet18 on one core of a 2-core Xeon, which would
    otherwise come after all the GPU training. The workers are spawned, not forked: the parent holds CUDA.
    Without workers, `parity` exports the model in this process when asked. Either way `parity` returns
    the export's check against PyTorch (export_onnx), or raises its error. If the workers die (out of memory,
    say), the exports are made here instead and `fallback` says why.
    """

    def __init__(self, folder: Path, prep: Preprocessing, images: np.ndarray, workers: int = 0) -> None:
        self.folder, self.prep = folder, prep
        self.images = np.asarray(images[:PARITY_IMAGES])  # decoded once, when streamed from disk
        self.threads = max(1, (usable_cores() - 2) // max(1, workers))  # two cores stay with the training process
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers else None
        self.pending: dict[str, Future[dict[str, Any]]] = {}
        self.fallback = ""  # why the workers were given up, if they were
        for _ in range(workers if self.pool is not None else 0):  # started now: their imports overlap the teacher's training
            self.pool.submit(_import_exporter)

    def __enter__(self) -> "Exports":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.pool is not None:  # exports still running finish (they write into the staging folder), queued ones are dropped
            self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, role: str, model: nn.Module, meta: dict[str, Any]) -> None:
        """Save role's checkpoint (checkpoints/ROLE.pt) and, with workers, start its export."""
        from kdcompress.train.models import save_checkpoint

        checkpoint = self.folder / "checkpoints" / f"{role}.pt"
        checkpoint.parent.mkdir(exist_ok=True)
        save_checkpoint(model, checkpoint, meta)
        if self.pool is not None:
            path = self.folder / f"{role}.onnx"
            self.pending[role] = self.pool.submit(export_checkpoint, checkpoint, path, self.prep, self.images, self.threads)

    def parity(self, role: str, model: nn.Module) -> dict[str, Any]:
        """role.onnx written and checked: the worker's result, or an export made here and now."""
        if role in self.pending:
            try:
                return self.pending.pop(role).result()
            except BrokenProcessPool as error:
                self.fallback = (
                    f"the export worker processes stopped ({error or 'a worker died'}; out of memory?): the ONNX files "
                    f"were made in the main process instead"
                )
        return export_onnx(model, self.folder / f"{role}.onnx", self.prep, self.images)

    @property
    def background(self) -> bool:
        return self.pool is not None


def export_onnx(model: nn.Module, path: Path, prep: Preprocessing, images: np.ndarray) -> dict[str, Any]:
    """Write model to path (dynamic batch axis, weights inside), check it, compare with torch on images."""
    import onnx

    model = model.eval().cpu()
    example = torch.zeros(2, prep.channels, prep.image_size, prep.image_size)  # batch 2: keeps the axis dynamic
    exported = readable_everywhere(model, example)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            torch.onnx.export(
                exported,
                (example,),
                str(path),
                dynamo=True,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                external_data=False,
                verbose=False,
            )
        except Exception as exc:
            raise KdcError(f"ONNX export of {path.name} failed: {str(exc).strip().splitlines()[0]}") from None
    onnx.checker.check_model(str(path), full_check=True)
    return check_parity(model, path, prep, images)


def readable_everywhere(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The model as it is exported: the same function, in layers every runtime kdc targets can read.

    An average pooling whose window is at least as large as its input (ResNet10-T's avg_down shortcut at 16 px meets
    a 1 x 1 map with a 2 x 2, ceil-mode window) averages the whole map into one value. PyTorch and onnxruntime
    accept that window; OpenVINO's shape inference refuses it ("Kernel after dilation has size larger than the data
    shape"), and with it every layer after. Such a pooling is exported as the global average it computes (ONNX
    GlobalAveragePool), the same numbers, which check_parity confirms against the original model. The model is
    left as it is; a copy is changed only where such a layer exists."""
    import copy

    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        module.register_forward_hook(lambda m, inputs, output, name=name: sizes.__setitem__(name, tuple(inputs[0].shape[-2:])))
        for name, module in model.named_modules() if isinstance(module, nn.AvgPool2d)
    ]  # fmt: skip
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()

    def whole_map(module: nn.AvgPool2d, size: tuple[int, int]) -> bool:
        kernel = module.kernel_size if isinstance(module.kernel_size, tuple) else (module.kernel_size,) * 2
        padding = module.padding if isinstance(module.padding, tuple) else (module.padding,) * 2
        return not any(padding) and all(side <= k for side, k in zip(size, kernel)) and any(side < k for side, k in zip(size, kernel))

    modules = dict(model.named_modules())
    names = [name for name, size in sizes.items() if whole_map(modules[name], size)]
    if not names:
        return model
    changed = copy.deepcopy(model)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        setattr(changed.get_submodule(parent_name) if parent_name else changed, child, nn.AdaptiveAvgPool2d(1))
    return changed.eval()


def export_checkpoint(checkpoint: Path, path: Path, prep: Preprocessing, images: np.ndarray, threads: int) -> dict[str, Any]:
    """export_onnx of the network a kdcompress checkpoint holds: what an export worker process runs.

    Its errors are KdcErrors (one line each), which the pool hands back to the run.
    """
    from kdcompress.train.models import create_model, load_weights

    torch.set_num_threads(threads)
    try:
        meta = torch.load(checkpoint, map_location="cpu", weights_only=True)
        architecture = (meta["model"], len(meta["classes"]), meta["in_chans"])
    except Exception as exc:
        raise KdcError(f"cannot export {path.name}: its checkpoint {checkpoint} cannot be read ({exc})") from None
    model = create_model(*architecture)
    if isinstance(meta.get("pruned"), dict):  # a student carved from the teacher: its channels as pruned
        from kdcompress.train.prune import rebuild

        rebuild(model, meta["pruned"]["structure"])
    load_weights(model, checkpoint)
    return export_onnx(model, path, prep, images)


def _import_exporter() -> None:
    """Load what an export needs (torch.onnx's exporter, onnxscript, onnxruntime) into a fresh worker process."""
    import onnxruntime  # noqa: F401
    import onnxscript  # noqa: F401
    import timm  # noqa: F401
    import torch.onnx  # noqa: F401


def check_parity(model: nn.Module, path: Path, prep: Preprocessing, images: np.ndarray) -> dict[str, Any]:
    """Largest logit difference between onnxruntime and torch on real images; KdcError above tolerance."""
    sample = images[:PARITY_IMAGES]
    torch_logits = predict_logits(model, sample, prep, "cpu")
    onnx_logits = run_logits(create_session(path), sample, prep)
    max_diff = float(np.abs(torch_logits - onnx_logits).max())
    scale = max(1.0, float(np.abs(torch_logits).max()))
    allowed = PARITY_TOLERANCE * scale
    if not max_diff <= allowed:
        raise KdcError(
            f"{path.name}: onnxruntime and PyTorch disagree by {max_diff:.2e} on real test images "
            f"(allowed {allowed:.2e} = {PARITY_TOLERANCE:g} x max|logit| {scale:.3g}); the export is not trustworthy"
        )
    same_top1 = float((torch_logits.argmax(1) == onnx_logits.argmax(1)).mean())
    return {
        "max_abs_diff": max_diff,
        "max_abs_logit": scale,
        "allowed_diff": allowed,
        "same_top1": same_top1,
        "parity_images": int(len(sample)),
    }
