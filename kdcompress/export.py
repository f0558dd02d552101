"""Export a trained network to a self-contained ONNX file and prove it computes what PyTorch does."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from kdcompress.errors import KdcError
from kdcompress.runtime import Preprocessing, create_session, run_logits
from kdcompress.train import predict_logits

# Largest accepted |onnxruntime - torch| logit difference, relative to the logit scale: 1e-3 for logits
# up to 1 in magnitude, 1e-3 * max|logit| beyond. Float32 itself is no closer: for a network whose
# logits reach ~100, PyTorch's own float32 output differs from float64 by ~2e-3.
PARITY_TOLERANCE = 1e-3
PARITY_IMAGES = 256  # real test images compared


def export_onnx(model: nn.Module, path: Path, prep: Preprocessing, images: np.ndarray) -> dict[str, Any]:
    """Write model to path (dynamic batch axis, weights inside), check it, compare with torch on images."""
    import onnx

    model = model.eval().cpu()
    example = torch.zeros(2, prep.channels, prep.image_size, prep.image_size)  # batch 2: keeps the axis dynamic
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            torch.onnx.export(
                model,
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
