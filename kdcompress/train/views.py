"""The views a run trains on: whole batches normalised and augmented on the device, in a seeded order.

torchvision's v2 transforms draw one set of random parameters per call, so a batch tensor gets one
crop for all its images (pytorch/vision#8484, #2929); per-image views in one kernel need the batch
forms below: a crop with reflect padding (the CIFAR recipe), a random-resized crop with rotation
built from torch's affine_grid / grid_sample, and mixup.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from kdcompress.core.errors import KdcError
from kdcompress.data.dataset import Dataset, load_batches
from kdcompress.data.image_files import ImageFiles
from kdcompress.deploy.preprocessing import Preprocessing

RRC_AREA = (0.35, 1.0)  # share of the image's area a random-resized crop keeps
RRC_RATIO = (3 / 4, 4 / 3)  # its aspect ratio
ROTATION = 10.0  # degrees, either way
INTENSITY = 0.2  # contrast factor in 1 +- 0.2 around each image's mean, brightness shift +- 0.2 (normalised units)


def views(pixels: Any, mean: Any, std: Any, generator: Any, flip: bool, kind: str, draw: Draw | None = None) -> Any:
    """Normalised training views of uint8 pixels: "crop" (padding crop, small images) or "rrc" (random-resized crop).

    The crop only moves pixels, so it runs on the uint8 batch and normalises the crop: a quarter of the bytes
    through the gather, and the very numbers of normalising first. The random-resized crop interpolates, on floats.
    """
    if kind == "rrc":
        return random_resized_crop(to_input(pixels, mean, std), generator, flip, draw)
    return to_input(augment(pixels, generator, flip, draw), mean, std)


class Draw:
    """Which images of a global batch a process augments: random numbers are drawn for all `count` of them, in
    the same order whatever the number of processes, and the rows at `keep` are applied (the rest belong to
    the other ranks). Without a Draw the batch is the whole global batch."""

    def __init__(self, count: int, keep: torch.Tensor) -> None:
        self.count, self.keep = count, keep

    @staticmethod
    def rand(batch: Any, generator: Any, draw: "Draw | None", *shape: int) -> Any:
        """Uniform numbers of shape (images, *shape) for the rows of batch, on batch's device."""
        count = batch.shape[0] if draw is None else draw.count
        u = torch.rand(count, *shape, generator=generator, device=generator.device)
        return (u if draw is None else u[draw.keep.to(u.device)]).to(batch.device)

    @staticmethod
    def randint(batch: Any, generator: Any, draw: "Draw | None", high: int) -> Any:
        """Integers in [0, high) for the rows of batch, on batch's device."""
        count = batch.shape[0] if draw is None else draw.count
        k = torch.randint(0, high, (count,), generator=generator, device=generator.device)
        return (k if draw is None else k[draw.keep.to(k.device)]).to(batch.device)


def augment(batch: Any, generator: Any, flip: bool, draw: Draw | None = None) -> Any:
    """Random crop (reflect padding of size/8) and optional horizontal flip, for a whole batch of any dtype at once.

    One gather: each output pixel reads the source pixel that padding, cropping and mirroring would put there,
    with the padding's reflection (torch's "reflect": -1 reads 1) done on the indices instead of a padded copy.
    """
    n, _, h, w = batch.shape
    pad = max(1, h // 8)
    dy = Draw.randint(batch, generator, draw, 2 * pad + 1)
    dx = Draw.randint(batch, generator, draw, 2 * pad + 1)
    across = torch.arange(w, device=batch.device).expand(n, w)
    if flip:
        mirror = Draw.rand(batch, generator, draw) < 0.5
        across = torch.where(mirror[:, None], across.flip(1), across)
    rows = _reflect(dy[:, None] - pad + torch.arange(h, device=batch.device)[None, :], h)
    cols = _reflect(dx[:, None] - pad + across, w)
    # one gather over each image's flattened pixels, the same offsets for every channel (faster than indexing with
    # four broadcast index tensors: benchmarks/results/views-throughput-cpu.json)
    offsets = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, h * w).expand(n, batch.shape[1], h * w)
    return batch.flatten(2).gather(2, offsets).view(batch.shape)


def _reflect(position: Any, size: int) -> Any:
    """Positions outside [0, size) mirrored back in without repeating the edge (the padding's "reflect" mode)."""
    position = position.abs()
    return torch.where(position > size - 1, 2 * (size - 1) - position, position)


def mix(
    images: torch.Tensor,
    labels: torch.Tensor,
    lam: float,
    classes: int,
    partners: torch.Tensor | None = None,
    partner_labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup: lam * x + (1 - lam) * partner, and the same mix of one-hot labels.

    The partners default to the batch in reverse order (x.flip(0)); a rank holding a slice of a global
    batch passes its slice's partners explicitly.
    """
    one_hot = _one_hot(labels, classes)
    if partners is None or partner_labels is None:
        partners, partner_hot = images.flip(0), one_hot.flip(0)
    else:
        partner_hot = _one_hot(partner_labels, classes)
    return lam * images + (1 - lam) * partners, lam * one_hot + (1 - lam) * partner_hot


def _one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """One-hot label vectors; an image without a label (UNLABELED, -1: --unlabeled) gets all zeros."""
    if bool((labels < 0).any()):
        return F.one_hot(labels.clamp(min=0), classes).float() * (labels >= 0).unsqueeze(1)
    return F.one_hot(labels, classes).float()


def random_resized_crop(batch: Any, generator: Any, flip: bool, draw: Draw | None = None) -> Any:
    """Per image: a crop of 35-100% of the area (aspect 3/4-4/3) resized back, a rotation of up to 10 degrees,
    an optional mirror, then contrast and brightness jitter; one affine_grid / grid_sample for the batch.

    For images larger than CIFAR's, where a crop of size/8 is a small shift (chest X-rays at 224 px).
    """
    n = batch.shape[0]
    u = Draw.rand(batch, generator, draw, 8)
    area = RRC_AREA[0] + (RRC_AREA[1] - RRC_AREA[0]) * u[:, 0]
    low, high = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    ratio = torch.exp(low + (high - low) * u[:, 1])
    width, height = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)  # shares of each side
    centre_x, centre_y = (1 - width) * (2 * u[:, 2] - 1), (1 - height) * (2 * u[:, 3] - 1)
    angle = math.radians(ROTATION) * (2 * u[:, 4] - 1)
    mirror = torch.where(u[:, 5] < 0.5, -1.0, 1.0) if flip else torch.ones_like(angle)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack(
        [
            torch.stack([cos * width * mirror, -sin * height, centre_x], dim=1),
            torch.stack([sin * width * mirror, cos * height, centre_y], dim=1),
        ],
        dim=1,
    )  # output -> input coordinates: rotate(scale(output)) + centre
    grid = F.affine_grid(theta.to(batch.dtype), list(batch.shape), align_corners=False)
    out = F.grid_sample(batch, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    contrast = (1 + INTENSITY * (2 * u[:, 6] - 1)).view(n, 1, 1, 1)
    brightness = (INTENSITY * (2 * u[:, 7] - 1)).view(n, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return (out - mean) * contrast.to(out.dtype) + mean + brightness.to(out.dtype)


def to_input(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 N x C x H x W -> normalised float32, the same formula as preprocessing.normalize.

    In place on the new float copy: the same numbers as (x / 255 - mean) / std, in half the time on CPU.
    """
    return images.to(torch.float32, copy=True).div_(255.0).sub_(mean).div_(std)


def stats(prep: Preprocessing, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(prep.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return mean, std


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Full batches per epoch: the ragged last batch is dropped (BatchNorm needs > 1 image, shapes stay static)."""
    return max(1, images // min(batch_size, images))


class ViewStream:
    """The augmented batches one run trains on, drawn from a generator seeded with the run's seed.

    Every run with the same data, seed, epochs and batch size sees the same views in the same
    order: what makes a baseline and its distilled students comparable, and what lets a teacher's
    outputs be recorded once for all of them (`record_teacher`).

    Under DDP (settings.world_size > 1) every rank draws the same permutation and the same random numbers
    for the whole global batch, and keeps its own slice of it: rank r of N gets images r*B/N .. (r+1)*B/N - 1
    of each global batch of B, so N ranks together see exactly the views one process sees. Streamed data
    (`image_files.ImageFiles`) is decoded by DataLoader workers in the same order and augmented on the device.
    """

    def __init__(self, data: Dataset, prep: Preprocessing, settings: Any) -> None:  # settings: loop.TrainSettings
        device = settings.device
        # On the device the batches are made on: no index copies from the host each step. On CPU this is the
        # CPU generator, so CPU numbers are unchanged; a CUDA run draws other (equally seeded) views.
        self.generator = torch.Generator(device=device).manual_seed(settings.seed)
        self.streamed = isinstance(data.train_x, ImageFiles)
        self.train_x = data.train_x if self.streamed else torch.from_numpy(data.train_x).to(device)
        self.train_y = torch.from_numpy(data.train_y).to(device)
        self.mean, self.std = stats(prep, device)
        self.flip = data.flip
        self.n = len(data.train_y)
        self.batch_size = min(settings.batch_size, self.n)  # the global batch, over all ranks
        self.steps_per_epoch = steps_per_epoch(self.n, settings.batch_size)
        self.device = device
        self.rank, self.world_size = settings.rank, settings.world_size
        if self.batch_size % self.world_size:
            raise KdcError(
                f"a batch of {self.batch_size} images does not split evenly over {self.world_size} processes: "
                f"pass a --batch-size (and --teacher-batch-size) that is a multiple of {self.world_size}"
            )
        self.mixup = settings.mixup
        self.augment = settings.augment
        if self.mixup > 0 and settings.classes < 2:
            raise ValueError("mixup needs settings.classes, the width of the mixed label vectors")
        self.classes = settings.classes
        # The mixup weights come from their own host generator, seeded like the views: one number per batch,
        # no device round trip, and the same weights on CPU and CUDA.
        self.weights = np.random.default_rng(settings.seed)

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of (normalised, augmented, channels-last images, labels) batches: this rank's share of each.

        With mixup, each batch is mixed with itself in reverse order, lam * x + (1 - lam) * x[::-1], and the
        labels become the same mix of one-hot vectors (Zhang et al. 2018; timm's Mixup in "batch" mode).
        Every objective, and the teacher, sees these very images: consistent teaching (Beyer et al. 2022).
        """
        size = self.batch_size
        order = torch.randperm(self.n, generator=self.generator, device=self.device)[: self.steps_per_epoch * size]
        keep = self._positions()
        rows = [order[step * size : (step + 1) * size] for step in range(self.steps_per_epoch)]
        rows = rows if keep is None else [index[keep] for index in rows]
        for index, pixels in zip(rows, self._pixels(rows)):
            draw = None if keep is None else Draw(size, keep)
            images = views(pixels, self.mean, self.std, self.generator, self.flip, self.augment, draw)
            labels = self.train_y[index]
            if self.mixup > 0:
                lam = float(self.weights.beta(self.mixup, self.mixup))
                if keep is None:
                    images, labels = mix(images, labels, lam, self.classes)
                else:  # this rank's images, then their partners at the mirrored positions
                    mine = len(keep) // 2
                    images, labels = mix(images[:mine], labels[:mine], lam, self.classes, images[mine:], labels[mine:])
            yield images.contiguous(memory_format=torch.channels_last), labels

    def _positions(self) -> torch.Tensor | None:
        """Positions in the global batch this rank computes (None: all of them, one process).

        With mixup the partners of its images (position B - 1 - i for image i) come too, after its own.
        """
        if self.world_size == 1:
            return None
        share = self.batch_size // self.world_size
        mine = torch.arange(self.rank * share, (self.rank + 1) * share, device=self.device)
        return torch.cat([mine, self.batch_size - 1 - mine]) if self.mixup > 0 else mine

    def _pixels(self, rows: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The uint8 images at each step's rows, on the device: indexed in memory, or decoded from disk."""
        if not self.streamed:
            return (self.train_x[index] for index in rows)
        return load_batches(self.train_x, torch.stack(rows).cpu().tolist() if rows else [], self.device)
