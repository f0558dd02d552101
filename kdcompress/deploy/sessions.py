"""onnxruntime sessions (made by targets.create_session): check one fits a run, and run it on uint8 images (no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kdcompress.core.errors import KdcError
from kdcompress.deploy.preprocessing import Preprocessing, normalize


def run_logits(session: Any, images: np.ndarray, prep: Preprocessing, batch_size: int = 256) -> np.ndarray:
    """Logits for uint8 N x C x H x W images, batch by batch."""
    input_name = session.get_inputs()[0].name
    outputs = [
        session.run(None, {input_name: normalize(images[start : start + batch_size], prep)})[0]
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs, axis=0) if outputs else np.zeros((0, 0), dtype=np.float32)


def check_model(session: Any, prep: Preprocessing, classes: list[str], path: str | Path) -> None:
    """A KdcError when an ONNX model cannot take this run's images, or does not give one output per class."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = inputs[0].shape if len(inputs) == 1 else []
    expected = [None, prep.channels, prep.image_size, prep.image_size]
    fixed = [(got, want) for got, want in zip(shape[1:], expected[1:]) if isinstance(got, int)]
    if len(inputs) != 1 or len(shape) != 4 or any(got != want for got, want in fixed):
        found = shape if len(inputs) == 1 else f"{len(inputs)} inputs"
        raise KdcError(
            f"{path} takes input {found}, but this run's images are {prep.channels} x {prep.image_size} x {prep.image_size}: "
            f"use the run that made the model (--run)"
        )
    width = outputs[0].shape[-1] if outputs and outputs[0].shape else None
    if not isinstance(width, int):  # a symbolic class axis: ask the model itself
        probe = np.zeros((1, prep.channels, prep.image_size, prep.image_size), dtype=np.float32)
        try:
            width = int(np.asarray(session.run(None, {inputs[0].name: probe})[0]).shape[-1])
        except Exception as exc:  # onnxruntime's own error types
            raise KdcError(f"onnxruntime cannot run {path} ({str(exc).splitlines()[0]}): the model file is damaged") from None
    if width != len(classes):
        raise KdcError(
            f"{path} gives {width} outputs, but this run has {len(classes)} classes: it is not a model of this run; "
            f"use the run that made it (--run)"
        )
