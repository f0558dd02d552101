"""Preprocessing and onnxruntime inference: the deployable path, with no torch import.

Training, evaluation, `kdc benchmark` and `kdc predict` all turn pixels into model input
through the functions here, so the numbers they give are for exactly the same input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdcompress.errors import KdcError

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


def load_image(path: str | Path, size: int, channels: int) -> np.ndarray:
    """Read one image file as uint8 C x size x size; a clear KdcError when it cannot be read."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise KdcError(f"image not found: {path}")
    if path.is_dir():
        raise KdcError(f"expected an image file but {path} is a folder")
    try:
        with Image.open(path) as image:
            image.load()
            # A phone photo's pixels are stored as the sensor saw them; its EXIF Orientation says how to turn them.
            return pil_to_array(ImageOps.exif_transpose(image), size, channels)
    except Image.DecompressionBombError as exc:
        raise KdcError(f"{path} is too large to decode safely ({exc}): resize it before classifying") from None
    except UnidentifiedImageError:
        raise KdcError(f"{path} is not an image PIL can read (PNG, JPEG, BMP...): replace or remove it") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise KdcError(f"cannot read image {path} ({exc}): the file may be truncated or corrupt") from None


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


def create_session(path: str | Path, provider: str = "cpu", threads: int | None = None) -> Any:
    """An onnxruntime InferenceSession on CPU or CUDA; raises KdcError when CUDA is not really in use."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise KdcError(f"ONNX model not found: {path}")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if provider == "cuda":
        if hasattr(ort, "preload_dlls"):  # onnxruntime-gpu >= 1.21: find the CUDA/cuDNN libraries torch's wheels installed
            ort.preload_dlls()
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise KdcError(
                "onnxruntime has no CUDAExecutionProvider (install the GPU build: pip install 'kdcompress[gpu]')"
            )
        providers = ["CUDAExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise KdcError(f"onnxruntime cannot load {path}: {exc}") from None
    if provider == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise KdcError(
            "onnxruntime fell back to CPU: the CUDA libraries it needs (CUDA, cuDNN) were not found; install "
            "onnxruntime-gpu built for your torch's CUDA major version (see the README)"
        )
    return session


def run_logits(session: Any, images: np.ndarray, prep: Preprocessing, batch_size: int = 256) -> np.ndarray:
    """Logits for uint8 N x C x H x W images, batch by batch."""
    input_name = session.get_inputs()[0].name
    outputs = [
        session.run(None, {input_name: normalize(images[start : start + batch_size], prep)})[0]
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs, axis=0) if outputs else np.zeros((0, 0), dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files inside a folder (directly, or at any depth with recursive), sorted by path; hidden ones left out.

    A name starting with '.' (macOS's ._* AppleDouble files, a .git folder) is never an image to read.
    """
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p for p in found
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def check_model(session: Any, prep: Preprocessing, classes: list[str], path: str | Path) -> None:
    """A KdcError when an ONNX model cannot take this run's images, or does not give one output per class."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = inputs[0].shape if len(inputs) == 1 else []
    expected = [None, prep.channels, prep.image_size, prep.image_size]
    fixed = [(got, want) for got, want in zip(shape[1:], expected[1:]) if isinstance(got, int)]
    if len(inputs) != 1 or len(shape) != 4 or any(got != want for got, want in fixed):
        found = shape if len(inputs) == 1 else f"{len(inputs)} inputs"
        raise KdcError(
            f"{path} takes input {found}, but this run's images are {prep.channels} x {prep.image_size} x {prep.image_size}: "
            f"use the run that made the model (--run)"
        )
    width = outputs[0].shape[-1] if outputs and outputs[0].shape else None
    if not isinstance(width, int):  # a symbolic class axis: ask the model itself
        probe = np.zeros((1, prep.channels, prep.image_size, prep.image_size), dtype=np.float32)
        try:
            width = int(np.asarray(session.run(None, {inputs[0].name: probe})[0]).shape[-1])
        except Exception as exc:  # onnxruntime's own error types
            raise KdcError(f"onnxruntime cannot run {path} ({str(exc).splitlines()[0]}): the model file is damaged") from None
    if width != len(classes):
        raise KdcError(
            f"{path} gives {width} outputs, but this run has {len(classes)} classes: it is not a model of this run; "
            f"use the run that made it (--run)"
        )


def latency(run: Any, warmup: int, runs: int, min_seconds: float) -> dict[str, float]:
    """Per-call latency of run() in milliseconds after warm-up: p50 / p90 / p99 / mean over at least `runs` calls."""
    import time

    for _ in range(warmup):
        run()
    times = []
    start = time.perf_counter()
    while len(times) < runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 20 * runs:
            break
    values = np.asarray(times)
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p90_ms": float(np.percentile(values, 90)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": float(values.mean()),
        "runs": int(len(values)),
    }


def session_call(session: Any, sample: np.ndarray) -> Any:
    """session.run on a host array: what a deployed model pays, copies to and from the device included."""
    feed = {session.get_inputs()[0].name: sample}
    return lambda: session.run(None, feed)


def device_call(session: Any, sample: np.ndarray) -> Any:
    """A CUDA session's run with input and output left on the GPU (IO binding): the device-only time."""
    import onnxruntime as ort

    binding = session.io_binding()
    binding.bind_ortvalue_input(session.get_inputs()[0].name, ort.OrtValue.ortvalue_from_numpy(sample, "cuda", 0))
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda")
    return lambda: session.run_with_iobinding(binding)


def tile_batch(images: np.ndarray, batch: int) -> np.ndarray:
    """A batch of `batch` images taken in order from images, repeated as often as needed."""
    repeats = -(-batch // len(images))
    return np.concatenate([images] * repeats)[:batch]


def measure_speed(session: Any, prep: Preprocessing, images: np.ndarray, batch: int, quick: bool) -> dict[str, Any]:
    """Batch-1 latency and throughput at `batch` for one onnxruntime session.

    Timed through session.run from host memory (copies included). On CUDA, `device_batch1` and
    `device_throughput_images_per_s` add the same timings with input and output bound on the GPU.
    """
    one = normalize(images[:1], prep)
    many = normalize(tile_batch(images, batch), prep)
    runs, min_seconds = (20, 0.2) if quick else (200, 2.0)
    single_args = dict(warmup=5 if quick else 20, runs=runs, min_seconds=min_seconds)
    bulk_args = dict(warmup=2 if quick else 5, runs=max(5, runs // 10), min_seconds=min_seconds / 2)
    provider = session.get_providers()[0]
    result: dict[str, Any] = {
        "provider": provider,
        "batch1": latency(session_call(session, one), **single_args),
        "throughput_batch": batch,
        "throughput_images_per_s": batch / (latency(session_call(session, many), **bulk_args)["p50_ms"] / 1e3),
        "copies": "included (host input and output, session.run)",
    }
    if provider == "CUDAExecutionProvider":
        result["device_batch1"] = latency(device_call(session, one), **single_args)
        device_bulk = latency(device_call(session, many), **bulk_args)
        result["device_throughput_images_per_s"] = batch / (device_bulk["p50_ms"] / 1e3)
    return result
