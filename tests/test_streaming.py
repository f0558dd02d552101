"""Folders read from disk batch by batch (--stream): the same images, views and numbers as held in memory."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, fails_cleanly, runner
from kdcompress.cli import app
from kdcompress.core.errors import KdcError
from kdcompress.data import dataset as data_module
from kdcompress.data import memory
from kdcompress.data.dataset import load_dataset, materialize
from kdcompress.train.loop import TrainSettings, predict_logits
from kdcompress.train.models import create_model
from kdcompress.train.views import ViewStream

CLASSES = ("cat", "dog", "owl")


def _folder(root, corrupt: bool = False):
    """root/train|test/<class>/*.png: RGB images of uneven sizes, so every one is resized."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 10), ("test", 3)):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(20 + i, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    if corrupt:
        (root / "train" / "dog" / "broken.png").write_bytes(b"not a png")
    return root


@pytest.mark.e2e
def test_streamed_folder_gives_the_in_memory_images_views_and_logits(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "PARALLEL_FROM", 0)  # decoded in worker processes, as large folders are
    root = _folder(tmp_path / "images")
    memory = load_dataset("folder", root, 16, 0.2)
    streamed = load_dataset("folder", root, 16, 0.2, stream=True)
    assert streamed.streamed and not memory.streamed and "streamed from disk" in streamed.source
    for split in ("train", "val", "test"):
        assert np.array_equal(materialize(getattr(streamed, f"{split}_x")), getattr(memory, f"{split}_x")), split
        assert np.array_equal(getattr(streamed, f"{split}_y"), getattr(memory, f"{split}_y")), split
    prep = memory.preprocessing()
    assert streamed.preprocessing() == prep

    settings = TrainSettings(epochs=1, batch_size=8, lr=1e-3, weight_decay=0.0, seed=3, device="cpu", augment="rrc",
                             mixup=0.4, classes=len(CLASSES))  # fmt: skip
    for world in ((1, 0), (2, 0), (2, 1)):  # one process, and each rank's share of two
        part = replace(settings, world_size=world[0], rank=world[1])
        held = list(ViewStream(memory, prep, part).epoch())
        read = list(ViewStream(streamed, prep, part).epoch())
        assert len(held) == len(read) == 3
        for (a, la), (b, lb) in zip(held, read):
            assert torch.equal(a, b) and torch.equal(la, lb), world

    model = create_model("test_resnet", len(CLASSES), 3)
    assert np.array_equal(predict_logits(model, streamed.test_x, prep, "cpu"), predict_logits(model, memory.test_x, prep, "cpu"))


def test_a_folder_that_would_not_fit_in_memory_streams_by_itself(tmp_path, monkeypatch):
    root = _folder(tmp_path / "images")
    monkeypatch.setattr(memory, "available_memory", lambda: 1000)  # bytes: nothing fits
    lines = []

    class Log:
        def info(self, message):
            lines.append(message)

        def progress(self, *args, **kwargs):
            raise AssertionError("nothing should be decoded up front")

    data = load_dataset("folder", root, 16, 0.2, Log())
    assert data.streamed and any("would not fit in memory" in line and "from disk" in line for line in lines)


def test_a_corrupt_image_read_by_a_worker_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "PARALLEL_FROM", 0)
    data = load_dataset("folder", _folder(tmp_path / "images", corrupt=True), 16, 0.2, stream=True)
    with pytest.raises(KdcError) as caught:
        data.preprocessing()  # decodes every training image, in DataLoader workers
    message = str(caught.value)
    assert "broken.png" in message and "\n" not in message and "Traceback" not in message


@pytest.mark.e2e
def test_compress_streams_a_folder_end_to_end(tmp_path):
    root = _folder(tmp_path / "images")
    args = ["compress", *TINY, "--epochs", "1", "--dataset", "folder", "--data-dir", str(root), "--control", "none"]
    args += ["--batch-size", "8"]
    result = runner.invoke(app, [*args, "--stream", "--out", str(tmp_path / "run"), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["training"]["data"].startswith("streamed from disk")
    saved = np.load(tmp_path / "run" / "test_set.npz")
    assert np.array_equal(saved["images"], load_dataset("folder", root, 16, 0.2).test_x)


def test_stream_is_refused_for_datasets_held_in_memory(tmp_path):
    result = runner.invoke(app, ["compress", *TINY, "--stream", "--artifacts", str(tmp_path)])
    fails_cleanly(result, "--stream reads image folders")
