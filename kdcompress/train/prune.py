"""Students carved from the teacher: structured pruning by Torch-Pruning, the teacher's own knowledge kept.

`kdc compress --prune 0.5,0.8` adds a student per ratio, named `pruned50`, `pruned80`: the trained teacher with that
share of the channels of every prunable layer group removed physically (Torch-Pruning's dependency graph keeps
coupled layers consistent: residual sums, depthwise convolutions, squeeze-excitation), ranked by the L2 norm of each
group's weights (`GroupMagnitudeImportance`, p=2, the DepGraph paper's default); the classifier keeps its outputs. The
result is an ordinary smaller network: it trains, exports to ONNX and is benchmarked as any student is. Its baseline
(cross-entropy fine-tuning), distilled student (from the unpruned teacher) and control all start from the same pruned
weights, so that they differ only in their objective.

A pruned network cannot be rebuilt from its timm name alone: `structure` records, per module, the shapes of its own
parameters and buffers and its channel attributes; `rebuild` gives a freshly built teacher those shapes, and the
checkpoint's weights then load as for any model. The structure is kept in the checkpoint and in the manifest.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from kdcompress.core.errors import KdcError

PRUNED = re.compile(r"pruned(\d{1,2})")  # a student name that means "the teacher, this percent of channels removed"
ATTRIBUTES = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features", "num_channels",
              "normalized_shape", "num_groups")  # fmt: skip


def pruned_name(ratio: float) -> str:
    """0.5 -> 'pruned50': the student name (and file name part) of the teacher pruned at ratio."""
    return f"pruned{round(ratio * 100)}"


def pruned_ratio(name: str) -> float | None:
    """'pruned50' -> 0.5; None for a name that is not a pruned student's."""
    match = PRUNED.fullmatch(name)
    return int(match.group(1)) / 100 if match else None


def prune(teacher: Any, ratio: float, channels: int, image_size: int) -> Any:
    """A copy of the trained teacher with ratio of the channels of each prunable group removed (the classifier's
    outputs kept); the teacher itself is not touched. What Torch-Pruning cannot prune is a KdcError of one line,
    naming the layer where it says one."""
    import torch
    import torch_pruning as tp

    import warnings

    model = copy.deepcopy(teacher).cpu().eval()
    for parameter in model.parameters():  # the teacher is frozen; Torch-Pruning traces the graph through autograd,
        parameter.requires_grad_(True)  # and the pruned copy is a student, to be trained
    head = model.get_classifier()
    example = torch.zeros(1, channels, image_size, image_size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its notes on parameters it leaves alone
            pruner = tp.pruner.MetaPruner(
                model, example, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
                ignored_layers=[head] if isinstance(head, torch.nn.Module) else [],
            )  # fmt: skip
            pruner.step()
        with torch.no_grad():
            model(example)
    except Exception as exc:
        said = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise KdcError(f"Torch-Pruning cannot prune {type(teacher).__name__} at {ratio:.0%} ({type(exc).__name__}: {said})") from None
    before, after = (sum(p.numel() for p in m.parameters()) for m in (teacher, model))
    if after >= before:
        raise KdcError(f"Torch-Pruning found no channel of {type(teacher).__name__} it could remove at {ratio:.0%}")
    width = getattr(head, "in_features", None)
    if isinstance(width, int):  # timm reads the pooled width from these (the feature term's projection)
        model.num_features = width
        if getattr(model, "head_hidden_size", None):
            model.head_hidden_size = width
    return model


def structure(model: Any) -> dict[str, dict[str, Any]]:
    """Per module (by name): the shapes of its own parameters and buffers and its channel attributes."""
    out: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        entry: dict[str, Any] = {}
        tensors = {**dict(module.named_parameters(recurse=False)), **dict(module.named_buffers(recurse=False))}
        shapes = {key: list(value.shape) for key, value in tensors.items() if value is not None}
        if shapes:
            entry["shapes"] = shapes
        attributes = {key: _plain(vars(module)[key]) for key in ATTRIBUTES if isinstance(vars(module).get(key), (int, tuple, list))}
        if attributes:
            entry["attributes"] = attributes
        if entry:
            out[name] = entry
    return out


def rebuild(model: Any, recorded: dict[str, dict[str, Any]]) -> Any:
    """model (built as the teacher is) given the recorded structure: its tensors reshaped (their values to be loaded
    from the checkpoint) and its channel attributes set. A structure that names a module the model lacks is refused."""
    import torch

    modules = dict(model.named_modules())
    for name, entry in recorded.items():
        if name not in modules:
            raise KdcError(f"the pruned structure names a layer '{name}' that the teacher's architecture lacks: the checkpoint is of another model")
        module = modules[name]
        for key, shape in entry.get("shapes", {}).items():
            old = getattr(module, key)
            fresh = torch.zeros(shape, dtype=old.dtype)
            if isinstance(old, torch.nn.Parameter):
                setattr(module, key, torch.nn.Parameter(fresh, requires_grad=old.requires_grad))
            else:
                module.register_buffer(key, fresh)
        for key, value in entry.get("attributes", {}).items():
            setattr(module, key, tuple(value) if isinstance(getattr(module, key, None), tuple) else value)
    head = model.get_classifier()
    if isinstance(getattr(head, "in_features", None), int):
        model.num_features = head.in_features
        if getattr(model, "head_hidden_size", None):
            model.head_hidden_size = head.in_features
    return model


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


RATIO_STEPS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # what --prune-to-ms searches: 0.05 ... 0.95


def ratio_for_latency(teacher: Any, target_ms: float, prep: Any, images: Any, reporter: Any) -> tuple[float | None, str]:
    """The smallest ratio of RATIO_STEPS whose pruned teacher, exported to ONNX, runs at batch 1 within target_ms on
    onnxruntime's CPU provider with one thread, timed here as kdc benchmark times a point (latency falls as the ratio
    grows, so a bisection of the steps). Returns the ratio (None: the teacher itself is within the target already) and
    what was measured, in words."""
    import tempfile
    from pathlib import Path

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
