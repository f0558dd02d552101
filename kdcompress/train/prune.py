"""Students carved from the teacher: structured pruning by Torch-Pruning, the teacher's own knowledge kept.

`kdc compress --prune 0.5,0.8` adds a student per ratio, named `pruned50`, `pruned80` (core.roles.pruned_name): the trained teacher with that
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
import warnings
from typing import Any

from kdcompress.core.errors import KdcError

# Kept channel counts are rounded to multiples of this: onnxruntime's blocked convolution kernels ran the Lite2
# teacher pruned 80% at 2.20 ms with free counts and 0.52 ms rounded to 8 (50%: 1.26 and 1.23 ms;
# benchmarks/prune_round_to.py, benchmarks/README.md).
ROUND_TO = 8
ATTRIBUTES = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features", "num_channels",
              "normalized_shape", "num_groups")  # fmt: skip


def prune(teacher: Any, ratio: float, channels: int, image_size: int) -> Any:
    """A copy of the trained teacher with ratio of the channels of each prunable group removed (the classifier's
    outputs kept); the teacher itself is not touched. What Torch-Pruning cannot prune is a KdcError of one line,
    naming the layer where it says one."""
    import torch
    import torch_pruning as tp

    from kdcompress.train.models import count_parameters

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
                ignored_layers=[head] if isinstance(head, torch.nn.Module) else [], round_to=ROUND_TO,
            )  # fmt: skip
            pruner.step()
        with torch.no_grad():
            model(example)
    except Exception as exc:
        said = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise KdcError(f"Torch-Pruning cannot prune {type(teacher).__name__} at {ratio:.0%} ({type(exc).__name__}: {said})") from None
    if count_parameters(model) >= count_parameters(teacher):
        raise KdcError(f"Torch-Pruning found no channel of {type(teacher).__name__} it could remove at {ratio:.0%}")
    return _pooled_width_from_head(model)


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
    return _pooled_width_from_head(model)


def _pooled_width_from_head(model: Any) -> Any:
    """model with timm's pooled-width attributes (num_features, head_hidden_size: what the feature term's projection
    reads, models.pooled_width) set to its classifier's input width, which pruning changed."""
    width = getattr(model.get_classifier(), "in_features", None)
    if isinstance(width, int):
        model.num_features = width
        if getattr(model, "head_hidden_size", None):
            model.head_hidden_size = width
    return model


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
