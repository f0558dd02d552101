"""`kdc predict`: classify image files with a model of a run, through onnxruntime (no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kdcompress.core import roles
from kdcompress.core.errors import KdcError
from kdcompress.deploy.manifest import Manifest, model_file, read_manifest, resolve_runs
from kdcompress.deploy.preprocessing import IMAGE_SUFFIXES, list_images, load_image, normalize
from kdcompress.deploy.sessions import check_model
from kdcompress.deploy.targets import create_session, TARGETS
from kdcompress.core.stats import softmax


def resolve_model_file(run_dir: Path, manifest: Manifest, model: str) -> Path:
    """teacher | baseline | student | control | int8 | fp16 of the run (student-ARCH ... in a run with several
    students), or an explicit .onnx file."""
    if model in manifest.models:
        return model_file(run_dir, model, manifest.models[model])
    several = [r for r in roles.ordered(manifest.models) if roles.kind_of(r) == model and roles.student_of(r)]
    if several:
        raise KdcError(f"{run_dir} has several students: pick one with --model {' or '.join(several)}")
    if model in ("int8", "fp16"):
        raise KdcError(f"{run_dir} has no {model.upper()} model yet: run kdc quantize {run_dir}")
    if model.endswith(".onnx"):
        if not Path(model).is_file():
            raise KdcError(f"ONNX model not found: {model}")
        return Path(model)
    if model == "control":
        raise KdcError(f"{run_dir} has no label-smoothing control (it was trained with --control none)")
    raise KdcError(f"unknown model '{model}': use {', '.join(manifest.models)} or a path to a .onnx file")


URL_SCHEMES = ("http", "https", "ftp", "s3", "gs", "file")


def is_url(path: Path) -> bool:
    """Whether an argument was a URL: a path that is not there and reads SCHEME:/... (the shell's // folded to /)."""
    scheme, colon, _ = str(path).partition(":/")
    return bool(colon) and scheme.lower() in URL_SCHEMES and not path.exists()


def expand_inputs(inputs: list[Path], classes: list[str]) -> list[tuple[Path, int | None]]:
    """Files as given, folders replaced by their images; each with its label where a folder says it.

    A folder laid out as DIR/<class>/* (a test set, as people keep them) is walked in full, and when
    its sub-folders are named after the run's classes every image is labelled by its sub-folder.
    """
    files: list[tuple[Path, int | None]] = []
    for item in inputs:
        if not item.is_dir():
            files.append((item, None))  # missing files are reported per file by predict_images
            continue
        found = list_images(item, recursive=True)
        if not found:
            raise KdcError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {item} or its sub-folders")
        groups = {p.relative_to(item).parts[0] for p in found if p.parent != item}
        labelled = bool(groups) and groups <= set(classes) and all(p.parent != item for p in found)
        files.extend((p, classes.index(p.relative_to(item).parts[0]) if labelled else None) for p in found)
    return files


RUNTIMES = {"onnxruntime": "onnxruntime-cpu", "openvino": "openvino-cpu"}  # kdc predict --runtime -> its target


def predict_images(
    inputs: list[Path], run: Path | None = None, model: str = "student", top_k: int = 3, artifacts: Path = Path("artifacts"),
    runtime: str = "onnxruntime",
) -> dict[str, Any]:
    """Top-k classes per image; an unreadable image gets an error entry while the others are classified.

    runtime: onnxruntime or openvino (at f32): the same preprocessing and the same output.

    Images labelled by their folder (DIR/<class>/*) are also scored: `scores` holds accuracy and,
    for two classes, sensitivity and specificity.
    """
    from kdcompress.deploy.benchmark import classification_metrics

    if top_k < 1:
        raise KdcError(f"--top-k must be at least 1, got {top_k}")
    run_dir = resolve_runs(run if run is not None else artifacts)[0]
    manifest = read_manifest(run_dir)
    classes = manifest.dataset.classes
    prep = manifest.preprocessing
    if runtime not in RUNTIMES:
        raise KdcError(f"--runtime must be {' or '.join(RUNTIMES)}, not '{runtime}'")
    target = TARGETS[RUNTIMES[runtime]]
    problem = target.problem()
    if problem:
        raise KdcError(f"--runtime {runtime}: {problem}")
    model_file = resolve_model_file(run_dir, manifest, model)
    check_model(create_session(model_file), prep, classes, model_file)  # the file fits the run, whichever runtime runs it
    loaded = target.load(model_file, None, "f32" if runtime == "openvino" else "native")
    results = []
    scored_logits, scored_labels = [], []
    for path, label in expand_inputs(inputs, classes):
        try:
            if is_url(path):
                raise KdcError(f"{str(path).replace(':/', '://', 1)}: URLs are not supported; download the image first and pass the file")
            image = load_image(path, prep.image_size, prep.channels)
        except KdcError as exc:
            results.append({"file": str(path), "error": str(exc)})
            continue
        logits = loaded.run(normalize(image[None], prep))[0]
        probabilities = softmax(logits[None])[0]
        order = np.argsort(-probabilities)[: min(top_k, len(classes))]
        entry: dict[str, Any] = {
            "file": str(path),
            "predictions": [{"class": classes[i], "probability": float(probabilities[i])} for i in order],
            "logits": [float(v) for v in logits],
        }
        if label is not None:
            entry["label"] = classes[label]
            scored_logits.append(logits)
            scored_labels.append(label)
        results.append(entry)
    output: dict[str, Any] = {"run": str(run_dir), "model": str(model_file), "runtime": loaded.target.name,
                              "precision": loaded.precision, "classes": classes, "results": results}  # fmt: skip
    if scored_labels:
        metrics = classification_metrics(np.stack(scored_logits), np.asarray(scored_labels), classes)
        keep = ("accuracy", "correct", "sensitivity", "specificity", "roc_auc")
        output["scores"] = {"images": len(scored_labels), **{k: metrics[k] for k in keep if k in metrics}}
    return output
