"""Datasets held in memory as uint8 arrays, split into train / validation / test, and batch augmentation.

Every image goes through `runtime.pil_to_array`, the same path `kdc predict` uses, so a file
classified later sees exactly the preprocessing the models were evaluated with.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from kdcompress.errors import KdcError
from kdcompress.reporting import NullReporter, Reporter
from kdcompress.runtime import IMAGE_SUFFIXES, Preprocessing, load_image, resize_array

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR3_CLASSES = ("airplane", "automobile", "bird")  # CIFAR-10 labels 0, 1, 2
CIFAR10_OTHERS = ("cat", "deer", "dog", "frog", "horse", "ship", "truck")  # labels 3-9: cifar3's auxiliary classes
SPLIT_SEED = 0  # validation / test carving is fixed, whatever --seed says, so a teacher can be reused


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
    # 3.6x the images; measured (30 student epochs): teacher 85.6% test after 30 epochs, 89.3% after 60.
    teacher_epoch_factor: int = 1


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("digits", "scikit-learn's bundled 8x8 handwritten digits (offline default)", 16, 10, False, False),
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


@dataclass
class Dataset:
    """Images as uint8 N x C x H x W arrays and int64 labels, for each split."""

    name: str
    classes: list[str]
    channels: int
    image_size: int
    flip: bool
    source: str
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    # Auxiliary images of other classes (cifar3: the rest of CIFAR-10's training batches), for the
    # teacher only. Their labels continue after the dataset's own: len(classes) + i for aux_classes[i].
    aux_classes: tuple[str, ...] = ()
    aux_x: np.ndarray | None = None
    aux_y: np.ndarray | None = None

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

    def preprocessing(self) -> Preprocessing:
        """Per-channel mean and std measured on the training split."""
        pixels = self.train_x.astype(np.float64) / 255.0
        mean = pixels.mean(axis=(0, 2, 3))
        std = pixels.std(axis=(0, 2, 3))
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
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(repr((self.classes, self.image_size, self.channels)).encode())
        return digest.hexdigest()[:16]

    def counts(self) -> dict[str, int]:
        """Number of images per split."""
        return {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)}


def resolve_spec(name: str) -> DatasetSpec:
    """The spec of a dataset name, or a KdcError listing the known ones."""
    if name not in DATASETS:
        raise KdcError(f"unknown dataset '{name}': choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def load_dataset(
    name: str,
    data_dir: str | Path | None,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    reporter: Reporter | None = None,
) -> Dataset:
    """Load a dataset by name, resized to image_size, with a stratified validation split."""
    reporter = reporter or NullReporter()
    spec = resolve_spec(name)
    size = image_size or spec.image_size
    if spec.needs_data_dir and data_dir is None:
        raise KdcError(f"--dataset {name} needs --data-dir pointing at the image folder")
    aux: dict[str, Any] = {}
    if name == "digits":
        train_x, train_y, test_x, test_y, classes, channels, source = _load_digits(size)
    elif name == "cifar3":
        root = Path(data_dir) if data_dir is not None else Path("data")
        train_x, train_y, test_x, test_y, classes, channels, source, aux = _load_cifar3(root, size, reporter)
    else:
        root = Path(data_dir)  # type: ignore[arg-type]
        if name == "chest-xray" and not (root / "train").is_dir() and (root / "chest_xray" / "train").is_dir():
            root = root / "chest_xray"
        channels = 1 if name == "chest-xray" else 3
        train_x, train_y, test_x, test_y, classes, source = _load_folder(root, size, channels, reporter)
    train_x, train_y, val_x, val_y = stratified_split(train_x, train_y, val_fraction)
    dataset = Dataset(
        name=name,
        classes=classes,
        channels=channels,
        image_size=size,
        flip=spec.flip,
        source=source,
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        val_y=val_y,
        test_x=test_x,
        test_y=test_y,
        **aux,
    )
    for split, count in dataset.counts().items():
        if count == 0:
            raise KdcError(f"the {split} split of {source} is empty: it needs images in every class")
    return dataset


def stratified_split(
    x: np.ndarray, y: np.ndarray, fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Carve a stratified fraction out of (x, y) with the fixed split seed."""
    from sklearn.model_selection import train_test_split

    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < 2:
        rare = int(classes[counts.argmin()])
        raise KdcError(f"class {rare} has {counts.min()} image(s): each class needs at least 2 to split off validation")
    held = max(int(round(len(y) * fraction)), len(classes))
    try:
        keep_idx, held_idx = train_test_split(np.arange(len(y)), test_size=held, stratify=y, random_state=SPLIT_SEED)
    except ValueError as exc:
        raise KdcError(f"too few images ({len(y)} in {len(classes)} classes) to split off {held}: {exc}") from None
    keep_idx, held_idx = np.sort(keep_idx), np.sort(held_idx)
    return x[keep_idx], y[keep_idx], x[held_idx], y[held_idx]


def _load_digits(size: int) -> tuple[Any, ...]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    train_x, train_y, test_x, test_y = stratified_split(images, labels, 0.2)
    classes = [str(int(c)) for c in digits.target_names]
    return (
        resize_array(train_x, size, 1),
        train_y,
        resize_array(test_x, size, 1),
        test_y,
        classes,
        1,
        "sklearn.datasets.load_digits (20% held out as test)",
    )


def find_cifar10(root: Path) -> Path | None:
    """The cifar-10-batches-py folder at or under root, if present."""
    for candidate in (root, root / "cifar-10-batches-py"):
        if (candidate / "data_batch_1").is_file() and (candidate / "test_batch").is_file():
            return candidate
    return None


def download_cifar10(root: Path, reporter: Reporter, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5) -> Path:
    """Download and verify the official CIFAR-10 archive, then extract it under root."""
    reporter.info(f"CIFAR-10 not found under {root}: downloading {url}")
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        return _download_into(root, reporter, url, md5)
    except BaseException:
        if created and not any(root.iterdir()):
            root.rmdir()  # leave no empty folder behind a failed download
        raise


def _download_into(root: Path, reporter: Reporter, url: str, md5: str) -> Path:
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        archive = Path(tmp) / "cifar-10-python.tar.gz"
        try:
            with urllib.request.urlopen(url, timeout=30) as response, open(archive, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with reporter.progress("download CIFAR-10", total=total) as advance:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        advance(len(chunk))
        except OSError as exc:
            raise KdcError(
                f"CIFAR-10 is not in {root / 'cifar-10-batches-py'} and the download failed ({exc}). "
                f"Download {url}, extract it there, or pass --data-dir to the folder holding cifar-10-batches-py"
            ) from None
        digest = hashlib.md5(archive.read_bytes()).hexdigest()
        if digest != md5:
            raise KdcError(f"downloaded CIFAR-10 archive has md5 {digest}, expected {md5}: try again later")
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        target = root / "cifar-10-batches-py"
        shutil.move(str(Path(tmp) / "cifar-10-batches-py"), target)
    return target


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="latin1")
        images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as exc:
        raise KdcError(f"cannot read CIFAR-10 batch {path} ({exc}): re-download or replace it") from None
    return images, labels


def _load_cifar3(root: Path, size: int, reporter: Reporter) -> tuple[Any, ...]:
    folder = find_cifar10(root) or download_cifar10(root, reporter)
    parts = [_read_cifar_batch(p) for p in sorted(folder.glob("data_batch_*"))]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _read_cifar_batch(folder / "test_batch")
    keep_train, keep_test = train_y < 3, test_y < 3
    others = ~keep_train  # training images only: the test batch's other classes are never used
    auxiliary = {"aux_classes": CIFAR10_OTHERS, "aux_x": resize_array(train_x[others], size, 3), "aux_y": train_y[others]}
    return (
        resize_array(train_x[keep_train], size, 3),
        train_y[keep_train],
        resize_array(test_x[keep_test], size, 3),
        test_y[keep_test],
        list(CIFAR3_CLASSES),
        3,
        str(folder),
        auxiliary,
    )


def _class_folders(split_dir: Path) -> dict[str, list[Path]]:
    """class name -> image files, for DIR/<class>/*."""
    return {
        d.name: sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        for d in sorted(split_dir.iterdir())
        if d.is_dir() and not d.name.startswith(".")
    }


def _read_images(files: list[Path], size: int, channels: int, reporter: Reporter, label: str) -> np.ndarray:
    out = np.empty((len(files), channels, size, size), dtype=np.uint8)
    with reporter.progress(f"read {label}", total=len(files)) as advance:
        for i, path in enumerate(files):
            out[i] = load_image(path, size, channels)
            advance(1)
    return out


def _load_folder(root: Path, size: int, channels: int, reporter: Reporter) -> tuple[Any, ...]:
    if not root.is_dir():
        raise KdcError(f"data folder not found: {root}")
    if (root / "train").is_dir():
        splits = {"train": _class_folders(root / "train")}
        if (root / "val").is_dir():  # folded into train: the validation split is carved below
            for name, files in _class_folders(root / "val").items():
                splits["train"].setdefault(name, []).extend(files)
        if not (root / "test").is_dir():
            raise KdcError(f"{root} has train/ but no test/ folder: add test/<class>/ images")
        splits["test"] = _class_folders(root / "test")
    else:
        splits = {"all": _class_folders(root)}
    classes = sorted(splits.get("train", splits.get("all", {})))
    if len(classes) < 2:
        raise KdcError(f"{root} needs one sub-folder per class (at least 2), each holding images")
    for split, folders in splits.items():
        if sorted(folders) != classes:
            raise KdcError(f"{root}/{split} has classes {sorted(folders)}, expected {classes}")
        empty = [c for c in classes if not folders[c]]
        if empty:
            where = root if split == "all" else root / split
            raise KdcError(f"no images in {where / empty[0]}: every class folder needs at least one image")

    def gather(folders: dict[str, list[Path]], label: str) -> tuple[np.ndarray, np.ndarray]:
        files = [p for c in classes for p in folders[c]]
        labels = np.asarray([i for i, c in enumerate(classes) for _ in folders[c]], dtype=np.int64)
        return _read_images(files, size, channels, reporter, label), labels

    if "all" in splits:
        x, y = gather(splits["all"], "images")
        train_x, train_y, test_x, test_y = stratified_split(x, y, 0.2)
        source = f"{root} (20% held out as test)"
    else:
        train_x, train_y = gather(splits["train"], "train images")
        test_x, test_y = gather(splits["test"], "test images")
        source = str(root)
    return train_x, train_y, test_x, test_y, classes, source


def augment(batch: Any, generator: Any, flip: bool) -> Any:
    """Random crop (reflect padding of size/8) and optional horizontal flip, for a whole float batch at once."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = batch.shape
    pad = max(1, h // 8)
    padded = F.pad(batch, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(batch.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(batch.device)
    rows = (dy[:, None] + torch.arange(h, device=batch.device)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=batch.device)[None, :])[:, None, None, :]
    index = torch.arange(n, device=batch.device)[:, None, None, None]
    channel = torch.arange(batch.shape[1], device=batch.device)[None, :, None, None]
    out = padded[index, channel, rows, cols]
    if flip:
        mirror = (torch.rand(n, generator=generator) < 0.5).to(batch.device)
        out = torch.where(mirror[:, None, None, None], out.flip(3), out)
    return out
