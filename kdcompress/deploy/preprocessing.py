"""Preprocessing and onnxruntime inference: the deployable path, with no torch import.

Training, evaluation, `kdc benchmark` and `kdc predict` all turn pixels into model input
through the functions here, so the numbers they give are for exactly the same input.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from kdcompress.core.errors import KdcError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Preprocessing:
    """How raw pixels become model input: resize, channels, scale to [0, 1], normalise."""

    image_size: int  # square side in pixels; images are resized (bilinear, antialiased) to it
    channels: int  # 1 = grayscale ("L"), 3 = RGB
    mean: tuple[float, ...]  # per channel, on the [0, 1] scale
    std: tuple[float, ...]  # per channel, on the [0, 1] scale

    def to_dict(self) -> dict[str, Any]:
        """Manifest form, with the formula spelled out for readers of the JSON."""
        return {
            **asdict(self),
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": "PIL bilinear (antialiased) to image_size x image_size",
            "layout": "NCHW float32",
            "formula": "x = (pixel / 255 - mean) / std",
            "decoding": DECODING,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        """Read the manifest form back; a ValueError when a value cannot be what the models were fed."""
        prep = cls(
            image_size=int(data["image_size"]),
            channels=int(data["channels"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
        )
        if prep.channels not in (1, 3) or not 1 <= prep.image_size <= 8192:
            raise ValueError(f"channels {prep.channels} and image_size {prep.image_size}: 1 or 3 channels, 1-8192 px")
        if len(prep.mean) != prep.channels or len(prep.std) != prep.channels:
            raise ValueError(f"mean and std need one value per channel ({prep.channels}), got {len(prep.mean)} and {len(prep.std)}")
        if not all(v > 0 for v in prep.std):
            raise ValueError(f"std must be positive, got {list(prep.std)}")
        return prep


DECODING = (  # how pil_to_array reads a file, for a user's own loader (written into every manifest)
    "PIL; EXIF orientation applied first (ImageOps.exif_transpose); 16-bit and 32-bit integer grayscale scaled to 8 "
    "bits by x / 65535 * 255 (x / 255 * 255 when the image's maximum is 255 or less), rounded; float images by x * 255; "
    "transparent pixels composited onto white; then converted to L (1 channel) or RGB (3 channels), then resized"
)


def pil_to_array(image: Any, size: int, channels: int) -> np.ndarray:
    """Convert a PIL image of any mode (16-bit, RGBA, palette...) to uint8 C x size x size."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit integer) grayscale: rescale to 8 bits rather than clipping.
        data = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if data.max() > 255 else 255.0
        image = Image.fromarray(np.clip(np.rint(data / peak * 255.0), 0, 255).astype(np.uint8))
    elif image.mode == "F":
        data = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(data * 255.0), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "P", "PA"):
        # Transparent pixels become white, as most viewers show them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    if channels == 1:
        return array[None, :, :].copy()
    return np.ascontiguousarray(array.transpose(2, 0, 1))


@contextmanager
def open_image(path: Path) -> Iterator[Any]:
    """PIL's Image.open, without its DecompressionBombWarning: between PIL's warning and error limits (89-179
    megapixels) an image is decoded as any other, and the raw warning, with a site-packages path, is not for the user
    (above the error limit, DecompressionBombError is said in one line by load_image)."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            yield image


def load_image(path: str | Path, size: int, channels: int) -> np.ndarray:
    """Read one image file as uint8 C x size x size; a clear KdcError when it cannot be read."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise KdcError(f"image not found: {path}")
    if path.is_dir():
        raise KdcError(f"expected an image file but {path} is a folder")
    try:
        with open_image(path) as image:
            image.load()
            # A phone photo's pixels are stored as the sensor saw them; its EXIF Orientation says how to turn them.
            return pil_to_array(ImageOps.exif_transpose(image), size, channels)
    except Image.DecompressionBombError as exc:
        raise KdcError(f"{path} is too large to decode safely ({exc}): resize it before classifying") from None
    except UnidentifiedImageError:
        raise KdcError(f"{path} is not an image PIL can read (PNG, JPEG, BMP...): replace or remove it") from None
    except PermissionError:
        raise KdcError(f"cannot read image {path}: permission denied; give it read permission (chmod u+r) or remove it") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise KdcError(f"cannot read image {path} ({exc}): the file may be truncated or corrupt") from None


def image_shape(path: Path) -> tuple[tuple[int, int], int]:
    """An image file's (width, height) and its number of colour channels (alpha left out), read from its header."""
    with open_image(path) as image:
        gray = image.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
        return image.size, 1 if gray else 3


SIZES_SAMPLED = 64  # how many of a folder's training files source_shapes reads the header of
SIZES_KEPT = 8  # more distinct sizes than this in the sample: the images vary, and no size is unusual


def source_shapes(files: list[Path]) -> tuple[list[str], list[int]]:
    """The sizes ('WxH') of a folder's images before kdc resizes them, most common first, and their colour channels
    (1: grayscale, 3: colour), from the headers of up to SIZES_SAMPLED files spread over the list; sizes are
    ['various'] when the sample holds more than SIZES_KEPT. kdc predict warns about an image of another size or
    channels, as one unlike those the run was trained from (not about grayscale images a grayscale folder trained)."""
    from collections import Counter

    step = max(1, len(files) // SIZES_SAMPLED)
    counts: Counter[str] = Counter()
    channels: set[int] = set()
    for path in files[::step][:SIZES_SAMPLED]:
        try:
            (width, height), bands = image_shape(path)
        except Exception:  # noqa: BLE001 - an unreadable file is reported when it is read; here it only goes uncounted
            continue
        counts[f"{width}x{height}"] += 1
        channels.add(bands)
    sizes = ["various"] if len(counts) > SIZES_KEPT else [size for size, _ in counts.most_common()]
    return sizes, sorted(channels)


def resize_array(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Resize a uint8 N x C x H x W array with the same PIL path as image files."""
    from PIL import Image

    if images.shape[1] == channels and images.shape[2:] == (size, size):
        return images
    out = np.empty((len(images), channels, size, size), dtype=np.uint8)
    for i, chw in enumerate(images):
        hwc = chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)
        out[i] = pil_to_array(Image.fromarray(np.ascontiguousarray(hwc)), size, channels)
    return out


def normalize(images: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """uint8 N x C x H x W -> float32 model input, by the manifest's formula."""
    mean = np.asarray(prep.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(prep.std, dtype=np.float32).reshape(1, -1, 1, 1)
    return ((images.astype(np.float32) / np.float32(255.0)) - mean) / std


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files inside a folder (directly, or at any depth with recursive), sorted by path; hidden ones left out.

    A name starting with '.' (macOS's ._* AppleDouble files, a .git folder) is never an image to read.
    """
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p for p in found
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


