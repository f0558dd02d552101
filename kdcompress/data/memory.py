"""The memory budget: whether a dataset's pixels, held as uint8 arrays, fit in this process's share of memory."""

from __future__ import annotations

from pathlib import Path

from kdcompress.core.errors import KdcError
from kdcompress.core.world import launched

MEMORY_FACTOR = 2.5  # peak memory of the in-memory path per byte of uint8 pixels (split copies, device copy)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (MemAvailable), where the system says."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def process_memory() -> int | None:
    """The memory one process may plan on: what is available, shared by the processes torchrun put on this machine."""
    available = available_memory()
    return None if available is None else available // launched().local_size


def memory_need(images: int, channels: int, size: int) -> float:
    """Bytes the in-memory path needs for images at size x size px, held as uint8 arrays."""
    return images * channels * size * size * MEMORY_FACTOR


def fits_in_memory(images: int, channels: int, size: int) -> bool:
    """Whether images at size x size px, held as uint8 arrays, fit in this process's share of memory."""
    available = process_memory()
    return available is None or memory_need(images, channels, size) <= available


def check_memory(images: int, channels: int, size: int, what: str) -> None:
    """Refuse, before decoding anything, a dataset whose pixels at this size would not fit in memory."""
    if fits_in_memory(images, channels, size):
        return
    need, available = memory_need(images, channels, size), process_memory() or 0
    fits = int((available / (images * channels * MEMORY_FACTOR)) ** 0.5)
    raise KdcError(
        f"{what}: {images} images at {size}x{size} px, {channels} channel(s), need about {need / 2**30:.1f} GiB of "
        f"memory held as arrays, and {available / 2**30:.1f} GiB is available: use --image-size {max(8, fits // 8 * 8)} "
        f"or less, or a machine with more memory"
    )
