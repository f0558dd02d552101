"""The fixed, stratified carving of validation and test splits, for arrays and for image files on disk alike."""

from __future__ import annotations

import numpy as np

from kdcompress.core.errors import KdcError
from kdcompress.data.image_files import ImageFiles

SPLIT_SEED = 0  # validation / test carving is fixed, whatever --seed says, so a teacher can be reused


def take(images: np.ndarray | ImageFiles, index: np.ndarray) -> np.ndarray | ImageFiles:
    """images[index]: an array's rows, or (streamed) the files at index, left on disk."""
    return images.subset(index) if isinstance(images, ImageFiles) else images[index]


def stratified_split(
    x: np.ndarray, y: np.ndarray, fraction: float, classes: list[str] | None = None, held_out: str = "validation"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Carve a stratified fraction out of (x, y) with the fixed split seed (held_out names it in errors)."""
    from sklearn.model_selection import train_test_split

    labels, counts = np.unique(y, return_counts=True)
    if counts.min() < 2:
        rare = int(labels[counts.argmin()])
        name = f"'{classes[rare]}'" if classes is not None else str(rare)
        raise KdcError(
            f"class {name} has {counts.min()} image(s): each class needs at least 2 to split off the {held_out} set"
        )
    held = max(int(round(len(y) * fraction)), len(labels))
    try:
        keep_idx, held_idx = train_test_split(np.arange(len(y)), test_size=held, stratify=y, random_state=SPLIT_SEED)
    except ValueError as exc:
        raise KdcError(f"too few images ({len(y)} in {len(labels)} classes) to split off a {held_out} set of {held}: {exc}") from None
    keep_idx, held_idx = _every_class_on_both_sides(np.asarray(keep_idx), np.asarray(held_idx), y)
    return take(x, keep_idx), y[keep_idx], take(x, held_idx), y[held_idx]


def _every_class_on_both_sides(keep: np.ndarray, held: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stratification rounds a small class's share down to nothing (30 cats and 2 dogs: a 20% test split of 6 images
    gets no dog, and the run would report 100% without ever scoring a dog). Every class with 2 or more images keeps
    at least one on each side: one image moves across where a side has none. The usual splits, where every class is
    on both sides already, are left exactly as they were."""
    keep, held = list(keep), list(held)
    for label in np.unique(y):
        mine_keep = [i for i in keep if y[i] == label]
        mine_held = [i for i in held if y[i] == label]
        if not mine_held and len(mine_keep) >= 2:
            keep.remove(mine_keep[-1])
            held.append(mine_keep[-1])
        elif not mine_keep and len(mine_held) >= 2:
            held.remove(mine_held[-1])
            keep.append(mine_held[-1])
    return np.sort(np.array(keep, dtype=np.int64)), np.sort(np.array(held, dtype=np.int64))
