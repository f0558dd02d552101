"""Teacher and student networks, by timm name, plus the training-only feature projection."""

from __future__ import annotations

import difflib
import errno
from pathlib import Path
from typing import Any

from kdcompress.core.errors import KdcError


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


SMALL_IMAGE = 64  # inputs up to this side get a stride-1 stem where a model has a strided conv_stem (small_input_stem)


def small_input_stem(model: Any, image_size: int) -> int | None:
    """The stem stride for small inputs: 1 at SMALL_IMAGE px or less when the model has a strided conv_stem, else None.

    The one model adaptation kdc makes for small images, for the teacher (its recipe 3) and, with
    --student-stem auto, for every student at its fair start. EfficientNet-B3 and MobileNetV4 downsample
    32 px inputs to 1x1; a stride-1 stem keeps 2x2 at the end (4x the MACs). ResNets (conv1 and a max-pool,
    not conv_stem) are left as timm builds them: a CIFAR stem costs them far more (benchmarks/README.md).
    """
    stem = getattr(model, "conv_stem", None)
    if image_size > SMALL_IMAGE or stem is None or tuple(stem.stride) == (1, 1):
        return None
    return 1


STUDENT_HEAD = "zeroed"  # how a student's classifier starts (sweep.json records it, so no sweep mixes two starts)


def zero_init_head(model: Any) -> Any:
    """Zero the final classifier so training starts from uniform predictions (loss = ln(classes)); teacher and
    students alike.

    timm's EfficientNet-B3 starts with logits of +-17, a cross-entropy of ~8 for 3 classes, and from scratch on small
    data it barely recovers: measured on digits (10 epochs, 16 px), test accuracy 21% with the default head, 77% with
    a zeroed one, at the same cost. MobileNetV4-Conv-Small starts near 7x chance on two classes: on a 230-image folder
    of X-rays at batch 16 its baseline diverged (cross-entropy 18.4 in epoch 4) with timm's head and reached 92%
    validation with a zeroed one.
    """
    import torch.nn as nn

    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    return model


def adapt_to_input(model: Any, image_size: int, stem: str = "auto") -> tuple[Any, int | None]:
    """model with the small-input stem when stem is auto (timm: as built); the stride set, or None."""
    stride = small_input_stem(model, image_size) if stem == "auto" else None
    return set_stem_stride(model, stride), stride


TRIAL_SIZES = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)  # what check_input_size tries


def runs_at(name: str, channels: int, size: int, stem: str) -> str | None:
    """Why the model cannot take a batch of size x size images, adapted as it will be (None when it can)."""
    import torch

    model, _ = adapt_to_input(create_model(name, 2, channels), size, stem)
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, channels, size, size))
    except Exception as exc:  # a kernel larger than its input, a size its windows do not divide, ...
        return " ".join(str(exc).split())[:120] or type(exc).__name__
    return None


def check_input_size(name: str, flag: str, channels: int, size: int, stem: str) -> None:
    """Refuse, before anything trains, a model that cannot run at the run's image size: one line naming it, why, and
    the smallest size of TRIAL_SIZES it takes (stem: how it will be adapted, models.adapt_to_input)."""
    why = runs_at(name, channels, size, stem)
    if why is None:
        return
    fits = next((s for s in TRIAL_SIZES if s != size and runs_at(name, channels, s, stem) is None), None)
    hint = f": it runs from {fits} px (--image-size {fits})" if fits else ": no size from 8 to 512 px runs it; pick another model"
    raise KdcError(f"{flag} {name} cannot take {size} px images ({why}){hint}")


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
    import pickle

    import torch

    path = Path(path)
    if path.is_dir():
        raise KdcError(f"{path} is a folder, not a weights file: pass the checkpoint itself (a run keeps its teacher in checkpoints/teacher.pt)")
    if not path.is_file():
        raise KdcError(f"weights file not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's readers fail on foreign files in many ways (IndexError on some text files)
        detail = " ".join(str(exc).split())[:160]
        why = "it holds something other than tensors" if isinstance(exc, pickle.UnpicklingError) else "its contents are not a torch.save file"
        raise KdcError(f"{path} is not a PyTorch checkpoint ({why}: {type(exc).__name__} {detail}): pass a .pt file written by torch.save") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise KdcError(f"{path} holds no state_dict (a dict of tensors): pass a checkpoint written by kdc compress or torch.save(model.state_dict())")
    mismatch = describe_mismatch(model.state_dict(), state)
    if mismatch:
        made = checkpoint.get("model") if isinstance(checkpoint, dict) else None
        holds = f" (the file says it holds a {made})" if isinstance(made, str) else ""
        raise KdcError(
            f"weights in {path}{holds} do not fit {architecture_name(model)}: {mismatch}. Was it trained with the same "
            f"--teacher and dataset (classes, channels)?"
        )
    model.load_state_dict(state)
    set_stem_stride(model, checkpoint.get("stem_stride") if isinstance(checkpoint, dict) else None)
    return {k: v for k, v in checkpoint.items() if k != "state_dict"}


def architecture_name(model: Any) -> str:
    """The timm name a model was built from (its class name where timm kept none)."""
    return getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__


def describe_mismatch(expected: dict[str, Any], found: dict[str, Any]) -> str:
    """What keeps a state_dict from loading into a model, in words ('' when it fits)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    reshaped = [k for k in expected if k in found and tuple(expected[k].shape) != tuple(found[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} of its {len(expected)} tensors are missing (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} in the file are not in it (first: {unexpected[0]})")
    if reshaped:
        k = reshaped[0]
        shape = lambda t: "x".join(map(str, t.shape)) or "scalar"  # noqa: E731
        parts.append(f"{len(reshaped)} have another shape (first: {k}, {shape(found[k])} in the file, {shape(expected[k])} here)")
    return "; ".join(parts)


def pooled_width(model: Any) -> int:
    """Width of forward_head(x, pre_logits=True): timm's head_hidden_size where a head conv widens the pooled
    features (MobileNetV3/V4: 960 -> 1280), else num_features."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def create_projection(student: Any, teacher: Any) -> Any:
    """Linear map from the student's pooled features to the teacher's (training only, never exported)."""
    import torch.nn as nn

    return nn.Linear(pooled_width(student), pooled_width(teacher))
