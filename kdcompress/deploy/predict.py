"""`kdc predict`: classify image files with a model of a run, through onnxruntime (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdcompress.core import roles
from kdcompress.core.errors import KdcError
from kdcompress.core.stats import softmax
from kdcompress.deploy.manifest import Manifest, model_file, read_manifest
from kdcompress.deploy.preprocessing import IMAGE_SUFFIXES, Preprocessing, image_shape, list_images, load_image, normalize
from kdcompress.deploy.run_lookup import resolve_runs
from kdcompress.deploy.sessions import check_model
from kdcompress.deploy.targets import TARGETS, create_session


def resolve_model_file(run_dir: Path, manifest: Manifest, model: str) -> Any:
    """teacher | baseline | student | control | int8 | fp16 of the run (student-ARCH ... in a run with several
    students), or an explicit .onnx file."""
    if model in manifest.models:
        return model_file(run_dir, model, manifest.models[model])
    by_file = {entry.onnx: role for role, entry in manifest.models.items()}  # the file's name works too (as benchmark says it)
    for name in (model, f"{model}.onnx"):
        if name in by_file and not Path(name).parent.parts:
            return model_file(run_dir, by_file[name], manifest.models[by_file[name]])
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


def choose_run(run: Path | None, artifacts: Path) -> Path:
    """The run to predict with: --run, or the newest finished run under artifacts when every run there is of the same
    dataset and classes; runs of several datasets without --run are refused (never guess: a digits model would label
    an X-ray "8")."""
    from kdcompress.deploy.run_lookup import list_runs

    if run is not None:
        return resolve_runs(run)[0]
    found = resolve_runs(artifacts) if (artifacts / "manifest.json").is_file() else None
    if found:
        return found[0]
    kinds: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for folder in list_runs(artifacts):
        try:
            manifest = read_manifest(folder)
        except KdcError:
            continue
        kind = (manifest.dataset.name, tuple(manifest.dataset.classes), manifest.dataset.fingerprint or "")
        kinds.setdefault(kind, []).append(folder.name)
    if len(kinds) > 1:  # another fingerprint is other data, even under the same dataset name and classes
        listed = "; ".join(
            f"{name} ({', '.join(classes[:3])}{', ...' if len(classes) > 3 else ''}{f', data {print_[:8]}' if print_ else ''}): {runs[-1]}"
            for (name, classes, print_), runs in kinds.items()
        )
        raise KdcError(f"{artifacts} holds runs of {len(kinds)} different datasets ({listed}): pass --run with the run whose classes your images are")
    return resolve_runs(artifacts)[0]


def recommended_model(run_dir: Path) -> tuple[str | None, str]:
    """The model the run's last `kdc benchmark` under a budget recommended, and why there is none when there is none.

    benchmark.json is read as every run file is (a regular file inside the run, size-capped) and through
    BenchmarkResult.from_dict, which checks its types: a damaged one is a KdcError, never a guess."""
    from kdcompress.deploy.manifest import read_run_json
    from kdcompress.deploy.results import BenchmarkResult

    if not (run_dir / "benchmark.json").exists() and not (run_dir / "benchmark.json").is_symlink():
        return None, "no kdc benchmark has run on it"
    remedy = "run kdc benchmark again, or pick the model with --model"
    from kdcompress.deploy.results import FORMAT, READABLE

    data = read_run_json(run_dir, "benchmark.json", remedy)
    if isinstance(data, dict) and isinstance(data.get("format"), str) and data["format"] not in READABLE:  # an older kdc's
        return None, f"its benchmark.json is of format {data['format'][:40]!r}, not {FORMAT}: run kdc benchmark again to record one"
    try:
        result = BenchmarkResult.from_dict(data)
    except KdcError as exc:
        raise KdcError(f"{run_dir / 'benchmark.json'}: {exc}" if "benchmark.json" not in str(exc) else str(exc)) from None
    if result.recommendation is None or not result.recommendation.get("model"):
        return None, "its last kdc benchmark had no budget (--max-ms, --max-mb, --max-drop), so no recommendation is recorded"
    return result.recommendation["model"], ""


@dataclass(frozen=True)
class _Source:
    """What predict classifies with: the model file and what it needs to know, from a run or from the file alone."""

    model_file: Any  # manifest.ModelFile of a run, or the Path of a file alone
    model_name: str
    chosen_by: str
    classes: list[str]
    prep: Preprocessing
    dataset: str
    run: str  # the run folder, or, for a file alone, the run its metadata names
    source_sizes: list[str] = field(default_factory=list)  # the training images' sizes, where a run recorded them
    source_channels: list[int] = field(default_factory=list)


def _from_run(run: Path | None, artifacts: Path, model: str | None) -> _Source:
    """A model of a run: --run, or the newest run under --artifacts; the model --model names, or the recommended one."""
    run_dir = choose_run(run, artifacts)
    manifest = read_manifest(run_dir)
    chosen_by = "--model"
    if model is None:
        model, why_not = recommended_model(run_dir)
        chosen_by = "the last kdc benchmark's recommendation"
        if model is None or model not in manifest.models:
            why_not = why_not or f"the recommended {model} is not a model of the run"
            model, chosen_by = "student", f"the default: {why_not}"  # several students: resolve_model_file asks which
    return _Source(
        resolve_model_file(run_dir, manifest, model), model, chosen_by, manifest.dataset.classes, manifest.preprocessing,
        manifest.dataset.name, str(run_dir), list(manifest.dataset.source_sizes), list(manifest.dataset.source_channels),
    )  # fmt: skip


def _from_file(path: Path) -> _Source | None:
    """A .onnx file alone, classified by what its metadata says (deploy.metadata); None for a file without it (an older
    run's, another tool's): predict then reads it through a run, as before."""
    from kdcompress.deploy.metadata import read_metadata

    if not path.is_file():
        raise KdcError(f"ONNX model not found: {path}")
    described = read_metadata(path)
    if described is None:
        return None
    return _Source(path, described.role, f"the file alone (its metadata: run {described.run})", described.classes,
                   described.preprocessing, described.dataset, f"{described.run} (from {path.name}'s metadata)")  # fmt: skip


def predict_images(
    inputs: list[Path], run: Path | None = None, model: str | None = None, top_k: int = 1, artifacts: Path = Path("artifacts"),
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
    if model is None and inputs and inputs[0].suffix.lower() == ".onnx":  # kdc predict FILE.onnx IMAGE...
        model, inputs = str(inputs[0]), inputs[1:]
        if not inputs:
            raise KdcError(f"give the images to classify after {model}")
    if runtime not in RUNTIMES:
        raise KdcError(f"--runtime must be {' or '.join(RUNTIMES)}, not '{runtime}'")
    target = TARGETS[RUNTIMES[runtime]]
    problem = target.problem()
    if problem:
        raise KdcError(f"--runtime {runtime}: {problem}")
    source = _from_file(Path(model)) if run is None and model is not None and model.endswith(".onnx") else None
    source = source or _from_run(run, artifacts, model)
    classes, prep, model_file = source.classes, source.prep, source.model_file
    loaded = target.load(model_file, None, "f32" if runtime == "openvino" else "native")
    session = loaded.details.get("session") or create_session(model_file)  # onnxruntime's own, or one to check with
    check_model(session, prep, classes, model_file)  # the file fits the run, whichever runtime runs it
    results = []
    scored_logits, scored_labels = [], []
    resized, converted = 0, 0
    # Images unlike the training ones: of a size none of them had (before resizing), where the run recorded those
    # sizes; in an older run (or a file alone), of another size than the model's input.
    trained = [] if "various" in source.source_sizes else source.source_sizes
    usual = set(trained) if source.source_sizes else {f"{prep.image_size}x{prep.image_size}"}
    for path, label in expand_inputs(inputs, classes):
        try:
            if is_url(path):
                raise KdcError(f"{str(path).replace(':/', '://', 1)}: URLs are not supported; download the image first and pass the file")
            image = load_image(path, prep.image_size, prep.channels)
            size, bands = image_shape(path)
            resized += bool(usual) and f"{size[0]}x{size[1]}" not in usual
            converted += bands != prep.channels and bands not in source.source_channels
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
    output: dict[str, Any] = {"run": source.run, "model": str(model_file), "model_name": source.model_name,
                              "chosen_by": source.chosen_by, "dataset": source.dataset, "runtime": loaded.target.name,
                              "precision": loaded.precision, "classes": classes, "results": results, "warnings": []}  # fmt: skip
    classified = sum("error" not in r for r in results)
    if resized and trained:
        shown = ", ".join(trained[:3]) + (", ..." if len(trained) > 3 else "")
        output["warnings"].append(
            f"{resized} of {classified} image(s) are of another size than the images the run was trained from ({shown} px): "
            f"resized to {prep.image_size} x {prep.image_size} as those were (bilinear), they may still not fit a model "
            f"trained on other images ({source.dataset})"
        )
    elif resized:
        output["warnings"].append(
            f"{resized} of {classified} image(s) are not {prep.image_size} x {prep.image_size} px, the run's size: they were "
            f"resized to it (bilinear); a model trained on other images ({source.dataset}) may not fit them"
        )
    if converted:
        output["warnings"].append(
            f"{converted} of {classified} image(s) have other channels than the run's {prep.channels} "
            f"({'grayscale' if prep.channels == 1 else 'RGB'}) and than the images it was trained from: they were converted"
        )
    if scored_labels:
        metrics = classification_metrics(np.stack(scored_logits), np.asarray(scored_labels), classes)
        keep = ("accuracy", "correct", "sensitivity", "specificity", "roc_auc")
        output["scores"] = {"images": len(scored_labels), **{k: metrics[k] for k in keep if k in metrics}}
    return output
