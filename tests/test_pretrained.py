"""--pretrained and --pretrained-student end to end, without a network.

timm fetches ImageNet weights through the Hugging Face hub client, which reads its local cache
first. These tests lay ImageNet-shaped weights (1000 classes, RGB) into a cache folder exactly as
the hub client stores a download, switch the client to offline mode, and run the real loading
path: timm's head replacement and input-channel adaptation, and kdcompress's pipeline on top.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import runner
from kdcompress.runs.compress import compress
from kdcompress.train.config import CompressConfig

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # any 40-hex revision; refs/main points at it


def _cache_imagenet_weights(cache: Path, name: str, seed: int) -> dict:
    """Save a 1000-class RGB `name` where the hub client keeps timm's download; return its weights."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)  # timm's ImageNet shape: 1000 classes, 3 channels
    repo = cache / f"models--{model.pretrained_cfg['hf_hub_id'].replace('/', '--')}"
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(repo / "snapshots" / COMMIT / "model.safetensors"))
    return state


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty hub cache, with the hub client offline (as on a machine without internet)."""
    import huggingface_hub.constants as hub

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    return cache


def test_pretrained_weights_load_with_a_new_head_and_channels(offline_hub):
    import torch

    from kdcompress.train.models import create_model

    imagenet = _cache_imagenet_weights(offline_hub, "test_efficientnet", seed=1)
    model = create_model("test_efficientnet", num_classes=3, in_chans=1, pretrained=True)
    state = model.state_dict()
    assert state["classifier.weight"].shape == (3, imagenet["classifier.weight"].shape[1])  # fresh 3-class head
    # one grey channel: timm folds the RGB stem filters into one by summing them
    assert torch.allclose(state["conv_stem.weight"], imagenet["conv_stem.weight"].sum(dim=1, keepdim=True))
    body = [k for k in imagenet if not k.startswith(("classifier.", "conv_stem."))]
    assert body and all(torch.equal(state[k], imagenet[k]) for k in body)
    fresh = create_model("test_efficientnet", num_classes=3, in_chans=1, pretrained=False)
    assert not all(torch.equal(fresh.state_dict()[k], imagenet[k]) for k in body)


def test_compress_pretrained_teacher_and_students(offline_hub, tmp_path, shared_data):
    """cifar3 with ImageNet starts for all three: the teacher's 10-way head (7 auxiliary classes) is cut to 3."""
    import torch

    from kdcompress.train.models import create_model

    _cache_imagenet_weights(offline_hub, "test_efficientnet", seed=1)
    imagenet_student = _cache_imagenet_weights(offline_hub, "test_resnet", seed=2)
    config = CompressConfig(
        dataset="cifar3", data_dir=str(shared_data), teacher="test_efficientnet", student="test_resnet",
        pretrained=True, pretrained_student=True, image_size=16, epochs=1, control="none", out=str(tmp_path / "run"),
    )  # fmt: skip
    manifest = compress(config).manifest.to_dict()
    assert manifest["config"]["pretrained"] and manifest["config"]["pretrained_student"]
    assert manifest["models"]["teacher"]["auxiliary"]["images"] == 3809
    # one epoch moves the students' first layer a little away from where they started: the cached
    # ImageNet weights, not timm's random initialisation under the same seed
    trained = torch.load(tmp_path / "run" / "checkpoints" / "baseline.pt", weights_only=True)["state_dict"]
    torch.manual_seed(0)
    random_start = create_model("test_resnet", 3, 3).state_dict()["conv1.0.weight"]
    from_imagenet = (trained["conv1.0.weight"] - imagenet_student["conv1.0.weight"]).abs().max()
    assert from_imagenet < 0.1 * (trained["conv1.0.weight"] - random_start).abs().max()


def test_pretrained_offline_without_weights_is_one_clear_line(offline_hub, tmp_path):

    from kdcompress.cli import app

    args = ["compress", "--pretrained", "--teacher", "test_efficientnet", "--student", "test_resnet"]
    result = runner.invoke(app, [*args, "--image-size", "16", "--artifacts", str(tmp_path / "a")])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "could not load pretrained ImageNet weights for 'test_efficientnet'" in text
    assert "HF_HUB_OFFLINE" in text and "--teacher-weights" in text  # what to do about it
    assert "Traceback" not in result.output
    assert not list((tmp_path / "a").glob("*")) and not list((tmp_path / "a").glob(".*"))  # nothing half-written


def test_which_students_start_from_imagenet_weights_is_chosen_per_student(offline_hub):
    # --pretrained-students NAMES: those start from the (cached) ImageNet weights, the others from scratch.
    import torch

    from kdcompress.core.errors import KdcError
    from kdcompress.core.reporter import NullReporter
    from kdcompress.train.fair import fair_start, prepare
    from kdcompress.train.models import create_model

    imagenet = _cache_imagenet_weights(offline_hub, "test_resnet", seed=2)
    config = CompressConfig(teacher="test_efficientnet", student="test_resnet,test_efficientnet", image_size=16, epochs=1,
                            pretrained_students="test_resnet")  # fmt: skip
    run = prepare(config, NullReporter())
    teacher = create_model("test_efficientnet", 10, 1)
    body = [k for k in imagenet if not k.startswith(("fc.", "conv1.0."))]
    resnet = fair_start(run, 0, teacher, "test_resnet").initial.state_dict()
    assert body and all(torch.equal(resnet[k], imagenet[k]) for k in body)
    assert config.student_pretrained("test_resnet") and not config.student_pretrained("test_efficientnet")
    with pytest.raises(KdcError, match="--pretrained-students names resnet18, not a --student of this run"):
        CompressConfig(student="test_resnet", pretrained_students="resnet18").resolved()


@pytest.mark.realdata
def test_a_pretrained_teacher_fine_tuned_on_a_real_slice_beats_the_same_network_from_scratch(shared_data, tmp_path, monkeypatch):
    # The genuine ImageNet weights in ../shared/hub, read offline. One epoch on cifar3 at 32 px: the
    # pretrained EfficientNet-Lite0 clears a floor that the same architecture from scratch does not reach.
    hub = shared_data.parent / "hub"
    if not hub.is_dir():
        pytest.skip(f"no hub cache at {hub}")
    import huggingface_hub.constants as constants

    from kdcompress.core.reporter import NullReporter
    from kdcompress.train.fair import prepare
    from kdcompress.train.teacher import load_or_train_teacher

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    scores = {}
    for pretrained in (True, False):
        config = CompressConfig(dataset="cifar3", data_dir=str(shared_data), teacher="tf_efficientnet_lite0", pretrained=pretrained,
                                teacher_epochs=1, epochs=1, image_size=32, teacher_aux=False, device="cpu",
                                artifacts=str(tmp_path / str(pretrained)))  # fmt: skip
        run = prepare(config, NullReporter())
        _, record = load_or_train_teacher(run.cfg, run.data, run.prep, run.settings, NullReporter())
        scores[pretrained] = record["best_val_accuracy"]
    assert scores[True] >= FINE_TUNED_FLOOR > scores[False], scores


FINE_TUNED_FLOOR = 0.65  # measured on a 2-core Xeon: 75.5% validation from ImageNet weights, 31.9% from scratch (chance 33%)
