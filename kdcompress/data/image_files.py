"""Image files read on demand: the streamed stand-in for a uint8 array, decoded through `deploy.preprocessing`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdcompress.core.reporter import Reporter
from kdcompress.deploy.preprocessing import load_image


class ImageFiles:
    """Image files read on demand: the streamed stand-in for a uint8 N x C x size x size array.

    Indexing with an int gives one decoded image, with a slice or an index array a decoded batch, through
    `preprocessing.load_image` like the in-memory path; `dataset.load_batches` decodes many in DataLoader workers.
    """

    dtype = np.uint8
    ndim = 4

    def __init__(self, files: list[Path], size: int, channels: int) -> None:
        self.files, self.image_size, self.channels = list(files), size, channels

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), self.channels, self.image_size, self.image_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return load_image(self.files[key], self.image_size, self.channels)
        picked = self.files[key] if isinstance(key, slice) else [self.files[i] for i in np.asarray(key).tolist()]
        return read_images(picked, self.image_size, self.channels, Reporter(), "images")

    def subset(self, index: np.ndarray) -> "ImageFiles":
        """The files at index, still on disk."""
        return ImageFiles([self.files[i] for i in np.asarray(index).tolist()], self.image_size, self.channels)

    def digest(self) -> bytes:
        """What identifies these images without decoding them: each file's path, size and modification time."""
        parts = []
        for path in self.files:
            info = path.stat()
            parts.append(f"{path}|{info.st_size}|{info.st_mtime_ns}")
        return "\n".join(parts).encode()


def read_images(files: list[Path], size: int, channels: int, reporter: Reporter, label: str) -> np.ndarray:
    out = np.empty((len(files), channels, size, size), dtype=np.uint8)
    with reporter.progress(f"read {label}", total=len(files)) as advance:
        for i, path in enumerate(files):
            out[i] = load_image(path, size, channels)
            advance(1)
    return out
