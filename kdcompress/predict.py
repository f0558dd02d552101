"""`kdc predict`: classify image files with a model of a run, through onnxruntime (no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kdcompress.errors import KdcError
from kdcompress.manifest import read_manifest, resolve_runs
from kdcompress.runtime import IMAGE_SUFFIXES, Preprocessing, create_session, list_images, load_image, run_logits, softmax


def resolve_model_file(run_dir: Path, manifest: dict[str, Any], model: str) -> Path:
    """teacher | baseline | student | int8 of the run, or an explicit .onnx file."""
    if model in manifest["models"]:
        return run_dir / manifest["models"][model]["onnx"]
    if model == "int8":
        raise KdcError(f"{run_dir} has no INT8 model yet: run kdc quantize {run_dir}")
    if model.endswith(".onnx"):
        if not Path(model).is_file():
            raise KdcError(f"ONNX model not found: {model}")
        return Path(model)
    raise KdcError(f"unknown model '{model}': use teacher, baseline, student, int8 or a path to a .onnx file")


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given, folders replaced by the images directly inside them (sorted)."""
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = list_images(item)
            if not found:
                raise KdcError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {item}")
            files.extend(found)
        else:
            files.append(item)  # missing files are reported per file by predict_images
    return files


def predict_images(
    inputs: list[Path], run: Path | None = None, model: str = "student", top_k: int = 3, artifacts: Path = Path("artifacts")
) -> dict[str, Any]:
    """Top-k classes per image; an unreadable image gets an error entry while the others are classified."""
    if top_k < 1:
        raise KdcError(f"--top-k must be at least 1, got {top_k}")
    run_dir = resolve_runs(run if run is not None else artifacts)[0]
    manifest = read_manifest(run_dir)
    classes = manifest["dataset"]["classes"]
    prep = Preprocessing.from_dict(manifest["preprocessing"])
    model_file = resolve_model_file(run_dir, manifest, model)
    session = create_session(model_file)
    results = []
    for path in expand_inputs(inputs):
        try:
            image = load_image(path, prep.image_size, prep.channels)
        except KdcError as exc:
            results.append({"file": str(path), "error": str(exc)})
            continue
        logits = run_logits(session, image[None], prep)[0]
        probabilities = softmax(logits[None])[0]
        order = np.argsort(-probabilities)[: min(top_k, len(classes))]
        results.append(
            {
                "file": str(path),
                "predictions": [{"class": classes[i], "probability": float(probabilities[i])} for i in order],
                "logits": [float(v) for v in logits],
            }
        )
    return {"run": str(run_dir), "model": str(model_file), "classes": classes, "results": results}
