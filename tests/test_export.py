"""ONNX export: self-contained file, dynamic batch, same outputs as PyTorch, no training-only parts."""

import json

import numpy as np
import onnx
import pytest
import timm
import torch
from onnx import numpy_helper

from kdcompress.core.errors import KdcError
from kdcompress.deploy.preprocessing import Preprocessing
from kdcompress.deploy.sessions import run_logits
from kdcompress.deploy.targets import create_session
from kdcompress.train import export as export_module
from kdcompress.train.export import export_onnx
from kdcompress.train.loop import predict_logits
from kdcompress.train.models import count_parameters

PREP = Preprocessing(image_size=16, channels=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
IMAGES = np.random.default_rng(0).integers(0, 256, (40, 3, 16, 16), dtype=np.uint8)


def _model():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=4, in_chans=3).eval()


def test_export_matches_pytorch_for_any_batch_size(tmp_path):
    model = _model()
    path = tmp_path / "m.onnx"
    parity = export_onnx(model, path, PREP, IMAGES)
    assert parity["max_abs_diff"] <= 1e-3 and parity["parity_images"] == 40 and parity["same_top1"] == 1.0
    assert list(tmp_path.iterdir()) == [path]  # weights inside the file: no side .onnx.data
    session = create_session(path)
    assert session.get_inputs()[0].shape[0] == "batch"
    for n in (1, 3, 17):
        expected = predict_logits(model, IMAGES[:n], PREP, "cpu")
        got = run_logits(session, IMAGES[:n], PREP)
        assert got.shape == (n, 4) and np.abs(got - expected).max() < 1e-4


def test_parity_failure_is_loud(tmp_path, monkeypatch):
    model = _model()
    export_onnx(model, tmp_path / "m.onnx", PREP, IMAGES)
    with torch.no_grad():
        model.get_classifier().bias.add_(0.5)  # the torch model now differs from the file
    with pytest.raises(KdcError, match="disagree"):
        export_module.check_parity(model, tmp_path / "m.onnx", PREP, IMAGES)


def test_a_worker_export_rebuilds_the_network_from_its_checkpoint(tmp_path, tiny_run):
    """What an export worker process runs (export.Exports), here in process: the run's checkpoint gives the run's
    ONNX outputs; an unreadable checkpoint is one clear KdcError, which the pool hands back to the run."""
    from kdcompress.deploy.manifest import load_images, read_manifest

    manifest = read_manifest(tiny_run)
    images, _ = load_images(tiny_run, manifest, "test_set")
    prep, threads = manifest.preprocessing, torch.get_num_threads()  # a worker's count; this process keeps its own
    parity = export_module.export_checkpoint(tiny_run / "checkpoints" / "student.pt", tmp_path / "student.onnx", prep, images, threads)
    assert parity["max_abs_diff"] <= parity["allowed_diff"]
    ours, theirs = create_session(tmp_path / "student.onnx"), create_session(tiny_run / "student.onnx")
    assert np.allclose(run_logits(ours, images, prep), run_logits(theirs, images, prep), atol=1e-5)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(KdcError, match=r"cannot export student.onnx: its checkpoint .*broken.pt cannot be read"):
        export_module.export_checkpoint(tmp_path / "broken.pt", tmp_path / "student.onnx", prep, images, threads)


def test_dead_export_workers_leave_the_exports_to_this_process(tmp_path):
    """A pool whose workers died (a stand-in executor: killing real workers would take seconds per test) fails
    every pending export; each is then made here, and `fallback` says why, for the run's warning."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    class DeadPool:
        def submit(self, *args):
            future = Future()
            future.set_exception(BrokenProcessPool("A child process terminated abruptly"))
            return future

        def shutdown(self, **kwargs):
            pass

    with export_module.Exports(tmp_path, PREP, IMAGES, workers=0) as exports:
        exports.pool = DeadPool()
        model = _model()
        exports.submit("student", model, {"model": "test_resnet", "classes": ["a", "b", "c", "d"], "in_chans": 3})
        assert exports.background and not exports.fallback
        parity = exports.parity("student", model)
    assert parity["max_abs_diff"] <= parity["allowed_diff"] and (tmp_path / "student.onnx").is_file()
    assert "export worker processes stopped (A child process terminated abruptly" in exports.fallback
    assert (tmp_path / "checkpoints" / "student.pt").is_file()


def test_exported_student_has_exactly_the_student_weights(tiny_run):
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    graph = onnx.load(str(tiny_run / "student.onnx")).graph
    onnx_params = sum(numpy_helper.to_array(t).size for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    student = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    teacher = timm.create_model("test_efficientnet", num_classes=10, in_chans=1)
    # The projection (student features -> teacher features) lives only in training.
    projection_shape = (teacher.num_features, student.num_features)
    assert all(tuple(t.dims) != projection_shape for t in graph.initializer)
    # BatchNorm may be folded into convolutions, which removes its statistics: never more than the student.
    trainable = sum(p.numel() for p in student.parameters())
    assert trainable * 0.9 <= onnx_params <= count_parameters(student) + sum(b.numel() for b in student.buffers())
    assert manifest["models"]["student"]["parameters"] == count_parameters(student)


def test_export_workers_only_under_the_kdc_command_on_eight_cores_or_more(monkeypatch):
    """In-process calls (these tests, a user's script) never spawn: a spawned worker re-imports the main module."""
    for spawn_safe, cpus, workers in [(False, 16, 0), (True, 16, 4), (True, 8, 2), (True, 4, 0), (True, 64, 4)]:
        monkeypatch.setattr(export_module, "usable_cores", lambda cpus=cpus: cpus)
        assert export_module.export_workers(spawn_safe) == workers, (spawn_safe, cpus)

