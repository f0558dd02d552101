"""The datasets kdc knows by name, and what each needs by default (image size, epochs, teacher, flips)."""

from __future__ import annotations

from dataclasses import dataclass

from kdcompress.core.errors import KdcError


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset needs by default: its own image size and epochs, and which augmentations are valid."""

    name: str
    summary: str
    image_size: int  # default model input side in pixels
    epochs: int  # default epochs for each of the three trainings
    flip: bool  # horizontal flips keep the label (not so for handwritten digits)
    needs_data_dir: bool
    # Teacher epochs per student epoch by default. cifar3: 2, as its teacher learns 10 classes from
    # 3.6x the images and gains from the longer schedule (benchmarks/README.md, "What did each teacher-recipe step buy?").
    # digits: 4 (20 teacher epochs, 5 for each student), so that the teacher beats the student in every seed tried.
    teacher_epoch_factor: int = 1
    # The default teacher. digits: ResNet34, as EfficientNet-B3 from scratch stays below the ResNet18 baseline
    # in the 3-minute budget (benchmarks/README.md, "Is the default demo honest?").
    teacher: str = "efficientnet_b3"
    # The default students (comma-separated: each gets its baseline, distilled student and control). digits: two
    # students several times smaller and faster than its teacher that it beats in every seed (benchmarks/README.md,
    # "Is the default demo honest?"); the others: ResNet18, the project's reference student.
    student: str = "resnet18"
    # How the teacher's kept epoch is chosen on validation, and the decay of an EMA of its weights (0: none). digits:
    # the lowest loss of EMA 0.99 weights, as the best accuracy on its 144 validation images kept weaker mid-schedule
    # teachers (benchmarks/README.md, "Is the default demo honest?"); the others: the best accuracy, no EMA.
    teacher_select: str = "accuracy"
    teacher_ema: float = 0.0


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "digits",
            "scikit-learn's bundled 8x8 handwritten digits (offline default)",
            16,
            5,
            False,
            False,
            teacher_epoch_factor=4,
            teacher="resnet34",
            student="resnet10t",
            teacher_select="loss",
            teacher_ema=0.99,
        ),
        DatasetSpec(
            "cifar3",
            "CIFAR-10 airplane / automobile / bird from cifar-10-batches-py (the teacher also sees the 7 other classes)",
            32,
            30,
            True,
            False,
            teacher_epoch_factor=2,
        ),
        DatasetSpec("chest-xray", "Kaggle Chest X-Ray Images (Pneumonia): NORMAL vs PNEUMONIA", 32, 10, True, True),
        DatasetSpec("folder", "your own images: DIR/<class>/*.png or DIR/train|test/<class>/*.png", 32, 15, True, True),
    )
}


def resolve_spec(name: str) -> DatasetSpec:
    """The spec of a dataset name, or a KdcError listing the known ones."""
    if name not in DATASETS:
        raise KdcError(f"unknown dataset '{name}': choose one of {', '.join(DATASETS)}")
    return DATASETS[name]
