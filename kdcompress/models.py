"""Teacher and student networks, by timm name, plus the training-only feature projection."""

from __future__ import annotations

import difflib
import errno
from pathlib import Path
from typing import Any

from kdcompress.errors import KdcError


def resolve_model_name(name: str) -> str:
    """Check that timm knows the model; a KdcError with close matches when it does not."""
    import timm

    if timm.is_model(name):
        return name
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else " See timm.list_models() for the names."
    raise KdcError(f"unknown model '{name}': timm has no model of that name.{hint}")


def create_model(name: str, num_classes: int, in_chans: int, pretrained: bool = False) -> Any:
    """A timm classifier with a fresh head of num_classes; ImageNet weights when pretrained."""
    import timm

    resolve_model_name(name)
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans)
    except Exception as exc:  # hub errors come in many types: offline, missing weights, proxy...
        if not pretrained:
            raise
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KdcError(
            f"could not load pretrained ImageNet weights for '{name}' ({first_line}). They download from the "
            f"Hugging Face hub on first use: check your connection; on a machine without one, copy the hub cache "
            f"(~/.cache/huggingface/hub) of a machine that downloaded them and set HF_HUB_OFFLINE=1; or train from "
            f"scratch without --pretrained, or pass a trained teacher with --teacher-weights FILE"
        ) from None


def set_stem_stride(model: Any, stride: int | None) -> Any:
    """Give model.conv_stem this stride (None leaves the model as timm built it)."""
    if stride is not None:
        if getattr(model, "conv_stem", None) is None:
            raise KdcError(f"{type(model).__name__} has no conv_stem whose stride could be set")
        model.conv_stem.stride = (stride, stride)
    return model


def count_parameters(model: Any) -> int:
    """Number of parameters (trainable or not) of a torch module."""
    return sum(p.numel() for p in model.parameters())


def save_checkpoint(model: Any, path: Path, meta: dict[str, Any]) -> None:
    """Weights plus what is needed to rebuild the model (name, classes, channels, stem stride)."""
    import torch

    stem = getattr(model, "conv_stem", None)
    stride = {"stem_stride": int(stem.stride[0])} if stem is not None else {}  # not in the state_dict
    try:
        state = {name: value.detach().cpu() for name, value in model.state_dict().items()}  # loadable without a GPU
        torch.save({"state_dict": state, **meta, **stride}, path)
    except RuntimeError as exc:  # torch's zip writer reports a full disk as a RuntimeError, not an OSError
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OSError(errno.ENOSPC, f"could not write the checkpoint, the disk may be full ({detail})", str(path)) from None


def load_weights(model: Any, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by kdcompress (or a bare state_dict) into model; returns its metadata."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise KdcError(f"weights file not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise KdcError(f"cannot read weights file {path} ({exc}): expected a torch checkpoint (.pt)") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise KdcError(f"{path} holds no state_dict")
    try:
        model.load_state_dict(state)
        set_stem_stride(model, checkpoint.get("stem_stride") if isinstance(checkpoint, dict) else None)
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[0]
        raise KdcError(
            f"weights in {path} do not fit this model ({detail}): was it trained with the same --teacher, "
            f"dataset (classes, channels)?"
        ) from None
    return {k: v for k, v in checkpoint.items() if k != "state_dict"}


def create_projection(student: Any, teacher: Any) -> Any:
    """Linear map from the student's pooled features to the teacher's (training only, never exported)."""
    import torch.nn as nn

    return nn.Linear(student.num_features, teacher.num_features)
