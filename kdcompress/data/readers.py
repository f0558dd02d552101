"""Where a dataset's pixels come from: scikit-learn's digits, CIFAR-10's batches, or a folder of images.

Each reader returns a `Source` of uint8 N x C x size x size arrays; `dataset.load_dataset` splits it.
Every image goes through `preprocessing.pil_to_array`, the path `kdc predict` uses too, and the memory
the pixels will take is checked (`check_memory`) before anything is decoded.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdcompress.core.errors import KdcError
from kdcompress.core.reporter import Reporter
from kdcompress.data.image_files import ImageFiles, read_images
from kdcompress.data.memory import check_memory, fits_in_memory, memory_need, process_memory
from kdcompress.data.split import stratified_split
from kdcompress.deploy.preprocessing import IMAGE_SUFFIXES, resize_array, source_shapes

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR3_CLASSES = ("airplane", "automobile", "bird")  # CIFAR-10 labels 0, 1, 2
CIFAR10_OTHERS = ("cat", "deer", "dog", "frog", "horse", "ship", "truck")  # labels 3-9: cifar3's auxiliary classes


@dataclass
class Source:
    """A dataset as read: train and test images with labels, and optional auxiliary (teacher-only) images."""

    train_x: np.ndarray | ImageFiles
    train_y: np.ndarray
    test_x: np.ndarray | ImageFiles
    test_y: np.ndarray
    classes: list[str]
    channels: int
    description: str  # where the images came from, for the manifest
    aux_classes: tuple[str, ...] = ()
    aux_x: np.ndarray | None = None
    aux_y: np.ndarray | None = None
    sizes: tuple[str, ...] = ()  # the images' sizes ('WxH') before resizing (preprocessing.source_shapes)
    source_channels: tuple[int, ...] = ()  # the images' own colour channels before conversion (1, 3 or both)


def load_digits(size: int) -> Source:
    """scikit-learn's 1,797 8x8 handwritten digits, 20% held out as test (offline)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    check_memory(len(digits.target), 1, size, "digits")
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    classes = [str(int(c)) for c in digits.target_names]
    train_x, train_y, test_x, test_y = stratified_split(images, labels, 0.2, classes, "test")
    return Source(
        resize_array(train_x, size, 1),
        train_y,
        resize_array(test_x, size, 1),
        test_y,
        classes,
        1,
        "sklearn.datasets.load_digits (20% held out as test)",
        sizes=("8x8",),
        source_channels=(1,),
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


# The only globals a CIFAR-10 python batch refers to: numpy's array reconstruction (numpy 1 and 2 spell its module
# differently). The dicts, lists, strings and numbers around them are pickle opcodes, not globals.
CIFAR_PICKLE_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }
)


class _CifarUnpickler(pickle.Unpickler):
    """pickle.Unpickler that admits numpy arrays and the builtin containers, nothing that could run code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR-10 batch never holds")
        return super().find_class(module, name)


def read_cifar_pickle(path: Path) -> object:
    """One CIFAR-10 python file, read with a restricted unpickler: a crafted file is refused, never run."""
    with open(path, "rb") as handle:
        return _CifarUnpickler(handle, encoding="latin1").load()


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x 3 x 32 x 32 uint8) and labels of one CIFAR-10 python batch."""
    try:
        batch = read_cifar_pickle(path)
        if not isinstance(batch, dict):
            raise ValueError(f"it holds a {type(batch).__name__}, not a dict")
        images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch["labels"], dtype=np.int64)
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {labels.size} labels")
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError, AttributeError, IndexError) as exc:
        raise KdcError(f"cannot read CIFAR-10 batch {path} ({exc}): it is not a CIFAR-10 python batch; re-download or replace it") from None
    return images, labels


def load_cifar3(root: Path, size: int, reporter: Reporter) -> Source:
    """CIFAR-10's airplane, automobile and bird; its 7 other training classes as auxiliary teacher data."""
    folder = find_cifar10(root) or download_cifar10(root, reporter)
    parts = [_read_cifar_batch(p) for p in sorted(folder.glob("data_batch_*"))]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _read_cifar_batch(folder / "test_batch")
    keep_train, keep_test = train_y < 3, test_y < 3
    check_memory(len(train_y) + int(keep_test.sum()), 3, size, "cifar3 (with its auxiliary classes)")
    others = ~keep_train  # training images only: the test batch's other classes are never used
    return Source(
        resize_array(train_x[keep_train], size, 3),
        train_y[keep_train],
        resize_array(test_x[keep_test], size, 3),
        test_y[keep_test],
        list(CIFAR3_CLASSES),
        3,
        str(folder),
        aux_classes=CIFAR10_OTHERS,
        aux_x=resize_array(train_x[others], size, 3),
        aux_y=train_y[others],
        sizes=("32x32",),
        source_channels=(3,),
    )


def _walk(folder: Path, skipped: list[Path], unreadable: list[Path]) -> list[Path]:
    """Every file under folder, sorted, leaving out hidden entries (added to skipped, not entered) and folders that cannot
    be listed (added to unreadable)."""
    import os

    found = []
    for here, dirs, names in os.walk(folder, onerror=lambda exc: unreadable.append(Path(exc.filename))):
        base = Path(here)
        for name in [n for n in dirs if n.startswith(".")]:
            skipped.append(base / name)
            dirs.remove(name)
        for name in names:
            (skipped if name.startswith(".") else found).append(base / name)
    files = []
    for path in found:  # a folder that lists its names but cannot be entered (r--): its files cannot even be looked at
        try:
            if path.is_file():
                files.append(path)
        except PermissionError:
            if path.parent not in unreadable:
                unreadable.append(path.parent)
    return sorted(files)


def _class_folders(split_dir: Path, skipped: list[Path], unreadable: list[Path]) -> dict[str, list[Path]]:
    """class name -> image files, for DIR/<class>/* (sub-folders of a class folder count for that class).

    Hidden entries (a name starting with '.': macOS's ._* AppleDouble files, .DS_Store, .git) are never read;
    they are added to skipped, and folders that cannot be listed (permissions) to unreadable.
    A class folder whose images all sit in sub-folders (DIR/<group>/<class>/*)
    is refused: its sub-folders are probably the classes, and merging them into their group would be silent.
    """
    folders = {}
    for d in sorted(split_dir.iterdir()):
        if d.name.startswith("."):
            skipped.append(d)
            continue
        if not d.is_dir():
            continue
        files = [p for p in _walk(d, skipped, unreadable) if p.suffix.lower() in IMAGE_SUFFIXES]
        if files and all(p.parent != d for p in files):
            inner = sorted({p.relative_to(d).parts[0] for p in files})
            raise KdcError(
                f"{d} holds no images itself, only sub-folders ({', '.join(inner[:4])}{', ...' if len(inner) > 4 else ''}): "
                f"classes are the folders directly under {split_dir}; point --data-dir at {d} if those are the classes"
            )
        folders[d.name] = files
    return folders


def hidden_note(root: Path, skipped: list[Path]) -> str:
    """One line naming the hidden files and folders a folder dataset left out."""
    shown = ", ".join(str(p.relative_to(root)) for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    return f"{root}: skipped {len(skipped)} hidden file(s) or folder(s) ({shown}): names starting with '.' are never read"


IMBALANCE = 2.0  # a class this many times larger than another is said (the verdicts count images, not classes)


def folder_notes(root: Path, splits: dict[str, dict[str, list[Path]]], classes: list[str]) -> list[str]:
    """What kdc assumed about a user's folder, said before anything trains: a test split carved from it while a sibling
    test/ folder sits beside it, and classes of very different sizes."""
    notes = []
    sibling = root.parent / "test"
    if "all" in splits and root.name in ("train", "training") and sibling.is_dir():
        notes.append(
            f"{root} has no test/ inside, so 20% of its images become the test split; {sibling} sits beside it: if that "
            f"is your test set, pass --data-dir {root.parent} (which holds train/ and test/)"
        )
    counts = {c: sum(len(folders.get(c, [])) for folders in splits.values()) for c in classes}
    small, large = min(counts, key=counts.get), max(counts, key=counts.get)  # type: ignore[arg-type]
    if counts[small] and counts[large] / counts[small] >= IMBALANCE:
        notes.append(
            f"{root}: the classes are imbalanced ({', '.join(f'{c} {n}' for c, n in counts.items())} images): accuracy "
            f"favours {large}; read each class's recall (and, for two classes, sensitivity and specificity) in kdc benchmark"
        )
    return notes


def load_folder(root: Path, size: int, channels: int, reporter: Reporter, stream: bool = False) -> Source:
    """DIR/<class>/* (20% held out as test) or DIR/train/<class>/* + DIR/test/<class>/* (+ optional val/).

    The images are decoded into memory, unless stream is set or they would not fit (`fits_in_memory`):
    then they stay on disk as `ImageFiles`, read batch by batch while training.
    """
    if not root.is_dir():
        raise KdcError(f"data folder not found: {root}")
    skipped: list[Path] = []
    unreadable: list[Path] = []
    if (root / "train").is_dir():
        splits = {"train": _class_folders(root / "train", skipped, unreadable)}
        if (root / "val").is_dir():  # folded into train: the validation split is carved below
            for name, files in _class_folders(root / "val", skipped, unreadable).items():
                splits["train"].setdefault(name, []).extend(files)
        if not (root / "test").is_dir():
            raise KdcError(f"{root} has train/ but no test/ folder: add test/<class>/ images")
        splits["test"] = _class_folders(root / "test", skipped, unreadable)
    else:
        splits = {"all": _class_folders(root, skipped, unreadable)}
    if skipped:
        reporter.info(hidden_note(root, skipped))
    if unreadable:
        shown = ", ".join(str(p.relative_to(root)) for p in unreadable[:3]) + (", ..." if len(unreadable) > 3 else "")
        reporter.warn(
            f"{root}: skipped {len(unreadable)} folder(s) that cannot be read ({shown}): their images are left out; "
            f"give them read permission (chmod -R u+rX) to include them"
        )
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

    count = sum(len(files) for folders in splits.values() for files in folders.values())
    if not stream and not fits_in_memory(count, channels, size):
        need, available = memory_need(count, channels, size) / 2**30, (process_memory() or 0) / 2**30
        reporter.info(
            f"{root}: {count} images at {size}x{size} px would not fit in memory (about {need:.1f} GiB needed, "
            f"{available:.1f} GiB available): reading them from disk batch by batch (as --stream does)"
        )
        stream = True

    def gather(folders: dict[str, list[Path]], label: str) -> tuple[np.ndarray | ImageFiles, np.ndarray]:
        files = [p for c in classes for p in folders[c]]
        labels = np.asarray([i for i, c in enumerate(classes) for _ in folders[c]], dtype=np.int64)
        if stream:
            return ImageFiles(files, size, channels), labels
        return read_images(files, size, channels, reporter, label), labels

    for note in folder_notes(root, splits, classes):
        reporter.warn(note)
    if "all" in splits:
        x, y = gather(splits["all"], "images")
        train_x, train_y, test_x, test_y = stratified_split(x, y, 0.2, classes, "test")
        source = f"{root} (20% held out as test)"
    else:
        train_x, train_y = gather(splits["train"], "train images")
        test_x, test_y = gather(splits["test"], "test images")
        source = str(root)
    trained_from = [p for c in classes for p in splits.get("train", splits.get("all", {}))[c]]
    sizes, seen = source_shapes(trained_from)
    return Source(train_x, train_y, test_x, test_y, classes, channels, source + (" (streamed from disk)" if stream else ""),
                  sizes=tuple(sizes), source_channels=tuple(seen))  # fmt: skip




def load_unlabeled(root: Path, size: int, channels: int, reporter: Reporter) -> np.ndarray:
    """Every image under root (any layout: sub-folder names are not read as classes), decoded like the dataset's own
    images: the images without labels that `--unlabeled DIR` adds to the distilled students' training."""
    if not root.is_dir():
        raise KdcError(f"--unlabeled folder not found: {root}")
    skipped: list[Path] = []
    unreadable: list[Path] = []
    files = [p for p in _walk(root, skipped, unreadable) if p.suffix.lower() in IMAGE_SUFFIXES]
    if skipped:
        reporter.info(hidden_note(root, skipped))
    if unreadable:
        reporter.warn(f"{root}: skipped {len(unreadable)} folder(s) that cannot be read: their images are left out")
    if not files:
        raise KdcError(f"--unlabeled {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}): point it at a folder of images")
    if not fits_in_memory(len(files), channels, size):
        raise KdcError(f"--unlabeled {root}: {len(files)} images at {size}x{size} px would not fit in memory; pass a smaller folder")
    return read_images(files, size, channels, reporter, "unlabeled images")
