"""Dataset loaders on the real shared data and on generated folders, splits and augmentation."""

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdcompress.core.errors import KdcError
from kdcompress.core.reporter import NullReporter
from kdcompress.data.dataset import load_dataset
from kdcompress.data.readers import download_cifar10
from kdcompress.deploy.preprocessing import load_image
from kdcompress.train.views import augment, to_input, views


def _disjoint_stratified(ds):
    for split in ("train", "val", "test"):
        x, y = getattr(ds, f"{split}_x"), getattr(ds, f"{split}_y")
        assert x.dtype == np.uint8 and x.shape[1:] == (ds.channels, ds.image_size, ds.image_size)
        assert len(x) == len(y) and set(np.unique(y)) == set(range(len(ds.classes)))
    # validation is carved from train: same class proportions, no image in both
    train_share = np.bincount(ds.train_y) / len(ds.train_y)
    val_share = np.bincount(ds.val_y) / len(ds.val_y)
    assert np.abs(train_share - val_share).max() < 0.05
    train_hashes = {hashlib.md5(im.tobytes()).hexdigest() for im in ds.train_x}
    assert sum(hashlib.md5(im.tobytes()).hexdigest() in train_hashes for im in ds.val_x) <= 2  # digits has a few duplicates


def test_digits_is_the_offline_default():
    ds = load_dataset("digits", None)
    assert ds.classes == [str(i) for i in range(10)] and ds.channels == 1 and ds.image_size == 16
    assert ds.counts() == {"train": 1294, "val": 144, "test": 359}
    assert not ds.flip  # a mirrored 3 is not a 3
    _disjoint_stratified(ds)


def test_split_is_fixed_whatever_happens_elsewhere():
    a, b = load_dataset("digits", None, image_size=8), load_dataset("digits", None, image_size=8)
    np.random.seed(123)
    torch.manual_seed(5)
    c = load_dataset("digits", None, image_size=8)
    assert a.fingerprint() == b.fingerprint() == c.fingerprint()
    assert np.array_equal(a.test_y, c.test_y)


def test_cifar3_reads_the_partial_shared_batches(shared_data):
    ds = load_dataset("cifar3", shared_data)
    assert ds.classes == ["airplane", "automobile", "bird"]
    assert ds.counts()["train"] + ds.counts()["val"] == 1629 and ds.counts()["test"] == 298
    assert ds.channels == 3 and ds.image_size == 32 and ds.flip
    _disjoint_stratified(ds)
    # the same folder is found when --data-dir points at cifar-10-batches-py itself
    direct = load_dataset("cifar3", shared_data / "cifar-10-batches-py")
    assert direct.fingerprint() == ds.fingerprint()


def test_cifar3_auxiliary_classes_are_the_other_training_images(shared_data):
    ds = load_dataset("cifar3", shared_data, image_size=16)
    assert ds.aux_classes == ("cat", "deer", "dog", "frog", "horse", "ship", "truck")
    assert len(ds.aux_y) == 5438 - 1629  # the shared data_batch_* files hold 5,438 images, 1,629 of cifar3's classes
    assert set(np.unique(ds.aux_y)) == set(range(3, 10))  # numbered after cifar3's own classes, as in CIFAR-10
    assert ds.aux_x.shape[1:] == (3, 16, 16)
    with_aux = ds.with_auxiliary()
    assert with_aux.counts() == {**ds.counts(), "train": ds.counts()["train"] + len(ds.aux_y)}
    assert np.array_equal(with_aux.val_x, ds.val_x) and np.array_equal(with_aux.test_x, ds.test_x)
    assert with_aux.aux_x is None and with_aux.with_auxiliary() is with_aux
    # a teacher trained on the auxiliary images is cached under other data than one trained without
    assert ds.fingerprint(auxiliary=True) != ds.fingerprint()


def test_cifar3_missing_and_offline_names_the_folder(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(KdcError) as err:
        load_dataset("cifar3", tmp_path / "nowhere")
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message and "--data-dir" in message
    assert not (tmp_path / "nowhere").exists()  # nothing half-downloaded, not even the folder, left behind


def _fake_cifar_archive(tmp_path: Path, shared_data: Path) -> Path:
    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in (shared_data / "cifar-10-batches-py").iterdir():
            tar.add(path, arcname=f"cifar-10-batches-py/{path.name}")
    return archive


def test_download_verifies_checksum_before_extracting(tmp_path, shared_data):
    archive = _fake_cifar_archive(tmp_path, shared_data)
    url = archive.as_uri()
    with pytest.raises(KdcError, match="md5"):
        download_cifar10(tmp_path / "bad", NullReporter(), url=url, md5="0" * 32)
    assert not (tmp_path / "bad" / "cifar-10-batches-py").exists()
    good = download_cifar10(tmp_path / "good", NullReporter(), url=url, md5=hashlib.md5(archive.read_bytes()).hexdigest())
    assert (good / "data_batch_1").is_file()
    assert load_dataset("cifar3", tmp_path / "good").counts()["test"] == 298


def _write_folder(root: Path, per_class: int = 6, classes=("cat", "dog"), size=20) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")


def test_folder_dataset_with_train_and_test(tmp_path):
    _write_folder(tmp_path)
    ds = load_dataset("folder", tmp_path, image_size=8)
    assert ds.classes == ["cat", "dog"] and ds.channels == 3
    assert ds.counts()["test"] == 12 and ds.counts()["train"] + ds.counts()["val"] == 12


def test_folder_dataset_without_splits_holds_out_a_test_share(tmp_path):
    _write_folder(tmp_path / "x", per_class=10)
    flat = tmp_path / "flat"
    for c in ("cat", "dog"):
        (flat / c).mkdir(parents=True)
        for p in (tmp_path / "x" / "train" / c).iterdir():
            (flat / c / p.name).write_bytes(p.read_bytes())
    ds = load_dataset("folder", flat, image_size=8)
    assert ds.counts()["test"] == 4 and sum(ds.counts().values()) == 20


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "data folder not found"),
        (lambda root: (root / "train" / "a").mkdir(parents=True) or (root / "test" / "a").mkdir(parents=True), "at least 2"),
        (lambda root: _write_folder(root) or (root / "train" / "cat" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot"), "bad.png"),
        (lambda root: _write_folder(root) or [p.unlink() for p in (root / "test" / "dog").iterdir()], "no images in"),
    ],
    ids=["missing", "one-class", "corrupt-image", "empty-class"],
)
def test_folder_dataset_errors_say_what_is_wrong(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(KdcError, match=message):
        load_dataset("folder", root, image_size=8)


def test_chest_xray_layout_on_a_slice_of_the_shared_set(tmp_path, chest_xray):
    # A small tree of links to real images keeps this fast; the full set is read in test_realdata.py.
    for split in ("train", "test"):
        for c in ("NORMAL", "PNEUMONIA"):
            (tmp_path / split / c).mkdir(parents=True)
            for src in sorted((chest_xray / split / c).iterdir())[:8]:
                (tmp_path / split / c / src.name).symlink_to(src)
    ds = load_dataset("chest-xray", tmp_path)
    assert ds.classes == ["NORMAL", "PNEUMONIA"] and ds.channels == 1 and ds.image_size == 32
    assert ds.counts()["test"] == 16
    first = sorted((chest_xray / "test" / "NORMAL").iterdir())[0]
    assert np.array_equal(ds.test_x[0], load_image(first, 32, 1))


def test_image_decoding_handles_modes_and_reports_bad_files(tmp_path):
    Image.fromarray(np.full((10, 12), 40000, dtype=np.uint16)).save(tmp_path / "deep.png")
    Image.new("RGBA", (9, 9), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    palette = Image.new("P", (9, 9), 3)
    palette.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])  # a full 256-colour table: any Pillow reads it
    palette.save(tmp_path / "palette.bmp")
    deep = load_image(tmp_path / "deep.png", 4, 1)
    assert deep.shape == (1, 4, 4) and deep.min() == deep.max() == round(40000 / 65535 * 255)
    assert load_image(tmp_path / "clear.png", 4, 3)[:, 0, 0].tolist() == [255, 255, 255]  # transparent -> white
    assert load_image(tmp_path / "palette.bmp", 4, 3)[:, 0, 0].tolist() == [3, 252, 0]  # colour 3 of the table
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[:200])
    with pytest.raises(KdcError, match="cut.jpg"):
        load_image(tmp_path / "cut.jpg", 4, 3)
    with pytest.raises(KdcError, match="not found"):
        load_image(tmp_path / "absent.png", 4, 3)


def test_batch_augmentation_is_seeded_and_crops_come_from_the_image():
    batch = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    a = augment(batch, torch.Generator().manual_seed(1), flip=True)
    b = augment(batch, torch.Generator().manual_seed(1), flip=True)
    c = augment(batch, torch.Generator().manual_seed(2), flip=True)
    assert a.shape == batch.shape and torch.equal(a, b) and not torch.equal(a, c)
    # reflect padding + crop only moves pixels: every output value exists in the same image and channel
    for i in range(2):
        for ch in range(3):
            assert set(a[i, ch].flatten().tolist()) <= set(batch[i, ch].flatten().tolist())


def _padded_crop(batch, generator, flip):
    """The crop as torch spells it: a reflect-padded float copy, indexed, then mirrored (what augment replaced)."""
    n, _, h, w = batch.shape
    pad = max(1, h // 8)
    padded = torch.nn.functional.pad(batch.float(), (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(batch.shape[1])[None, :, None, None], rows, cols]
    if flip:
        out = torch.where((torch.rand(n, generator=generator) < 0.5)[:, None, None, None], out.flip(3), out)
    return out


@pytest.mark.parametrize("size, flip", [(8, True), (32, True), (32, False), (224, True)])
def test_the_crop_on_uint8_pixels_gives_the_padded_float_crops_numbers(size, flip):
    pixels = torch.randint(0, 256, (16, 3, size, size), generator=torch.Generator().manual_seed(size), dtype=torch.uint8)
    expected = _padded_crop(pixels, torch.Generator().manual_seed(5), flip)
    cropped = augment(pixels, torch.Generator().manual_seed(5), flip)
    assert cropped.dtype == torch.uint8 and torch.equal(cropped.float(), expected)
    # normalising the crop gives what cropping the normalised batch gave, bit for bit
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    normalised = views(pixels, mean, std, torch.Generator().manual_seed(5), flip, "crop")
    assert torch.equal(normalised, _padded_crop(to_input(pixels, mean, std), torch.Generator().manual_seed(5), flip))
    assert not torch.equal(cropped, augment(pixels, torch.Generator().manual_seed(6), flip))  # the seed matters


def test_too_few_images_to_split_is_a_clear_error(tmp_path):
    # 2 images per class: the test split takes one, leaving one per class, too few for validation
    for c in ("a", "b", "c"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / c / f"{i}.png")
    with pytest.raises(KdcError, match="class 'a' has 1 image.*at least 2 to split off the validation set"):
        load_dataset("folder", tmp_path, image_size=8)


def test_an_unreadable_sub_folder_is_named_in_one_warning(tmp_path, monkeypatch):
    # The tests run as root, for whom permission bits do not stop a read: the listing fails instead.
    import os

    from conftest import Recorder

    for name in ("cat", "dog"):
        for i in range(6):
            (tmp_path / name / "more").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(tmp_path / name / f"{i}.png")
            Image.new("RGB", (8, 8), (0, i * 20, 0)).save(tmp_path / name / "more" / f"{i}.png")
    locked = tmp_path / "dog" / "more"
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    reporter = Recorder()
    data = load_dataset("folder", str(tmp_path), 8, 0.1, reporter)
    assert data.counts()["train"] + data.counts()["val"] + data.counts()["test"] == 18  # 12 cat, 6 dog: dog/more left out
    unreadable = [w for w in reporter.warnings if "cannot be read" in w]
    assert len(unreadable) == 1 and "skipped 1 folder(s) that cannot be read (dog/more)" in unreadable[0]


def test_what_kdc_assumes_about_a_users_folder_is_said(tmp_path):
    # --data-dir chest_xray/train once silently carved a test split although test/ sat beside it.
    from conftest import Recorder

    for split, n in (("train", {"a": 12, "b": 4}), ("test", {"a": 2, "b": 2})):
        for name, count in n.items():
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(tmp_path / split / name / f"{i}.png")
    reporter = Recorder()
    load_dataset("folder", str(tmp_path / "train"), 8, 0.1, reporter)
    said = " ".join(reporter.warnings)
    assert f"{tmp_path / 'train'} has no test/ inside, so 20% of its images become the test split; {tmp_path / 'test'} sits beside it" in said
    assert "the classes are imbalanced (a 12, b 4 images): accuracy favours a" in said
    quiet = Recorder()
    load_dataset("folder", str(tmp_path), 8, 0.1, quiet)
    assert not any("sits beside it" in w for w in quiet.warnings)


# Splits and folders a hostile user makes


def test_a_small_class_keeps_an_image_in_the_test_split_or_is_refused(tmp_path):
    from kdcompress.data.split import stratified_split

    y = np.array([0] * 30 + [1] * 3)
    x = np.arange(len(y))
    train_x, train_y, test_x, test_y = stratified_split(x, y, 0.2, ["cat", "dog"], "test")
    assert set(test_y) == {0, 1} and set(train_y) == {0, 1}
    assert sorted([*train_x, *test_x]) == list(range(len(y)))  # every image on one side, once
    usual = np.array([0] * 50 + [1] * 50)  # where every class is on both sides already, the split is sklearn's own
    from sklearn.model_selection import train_test_split

    keep, held = train_test_split(np.arange(100), test_size=20, stratify=usual, random_state=0)
    assert list(stratified_split(np.arange(100), usual, 0.2)[2]) == sorted(held)
    # 30 cats and 2 dogs: one dog goes to the test split, the other cannot make a validation split too: refused
    for name in ("cat", "dog"):
        for i in range(30 if name == "cat" else 2):
            (tmp_path / name).mkdir(exist_ok=True)
            Image.new("RGB", (8, 8), (i * 8, 0, 0) if name == "cat" else (0, 0, 200 + i)).save(tmp_path / name / f"{i}.png")
    with pytest.raises(KdcError, match="class 'dog' has 1 image"):
        load_dataset("folder", str(tmp_path), 8, 0.1, NullReporter())


def test_a_folder_that_can_be_listed_but_not_entered_is_named_in_one_warning(tmp_path):
    # As root every folder is readable; without the capability to bypass permissions (capsh), a r-- folder lists its
    # names but its files cannot even be looked at: it must be said, never silently left out.
    import os
    import shutil
    import subprocess
    import sys

    if os.geteuid() == 0 and not shutil.which("capsh"):
        pytest.skip("needs capsh to drop root's permission bypass")
    for name in ("cat", "dog"):
        (tmp_path / name / "more").mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(tmp_path / name / f"{i}.png")
            Image.new("RGB", (8, 8), (0, i * 20, 0)).save(tmp_path / name / "more" / f"{i}.png")
    (tmp_path / "dog" / "more").chmod(0o444)
    code = (
        "from kdcompress.data.dataset import load_dataset\n"
        "from conftest import Recorder\n"
        f"r = Recorder(); d = load_dataset('folder', {str(tmp_path)!r}, 8, 0.1, r)\n"
        "print(sum(d.counts().values())); print(*r.warnings, sep='\\n')\n"
    )
    command = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        command = ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", " ".join(map(_quote, command))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env)
    finally:
        (tmp_path / "dog" / "more").chmod(0o755)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "18" and "skipped 1 folder(s) that cannot be read (dog/more)" in done.stdout


def _quote(part: str) -> str:
    import shlex

    return shlex.quote(part)
