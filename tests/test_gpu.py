"""CUDA paths: a tiny compress, bf16 and forced fp16 steps, recorded vs live teacher, CUDA graphs, compile,
onnxruntime on CUDA.

Marked `gpu`: skipped where torch sees no CUDA device (CI, this project's CPU machines); run by
benchmarks/gpu_check.sh on a GPU machine. The compile bookkeeping test at the end runs everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import Recorder
from kdcompress.core.errors import KdcError
from kdcompress.core.reporter import NullReporter
from kdcompress.data.dataset import load_dataset
from kdcompress.train.loop import TrainSettings, TrainStep, clone_model, fit
from kdcompress.train.models import create_model, create_projection
from kdcompress.train.objectives import Distillation, Supervised
from kdcompress.train.teacher import record_teacher
from kdcompress.train.views import ViewStream

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# One worker runs this file's tests one after another (pytest-xdist's loadgroup): they share one GPU.
pytestmark = pytest.mark.xdist_group("cuda")


def _settings(**changes):
    return TrainSettings(**{**dict(epochs=1, batch_size=64, lr=2e-3, weight_decay=0.05, seed=0, device="cuda"), **changes})


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits", None, 16, 0.1)
    return data, data.preprocessing()


@pytest.mark.gpu
@cuda
def test_tiny_compress_on_cuda_exports_what_it_trained(tmp_path):
    from kdcompress.runs.compress import compress
    from kdcompress.train.config import CompressConfig

    config = CompressConfig(teacher="test_efficientnet", student="test_resnet", image_size=16, epochs=2, device="cuda", out=str(tmp_path / "run"))
    manifest = compress(config).manifest
    assert manifest.training["device"] == "cuda" and manifest.training["precision"].endswith("autocast")
    assert manifest.training["compile"] == "auto (graph)" and manifest.training["teacher_outputs"] == "live"
    for role, entry in manifest.models.items():
        export = entry.details["export"]
        assert export["max_abs_diff"] <= export["allowed_diff"], role  # the ONNX file is the CUDA-trained network


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("precision, scaled", [("bfloat16", False), ("float16", True)])
def test_mixed_precision_steps_move_the_weights_and_stay_finite(digits, precision, scaled):
    data, prep = digits
    torch.manual_seed(0)
    objective = Supervised(create_model("test_resnet", 10, 1)).cuda().to(memory_format=torch.channels_last)
    settings = _settings(precision=precision)
    step = TrainStep(objective, settings, total_steps=10)
    assert step.scaler.is_enabled() is scaled  # loss scaling exactly where float16 needs it
    before = [p.detach().clone() for p in objective.parameters()]
    images, labels = next(ViewStream(data, prep, settings).epoch())
    with step.ready():
        for view in range(3):
            loss, _ = step(images, labels, view)
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert all(not torch.equal(a, b) for a, b in zip(before, objective.parameters()) if a.numel() > 1)


@pytest.mark.gpu
@cuda
def test_views_on_cuda_are_reproducible_by_seed(digits):
    data, prep = digits
    first = [images.clone() for images, _ in ViewStream(data, prep, _settings()).epoch()]
    second = [images for images, _ in ViewStream(data, prep, _settings()).epoch()]
    other = [images for images, _ in ViewStream(data, prep, _settings(seed=1)).epoch()]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], other[0])


@pytest.mark.gpu
@cuda
def test_recorded_teacher_outputs_match_the_live_teacher_on_cuda(digits):
    """Recorded and live outputs for every view agree within bfloat16 rounding (1% of the logit scale)."""
    data, prep = digits
    settings = _settings(epochs=2)
    torch.manual_seed(0)
    teacher = create_model("test_efficientnet", 10, 1).cuda().eval()
    recorded = record_teacher(teacher, data, prep, settings, True, NullReporter())
    from kdcompress.train.objectives import LiveTeacher

    live = LiveTeacher(teacher).to(memory_format=torch.channels_last)
    stream = ViewStream(data, prep, settings)
    view = 0
    for _ in range(settings.epochs):
        for images, _labels in stream.epoch():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits, pooled = live(images, None, True)
            scale = recorded.logits[view].abs().max().item() + 1e-3
            assert (logits.float() - recorded.logits[view]).abs().max().item() <= 0.01 * scale
            view += 1
    assert view == recorded.views
    initial = create_model("test_resnet", 10, 1)
    projection = create_projection(initial, teacher)
    student = clone_model(initial)
    result = fit(Distillation(student, recorded, 4.0, 0.5, 0.3, clone_model(projection)), data, prep, settings, NullReporter(), "r")
    assert np.isfinite(result.history[-1]["loss"])


def _objective(kind, data, prep, settings):
    torch.manual_seed(0)
    student = create_model("test_resnet", 10, 1)
    if kind == "supervised":
        return Supervised(student)
    teacher = create_model("test_efficientnet", 10, 1).cuda().eval()
    projection = create_projection(student, teacher)
    if kind == "recorded":
        teacher = record_teacher(teacher, data, prep, settings, True, NullReporter())
    return Distillation(student, teacher, 4.0, 0.5, 0.3, projection)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("kind", ["supervised", "live", "recorded"])
def test_graphed_steps_train_as_eager_steps_do(digits, kind):
    """Same start, same views: a CUDA graph's steps give eager's losses and weights, up to rounding.

    A replay that froze anything of the capture (the gradients, the learning rate, the recorded teacher's
    batch) would leave the weights far from eager's; rounding keeps them within a tenth of their movement.
    """
    data, prep = digits
    runs = {}
    for mode in ("off", "graph"):
        settings = _settings(epochs=2, compile=mode)
        objective = _objective(kind, data, prep, settings).cuda().to(memory_format=torch.channels_last)
        start = [p.detach().clone() for p in objective.student.parameters()]
        stream = ViewStream(data, prep, settings)
        step = TrainStep(objective, settings, total_steps=2 * stream.steps_per_epoch)
        losses, view = [], 0
        with step.ready():
            assert torch.backends.cudnn.benchmark == (mode == "off")  # autotuned eager steps; short graphed runs go without
            for _ in range(2):
                for images, labels in stream.epoch():
                    loss, parts = step(images, labels, view)
                    losses.append([float(loss), *(float(value) for value in parts.values())])
                    view += 1
        assert step.mode == ("graph" if mode == "graph" else "eager") and not step.fallback
        runs[mode] = np.array(losses), start, [p.detach().clone() for p in objective.student.parameters()]
    (eager_losses, start, eager_end), (graph_losses, _, graph_end) = runs["off"], runs["graph"]
    assert all(torch.equal(a, b) for a, b in zip(start, runs["graph"][1]))  # the same initial weights
    assert np.allclose(graph_losses, eager_losses, rtol=0.05, atol=0.02), (graph_losses - eager_losses)
    moved = torch.cat([(end - first).flatten() for end, first in zip(eager_end, start)]).norm()
    apart = torch.cat([(g - e).flatten() for g, e in zip(graph_end, eager_end)]).norm()
    assert apart < 0.1 * moved, (float(apart), float(moved))


class _ReadsTheLoss(Supervised):
    def forward(self, images, labels, view=None):
        loss, parts = super().forward(images, labels, view)
        float(loss)  # a read by the host: not allowed while a CUDA graph is captured
        return loss, parts


@pytest.mark.gpu
@cuda
def test_a_step_that_cannot_be_captured_says_so_and_trains_eagerly(digits):
    data, prep = digits
    torch.manual_seed(0)
    reporter = Recorder()
    result = fit(_ReadsTheLoss(create_model("test_resnet", 10, 1)), data, prep, _settings(compile="graph"), reporter, "r")
    assert np.isfinite(result.history[-1]["loss"]) and result.best_val_accuracy > 0.1
    assert len(reporter.warnings) == 1 and "CUDA graph capture failed" in reporter.warnings[0]
    assert result.record()["step"].startswith("eager (CUDA graph capture failed")  # what the manifest keeps


@pytest.mark.gpu
@cuda
def test_compiled_training_trains_and_hands_back_plain_networks(digits):
    data, prep = digits
    torch.manual_seed(0)
    student = create_model("test_resnet", 10, 1)
    result = fit(Supervised(student), data, prep, _settings(epochs=2, compile="on"), NullReporter(), "compiled")
    assert "forward_features" not in student.__dict__ and result.best_val_accuracy > 0.1
    assert np.isfinite(result.history[-1]["loss"])


@pytest.mark.gpu
@cuda
def test_onnxruntime_runs_on_cuda_when_it_can(request):
    import onnxruntime

    from kdcompress.deploy.manifest import load_images, read_manifest
    from kdcompress.deploy.sessions import run_logits
    from kdcompress.deploy.targets import create_session

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime is the CPU build (onnxruntime-gpu is not installed)")
    tiny_run = request.getfixturevalue("tiny_run")  # a tiny compress, made only where the test can run
    manifest = read_manifest(tiny_run)
    images, _ = load_images(tiny_run, manifest, "test_set")
    session = create_session(tiny_run / "student.onnx", "cuda")
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    on_cpu = run_logits(create_session(tiny_run / "student.onnx"), images, manifest.preprocessing)
    assert np.allclose(run_logits(session, images, manifest.preprocessing), on_cpu, atol=1e-3)


def test_compile_shadows_forward_features_only_while_training(monkeypatch, digits):
    """Runs everywhere: torch.compile replaced by a recorder, so the bookkeeping is checked without a compiler."""
    import kdcompress.train.accel as accel

    compiled_calls = []

    def fake_compile(fn):
        def wrapper(*args, **kwargs):
            compiled_calls.append(1)
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(accel.torch, "compile", fake_compile)
    data, prep = digits
    torch.manual_seed(0)
    student = create_model("test_resnet", 10, 1)
    settings = _settings(device="cpu", compile="on")
    fit(Supervised(student), data, prep, settings, NullReporter(), "fake-compiled")
    steps = len(data.train_y) // 64
    assert len(compiled_calls) == steps  # every training forward went through it; validation did not
    assert "forward_features" not in student.__dict__
    assert accel.step_mode("auto", "cuda") == accel.AUTO_CUDA and accel.step_mode("auto", "cpu") == "eager"
    assert accel.step_mode("auto", "cuda", processes=2) == "eager" and accel.step_mode("on", "cpu") == "compile"
    assert accel.step_mode("off", "cuda") == "eager" and accel.step_mode("graph", "cuda") == "graph"
    assert [accel.autotune(mode, 100) for mode in ("eager", "compile", "graph")] == [True, True, False]
    assert accel.autotune("graph", accel.AUTOTUNE_MIN_GRAPH_STEPS) and not accel.autotune("graph", accel.AUTOTUNE_MIN_GRAPH_STEPS - 1)
    monkeypatch.setenv(accel.AUTOTUNE_ENV, "on")
    assert accel.autotune("graph", 4) and TrainStep(Supervised(student), _settings(device="cpu"), 4).autotune
    monkeypatch.setenv(accel.AUTOTUNE_ENV, "off")
    assert not accel.autotune("eager", 10**6)
    for device, processes, message in [("cpu", 1, "needs --device cuda"), ("cuda", 2, "trains in one process")]:
        with pytest.raises(KdcError, match=message):
            accel.step_mode("graph", device, processes)
