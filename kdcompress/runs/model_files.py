"""What a compress run writes for each model it trains: its checkpoint's rebuild record, its ONNX export (checked
against PyTorch and stamped with its metadata) and manifest entry, the warnings its test scores call for, and the
run's sample files (test, validation and calibration images)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from kdcompress.core import roles
from kdcompress.core.reporter import Reporter
from kdcompress.core.roles import TEACHER, pruned_ratio
from kdcompress.data.dataset import materialize
from kdcompress.deploy.manifest import ModelEntry, file_sha256
from kdcompress.deploy.metadata import file_metadata, stamp
from kdcompress.train.fair import Prepared

if TYPE_CHECKING:
    from kdcompress.train.export import Exports


CALIBRATION_IMAGES = 512  # training images kept for INT8 calibration (kdc quantize)


def exporter(run: Prepared, reporter: Reporter, exports: Exports | None) -> Callable[[str, Any], None]:
    """What to do with each model once it is trained: save its checkpoint and start its export (rank 0)."""

    def done(role: str, model: Any) -> None:
        if exports is None:
            return
        if exports.background:
            reporter.info(f"exporting {role} to ONNX in a worker process, beside the training")
        exports.submit(role, model, checkpoint_meta(run, role, model))

    return done


def checkpoint_meta(run: Prepared, role: str, model: Any) -> dict[str, Any]:
    """What a checkpoint needs besides its weights to rebuild the network (models.save_checkpoint): for a student
    carved from the teacher, the teacher's architecture and the pruned structure (train.prune.rebuild)."""
    from kdcompress.train.prune import structure

    architecture = run.cfg.teacher if role == TEACHER else roles.student_of(role) or run.cfg.students[0]
    ratio = pruned_ratio(architecture)
    meta = {"model": architecture, "classes": run.data.classes, "in_chans": run.data.channels}
    if ratio is not None:
        meta.update(model=run.cfg.teacher, pruned={"ratio": ratio, "structure": structure(model)})
    return meta


def save_samples(run: Prepared, staging: Path) -> None:
    """The test images as fed to the models, the validation split (kdc quantize chooses its INT8 file on it), and
    CALIBRATION_IMAGES training images for INT8 calibration."""
    data = run.data
    np.savez_compressed(staging / "test_set.npz", images=materialize(data.test_x), labels=data.test_y)
    np.savez_compressed(staging / "validation.npz", images=materialize(data.val_x), labels=data.val_y)  # INT8 is chosen on it
    rng = np.random.default_rng(run.cfg.seed)
    pick = np.sort(rng.choice(len(data.train_y), size=min(CALIBRATION_IMAGES, len(data.train_y)), replace=False))
    np.savez_compressed(staging / "calibration.npz", images=data.train_x[pick], labels=data.train_y[pick])


def export_model(
    run: Prepared, role: str, model: Any, exports: Exports, reporter: Reporter, logits: Any = None, run_name: str = ""
) -> tuple[ModelEntry, np.ndarray]:
    """Score one model on the test split (logits: its training's own score, where it has one) and finish its ONNX
    export (checked against PyTorch), which then describes itself (deploy.metadata: classes, preprocessing, origin).

    Returns its manifest entry and which test images it gets right (for the verdicts).
    """
    from kdcompress.train.loop import predict_logits
    from kdcompress.train.models import count_parameters
    from kdcompress.train.seed import Score

    data = run.data
    if logits is None:
        logits = predict_logits(model, data.test_x, run.prep, run.device)
    score = Score(logits, data.test_y)
    correct = score.correct
    if not exports.background:
        reporter.info(f"exporting {role} to ONNX and checking it against PyTorch")
    parity = exports.parity(role, model)
    onnx_path = exports.folder / f"{role}.onnx"
    stamp(onnx_path, file_metadata(data.classes, run.prep, data.name, run_name, role))
    meta = checkpoint_meta(run, role, model)
    pruned = {"pruned": {"teacher": meta["model"], **meta["pruned"]}} if "pruned" in meta else {}
    entry = ModelEntry(
        architecture=f"{meta['model']} pruned {meta['pruned']['ratio']:.0%}" if pruned else meta["model"],
        onnx=onnx_path.name,
        parameters=count_parameters(model),
        onnx_bytes=onnx_path.stat().st_size,
        test_accuracy=score.accuracy,
        test_correct=int(correct.sum()),
        details={"checkpoint": f"checkpoints/{role}.pt", "per_class_accuracy": score.per_class(data.classes), "export": parity,
                 "sha256": file_sha256(onnx_path), **pruned},  # fmt: skip
    )
    return entry, correct


def model_warnings(entries: dict[str, ModelEntry]) -> list[str]:
    """A warning for each baseline the teacher does not beat (distilling from it can only pass on its mistakes), and
    for each trained model that gives one class to every test image (it learned no more than the class counts)."""
    teacher = entries[TEACHER].test_accuracy
    below = [
        f"the teacher ({teacher:.1%}) scores below the {roles.label(name)} student ({entry.test_accuracy:.1%}): "
        f"distilling from it can only pass on its mistakes"
        for name, entry in entries.items()
        if roles.kind_of(name) == "baseline" and teacher < entry.test_accuracy
    ]
    return below + [warning for name, entry in entries.items() if (warning := one_class_warning(name, entry))]


def one_class_warning(role: str, entry: ModelEntry) -> str | None:
    """The warning for a model whose test recall is 1 for one class and 0 for every other: it answers that class for
    every image, so its accuracy is that class's share of the test split, whatever the table's Δ suggests."""
    recall = {name: r for name, r in entry.details.get("per_class_accuracy", {}).items() if r is not None}
    answered = [name for name, r in recall.items() if r > 0]
    if len(recall) < 2 or len(answered) != 1 or recall[answered[0]] < 1:
        return None
    also = " (distilling from it passes on nothing)" if role == TEACHER else ""
    return (
        f"the {roles.label(role)} model answers {answered[0]} for every test image{also}: it learned no more than "
        f"the class counts; train longer (--epochs, --teacher-epochs) or on more images"
    )


