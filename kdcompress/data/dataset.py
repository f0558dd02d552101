"""Datasets split into train / validation / test: uint8 arrays in memory, or (streamed) image files on disk.

Streamed files (`image_files.ImageFiles`) are decoded batch by batch in DataLoader workers (`load_batches`,
`batches`). Every image goes through `preprocessing.pil_to_array`, the same path `kdc predict` uses, so a file
classified later sees exactly the preprocessing the models were evaluated with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from kdcompress.core.errors import KdcError
from kdcompress.core.reporter import NullReporter, Reporter
from kdcompress.core.world import launched, usable_cores
from kdcompress.data import readers
from kdcompress.data.image_files import ImageFiles
from kdcompress.data.specs import resolve_spec
from kdcompress.data.split import stratified_split
from kdcompress.deploy.preprocessing import Preprocessing

STATS_CHUNK = 1024  # images per chunk when measuring the training split's mean and std
MAX_WORKERS = 8  # DataLoader processes decoding streamed images, per training process
# How they start: from a clean server process, not forked from this one. A fork of a process that has loaded
# onnxruntime or OpenVINO (a run exports and checks each model as it goes; the suite runs the real-data tests first)
# crashed the parent with SIGSEGV as the workers started, on a 2-core Xeon with AMX.
WORKER_START = "forkserver"
PREFETCH = 4  # batches each of them decodes ahead
PARALLEL_FROM = 256  # images: below this, worker processes cost more to start than the decoding they would share
UNLABELED = -1  # the label of an image without one (--unlabeled): the cross-entropy leaves it out, the teacher's term keeps it


@dataclass
class Dataset:
    """Images as uint8 N x C x H x W arrays (or, streamed, `ImageFiles` on disk) and int64 labels, for each split."""

    name: str
    classes: list[str]
    channels: int
    image_size: int
    flip: bool
    source: str
    train_x: np.ndarray | ImageFiles
    train_y: np.ndarray
    val_x: np.ndarray | ImageFiles
    val_y: np.ndarray
    test_x: np.ndarray | ImageFiles
    test_y: np.ndarray
    # Auxiliary images of other classes (cifar3: the rest of CIFAR-10's training batches), for the
    # teacher only. Their labels continue after the dataset's own: len(classes) + i for aux_classes[i].
    aux_classes: tuple[str, ...] = ()
    aux_x: np.ndarray | None = None
    aux_y: np.ndarray | None = None
    source_sizes: tuple[str, ...] = ()  # the images' sizes ('WxH') before resizing, for the manifest
    source_channels: tuple[int, ...] = ()  # the images' own colour channels (1, 3) before conversion, for the manifest
    # Images without labels (--unlabeled), for the distilled students only: they learn them from the teacher's outputs.
    unlabeled_x: np.ndarray | None = None
    unlabeled_source: str = ""  # where they came from, in words

    def with_auxiliary(self) -> "Dataset":
        """This dataset with the auxiliary images added to its training split (validation and test unchanged)."""
        if self.aux_x is None or self.aux_y is None:
            return self
        return replace(
            self,
            train_x=np.concatenate([self.train_x, self.aux_x]),
            train_y=np.concatenate([self.train_y, self.aux_y]),
            aux_classes=(),
            aux_x=None,
            aux_y=None,
        )

    def with_unlabeled(self) -> "Dataset":
        """This dataset with the images without labels added to its training split, labelled UNLABELED (what a
        distilled student trains on); validation and test unchanged."""
        if self.unlabeled_x is None:
            return self
        assert not isinstance(self.train_x, ImageFiles), "--unlabeled is refused with streamed data (config)"
        return replace(
            self,
            train_x=np.concatenate([self.train_x, self.unlabeled_x]),
            train_y=np.concatenate([self.train_y, np.full(len(self.unlabeled_x), UNLABELED, np.int64)]),
            unlabeled_x=None,
        )

    def preprocessing(self) -> Preprocessing:
        """Per-channel mean and std measured on the training split."""
        # In chunks of images, so that large datasets need no float copy of all their pixels.
        n, channels, height, width = self.train_x.shape
        total, squares = np.zeros(channels), np.zeros(channels)
        for chunk in batches(self.train_x, STATS_CHUNK):
            pixels = chunk.astype(np.float64) / 255.0
            total += pixels.sum(axis=(0, 2, 3))
            squares += np.square(pixels).sum(axis=(0, 2, 3))
        count = n * height * width
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
        std = np.where(std < 1e-6, 1.0, std)
        return Preprocessing(
            image_size=self.image_size,
            channels=self.channels,
            mean=tuple(round(float(v), 6) for v in mean),
            std=tuple(round(float(v), 6) for v in std),
        )

    def fingerprint(self, auxiliary: bool = False) -> str:
        """Hash of the training and validation data: a cached teacher is reused only for the same data.

        With auxiliary, the auxiliary images count too (for a teacher trained on them).
        """
        digest = hashlib.sha256()
        arrays = [self.train_x, self.train_y, self.val_x, self.val_y]
        if auxiliary and self.aux_x is not None and self.aux_y is not None:
            arrays += [self.aux_x, self.aux_y]
            digest.update(repr(self.aux_classes).encode())
        for array in arrays:
            digest.update(array.digest() if isinstance(array, ImageFiles) else np.ascontiguousarray(array).tobytes())
        digest.update(repr((self.classes, self.image_size, self.channels)).encode())
        return digest.hexdigest()[:16]

    @property
    def streamed(self) -> bool:
        """Whether the images stay on disk and are decoded batch by batch (`--stream`)."""
        return isinstance(self.train_x, ImageFiles)

    def counts(self) -> dict[str, int]:
        """Number of images per split."""
        return {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)}


def load_dataset(
    name: str,
    data_dir: str | Path | None,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    reporter: Reporter | None = None,
    stream: bool = False,
) -> Dataset:
    """Load a dataset by name, resized to image_size, with a stratified validation split.

    stream keeps a folder's images on disk (read batch by batch); folders too large for memory stream anyway.
    """
    reporter = reporter or NullReporter()
    spec = resolve_spec(name)
    size = image_size or spec.image_size
    if spec.needs_data_dir and data_dir is None:
        raise KdcError(f"--dataset {name} needs --data-dir pointing at the image folder")
    if stream and not spec.needs_data_dir:
        raise KdcError(f"--stream reads image folders (--dataset folder or chest-xray); {name} is held in memory")
    if name == "digits":
        source = readers.load_digits(size)
    elif name == "cifar3":
        source = readers.load_cifar3(Path(data_dir) if data_dir is not None else Path("data"), size, reporter)
    else:
        root = Path(data_dir)  # type: ignore[arg-type]
        if name == "chest-xray" and not (root / "train").is_dir() and (root / "chest_xray" / "train").is_dir():
            root = root / "chest_xray"
        source = readers.load_folder(root, size, 1 if name == "chest-xray" else 3, reporter, stream)
    train_x, train_y, val_x, val_y = stratified_split(source.train_x, source.train_y, val_fraction, source.classes)
    dataset = Dataset(
        name=name,
        classes=source.classes,
        channels=source.channels,
        image_size=size,
        flip=spec.flip,
        source=source.description,
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        val_y=val_y,
        test_x=source.test_x,
        test_y=source.test_y,
        aux_classes=source.aux_classes,
        aux_x=source.aux_x,
        aux_y=source.aux_y,
        source_sizes=source.sizes,
        source_channels=source.source_channels,
    )
    for split, count in dataset.counts().items():
        if count == 0:
            raise KdcError(f"the {split} split of {source.description} is empty: it needs images in every class")
    return dataset


def loader_workers() -> int:
    """DataLoader processes per training process: this machine's cores shared by the processes torchrun put on it."""
    return max(1, min(MAX_WORKERS, usable_cores() // launched().local_size))


class _Decoded:
    """A map-style dataset over ImageFiles: item i is image i as a uint8 tensor (decoded in a worker)."""

    def __init__(self, files: ImageFiles) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Any:
        import torch

        return torch.from_numpy(self.files[index])


def load_batches(files: ImageFiles, index_batches: list[list[int]], device: str) -> Iterator[Any]:
    """The images of each index batch, in order, as uint8 N x C x H x W tensors on device, decoded in DataLoader workers."""
    from torch.utils.data import DataLoader

    workers = loader_workers() if sum(len(batch) for batch in index_batches) >= PARALLEL_FROM else 0
    loader = DataLoader(
        _Decoded(files),
        batch_sampler=index_batches,
        num_workers=workers,
        prefetch_factor=PREFETCH if workers else None,
        pin_memory=device == "cuda",
        multiprocessing_context=WORKER_START if workers else None,
    )
    try:
        for batch in loader:
            yield batch.to(device, non_blocking=True)
    except KdcError as exc:  # raised in a worker: DataLoader adds the worker's traceback to the message
        raise KdcError(str(exc).strip().splitlines()[-1].split("KdcError: ", 1)[-1]) from None
    except RuntimeError as exc:
        if "DataLoader worker" not in str(exc):
            raise
        raise KdcError(f"a process decoding images stopped ({exc}); if memory is short, lower --batch-size") from None


def batches(images: np.ndarray | ImageFiles, batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive uint8 batches of images: slices of an array, or files decoded in DataLoader workers."""
    if isinstance(images, ImageFiles):
        order = [list(range(start, min(start + batch_size, len(images)))) for start in range(0, len(images), batch_size)]
        for batch in load_batches(images, order, "cpu"):
            yield batch.numpy()
        return
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


def materialize(images: np.ndarray | ImageFiles) -> np.ndarray:
    """All images as one uint8 array (streamed ones decoded): for files that hold them, such as test_set.npz."""
    if not isinstance(images, ImageFiles):
        return images
    return np.concatenate(list(batches(images, STATS_CHUNK))) if len(images) else np.zeros(images.shape, np.uint8)
