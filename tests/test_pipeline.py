"""End to end on tiny models: the run folder contract, fairness, determinism, teacher reuse, safe writes."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from conftest import TINY_CONFIG, Recorder
from kdcompress.core.errors import KdcError
from kdcompress.deploy.manifest import read_manifest
from kdcompress.deploy.preprocessing import Preprocessing
from kdcompress.deploy.sessions import run_logits
from kdcompress.deploy.targets import create_session
from kdcompress.runs.compress import compress
from kdcompress.train.config import CompressConfig
from kdcompress.train.teacher import teacher_cache_key


def test_run_folder_holds_everything_benchmark_and_predict_need(tiny_run):
    manifest = read_manifest(tiny_run).to_dict()
    assert set(manifest["models"]) == {"teacher", "baseline", "student", "control"}
    for entry in manifest["models"].values():
        assert (tiny_run / entry["onnx"]).is_file() and (tiny_run / entry["checkpoint"]).is_file()
        assert 0.0 <= entry["test_accuracy"] <= 1.0 and entry["export"]["max_abs_diff"] <= entry["export"]["allowed_diff"]
        assert set(entry["per_class_accuracy"]) == set(manifest["dataset"]["classes"])
        assert entry["onnx_bytes"] == (tiny_run / entry["onnx"]).stat().st_size
    assert manifest["models"]["student"]["best_epoch"] in (1, 2)
    history = json.loads((tiny_run / "history.json").read_text())
    assert [len(history[r]) for r in ("teacher", "baseline", "student", "control")] == [2, 2, 2, 2]
    matched = manifest["models"]["control"]["matched"]
    assert matched["smoothing"] == pytest.approx(0.5 * matched["teacher_off_true_mass"] * 10 / 9, abs=1e-5)  # alpha 0.5
    assert manifest["models"]["control"]["objective"] == f"loss = CE(student, y smoothed by {matched['smoothing']:.3g})"
    assert set(manifest["comparisons"]) == {"student_vs_baseline", "student_vs_control", "control_vs_baseline"}
    assert "than the label-smoothing control" in manifest["comparisons"]["student_vs_control"]["words"] or (
        manifest["comparisons"]["student_vs_control"]["verdict"] == "noise"
    )
    assert manifest["attribution"]
    assert {"ce", "kd", "feat", "val_accuracy"} <= set(history["student"][0])
    assert all(0 < h["val_seconds"] < h["seconds"] for r in history.values() for h in r)  # the validation pass, within its epoch
    assert manifest["preprocessing"]["channels"] == 1 and manifest["config"]["epochs"] == 2
    # On CPU the distilled student replays the teacher's recorded outputs (the golden numbers say: the same ones).
    on_cpu = manifest["training"]["device"] == "cpu"
    assert manifest["training"]["teacher_outputs"] == ("recorded once, then replayed" if on_cpu else "live")
    assert {entry["step"] for entry in manifest["models"].values() if "step" in entry} == {"eager" if on_cpu else "graph"}
    tuned = {entry["cudnn_autotune"] for entry in manifest["models"].values() if "step" in entry}
    assert tuned == ({None} if on_cpu else {False})  # short graphed runs skip cuDNN's autotuning
    seconds = manifest["training"]["seconds"]  # where the time went, in the order it was spent
    assert list(seconds) == ["start and data", "teacher", "students", "test and exports", "total"]
    assert all(value > 0 for value in seconds.values())
    assert sum(seconds.values()) - seconds["total"] <= seconds["total"] + 0.05  # each figure rounded to 0.01 s
    trained = sum(manifest["models"][r]["train_seconds"] for r in ("baseline", "student", "control"))
    assert seconds["students"] >= trained - 0.05
    assert "alpha * KD(student, teacher; T)" in manifest["objective"]["formula"] and manifest["objective"]["kd_loss"] == "kl"
    assert {"torch", "onnxruntime", "timm"} <= set(manifest["environment"]["versions"])
    assert not [p for p in tiny_run.parent.iterdir() if p.name.startswith(".partial")]


@pytest.mark.e2e
def test_exports_in_worker_processes_score_what_the_run_recorded(tmp_path, monkeypatch):
    """Two spawned workers export each model from its checkpoint while the next one trains; each file is checked
    against PyTorch there and scores on the test set what the run recorded (tests/test_export.py: the worker's
    function gives the in-process export's outputs)."""
    import kdcompress.train.export as export

    monkeypatch.setattr(export, "export_workers", lambda spawn_safe: 2)
    reporter = Recorder()
    tiny = {**TINY_CONFIG, "epochs": 1, "teacher_epochs": 1}
    run = compress(CompressConfig(**tiny, out=str(tmp_path / "run")), reporter).run_dir
    assert sum("in a worker process, beside the training" in line for line in reporter.lines) == 3
    manifest = read_manifest(run)
    test = np.load(run / "test_set.npz")
    for role, entry in manifest.models.items():
        assert entry.details["export"]["max_abs_diff"] <= entry.details["export"]["allowed_diff"]
        logits = run_logits(create_session(run / entry.onnx), test["images"], manifest.preprocessing)
        assert int((logits.argmax(1) == test["labels"]).sum()) == entry.test_correct, role


def test_recorded_test_accuracy_is_what_the_onnx_file_scores(tiny_run):
    manifest = read_manifest(tiny_run).to_dict()
    test = np.load(tiny_run / "test_set.npz")
    prep = Preprocessing.from_dict(manifest["preprocessing"])
    for role, entry in manifest["models"].items():
        logits = run_logits(create_session(tiny_run / entry["onnx"]), test["images"], prep)
        correct = int((logits.argmax(1) == test["labels"]).sum())
        assert abs(correct - entry["test_correct"]) <= 1, role


@pytest.mark.e2e
def test_distillation_with_alpha_and_beta_zero_reproduces_the_baseline(tmp_path):
    # Same initial weights, data order, augmentation and schedule: with the KD terms switched off the
    # distilled student must be the baseline, bit for bit. Any unfairness would show here.
    result = compress(CompressConfig(**TINY_CONFIG, alpha=0.0, beta=0.0, artifacts=str(tmp_path)))
    models = result.manifest.to_dict()["models"]
    history = json.loads((result.run_dir / "history.json").read_text())
    assert [h["ce"] for h in history["student"]] == [h["ce"] for h in history["baseline"]]
    assert models["student"]["test_correct"] == models["baseline"]["test_correct"]


@pytest.mark.e2e
def test_same_seed_same_numbers_and_the_teacher_is_reused(tmp_path):
    first_log, second_log = Recorder(), Recorder()
    first = compress(CompressConfig(**{**TINY_CONFIG, "epochs": 1}, artifacts=str(tmp_path)), first_log)
    second = compress(CompressConfig(**{**TINY_CONFIG, "epochs": 1}, artifacts=str(tmp_path)), second_log)
    assert first.run_dir != second.run_dir
    assert not first.manifest.to_dict()["models"]["teacher"]["reused"]
    assert second.manifest.to_dict()["models"]["teacher"]["reused"]
    assert any("reusing" in line for line in second_log.lines)
    h1 = json.loads((first.run_dir / "history.json").read_text())
    h2 = json.loads((second.run_dir / "history.json").read_text())
    assert [h["loss"] for h in h1["student"]] == [h["loss"] for h in h2["student"]]
    for role in ("teacher", "baseline", "student"):
        assert first.manifest.to_dict()["models"][role]["test_correct"] == second.manifest.to_dict()["models"][role]["test_correct"]


def test_teacher_weights_file_is_used_instead_of_training(tmp_path, tiny_run):
    weights = tiny_run / "checkpoints" / "teacher.pt"
    result = compress(CompressConfig(**TINY_CONFIG, teacher_weights=str(weights), artifacts=str(tmp_path)))
    teacher = result.manifest.to_dict()["models"]["teacher"]
    assert teacher["reused"] and teacher["source"] == str(weights)
    assert teacher["test_correct"] == read_manifest(tiny_run).to_dict()["models"]["teacher"]["test_correct"]


@pytest.mark.e2e
def test_failed_run_leaves_the_earlier_run_at_out_untouched(tmp_path, monkeypatch):
    out = tmp_path / "run"
    compress(CompressConfig(**TINY_CONFIG, out=str(out)))
    before = (out / "manifest.json").read_bytes()

    def broken_export(*args, **kwargs):
        raise KdcError("export exploded")

    monkeypatch.setattr("kdcompress.train.export.export_onnx", broken_export)
    with pytest.raises(KdcError, match="exploded"):
        compress(CompressConfig(**TINY_CONFIG, out=str(out)))
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".teachers", "run"]


def test_out_replaces_an_earlier_run_once_the_new_one_is_complete(tmp_path, tiny_run):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)  # an earlier, complete kdc run
    (out / "stale.txt").write_text("from the first run")
    second = compress(CompressConfig(**{**TINY_CONFIG, "epochs": 1}, alpha=0.9, out=str(out)))
    assert second.run_dir == out and not (out / "stale.txt").exists()
    assert read_manifest(out).to_dict()["config"]["alpha"] == 0.9


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"temperature": 0.0}, "--T must be between"),
        ({"alpha": 1.5}, "--alpha must be between"),
        ({"beta": -1.0}, "--beta must be between"),
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'"),
        ({"student": "resnet_18"}, "unknown model 'resnet_18'.*resnet18"),
        ({"dataset": "chest-xray"}, "needs --data-dir"),
        ({"teacher_batch_size": 1}, "--teacher-batch-size must be between 2 and 65536, got 1"),
    ],
)
def test_bad_settings_fail_before_anything_is_written(tmp_path, changes, message):
    with pytest.raises(KdcError, match=message):
        compress(CompressConfig(**{**TINY_CONFIG, **changes}, artifacts=str(tmp_path)))
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_cache_key_changes_with_what_shapes_the_teacher():
    from kdcompress.data.dataset import load_dataset

    data = load_dataset("digits", None, image_size=8)
    base = CompressConfig(**TINY_CONFIG)
    key = teacher_cache_key(base, data)
    assert key == teacher_cache_key(CompressConfig(**TINY_CONFIG, alpha=0.9, beta=0.0), data)  # student-side only
    assert key == teacher_cache_key(CompressConfig(**TINY_CONFIG, teacher_aux=False), data)  # digits has no aux
    assert key != teacher_cache_key(CompressConfig(**{**TINY_CONFIG, "teacher_epochs": 3}), data)
    assert key != teacher_cache_key(CompressConfig(**TINY_CONFIG, seed=1), data)  # another seed trains its own teacher
    assert key != teacher_cache_key(CompressConfig(**{**TINY_CONFIG, "teacher": "efficientnet_b0"}), data)


def test_teacher_epochs_default_to_the_datasets_factor_of_the_student_epochs():
    def teacher_epochs(**settings):
        return CompressConfig(**settings).resolved().teacher_epochs

    assert teacher_epochs(dataset="cifar3") == 60  # 30 student epochs; its teacher learns 10 classes
    assert teacher_epochs(dataset="cifar3", epochs=5) == 10
    assert teacher_epochs(dataset="cifar3", epochs=5, teacher_epochs=7) == 7  # an explicit value wins
    assert teacher_epochs(dataset="digits", epochs=5) == 20  # 4x: the teacher beats the student (benchmarks/README.md)
    assert teacher_epochs(dataset="folder", epochs=5) == 5
    assert teacher_epochs(dataset="chest-xray") == 10


def test_auxiliary_classes_train_the_teacher_and_nothing_else(tmp_path, shared_data):
    """cifar3 end to end: the teacher learns 10 classes and keeps 3; the students see cifar3 only."""
    recorder = Recorder()
    config = CompressConfig(**{**TINY_CONFIG, "epochs": 1}, dataset="cifar3", data_dir=str(shared_data), out=str(tmp_path / "aux"))
    result = compress(config, recorder)
    teacher = result.manifest.to_dict()["models"]["teacher"]
    assert teacher["auxiliary"] == {"classes": ["cat", "deer", "dog", "frog", "horse", "ship", "truck"], "images": 3809}
    assert any("3809 images of 7 auxiliary classes" in line for line in recorder.lines)
    assert result.manifest.to_dict()["dataset"]["counts"]["train"] == 1466  # what the students train on: cifar3 only
    assert create_session(result.run_dir / teacher["onnx"]).get_outputs()[0].shape[-1] == 3
    # --no-teacher-aux trains (and caches) another teacher; the baseline does not depend on the choice
    plain = compress(replace(config, teacher_aux=False, out=str(tmp_path / "plain"))).manifest.to_dict()["models"]
    assert "auxiliary" not in plain["teacher"] and not plain["teacher"]["reused"]
    baseline = result.manifest.to_dict()["models"]["baseline"]
    assert (plain["baseline"]["test_correct"], plain["baseline"]["best_val_accuracy"]) == (
        baseline["test_correct"],
        baseline["best_val_accuracy"],
    )


def test_auxiliary_logits_are_never_scored():
    """fit picks the best epoch on the dataset's own classes, and the cut teacher keeps their logits exactly."""
    import torch
    from torch import nn

    from kdcompress.core.reporter import NullReporter
    from kdcompress.data.dataset import load_dataset
    from kdcompress.train.loop import TrainSettings, accuracy, fit, predict_logits
    from kdcompress.train.models import create_model
    from kdcompress.train.objectives import Supervised
    from kdcompress.train.teacher import keep_first_classes

    class Decoy(nn.Module):  # an auxiliary class that always wins the argmax over all outputs (a timm-style model)
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward_features(self, images):
            return self.model.forward_features(images)

        def forward_head(self, features, pre_logits=False):
            logits = self.model.forward_head(features, pre_logits=pre_logits)
            # one more than the row's best class: it wins every argmax, while the loss stays a sane number
            return logits if pre_logits else torch.cat([logits, logits.detach().max(dim=1, keepdim=True).values + 1.0], dim=1)

        def forward(self, images):
            return self.forward_head(self.forward_features(images))

    data = load_dataset("digits", None, image_size=16)
    prep = data.preprocessing()
    torch.manual_seed(0)
    model = create_model("test_resnet", 10, 1)
    settings = TrainSettings(epochs=1, batch_size=128, lr=2e-3, weight_decay=0.05, seed=0, device="cpu")
    result = fit(Supervised(Decoy(model)), data, prep, settings, NullReporter(), "decoy")
    assert result.best_val_accuracy == accuracy(predict_logits(model, data.val_x, prep, "cpu"), data.val_y) > 0.1

    wide = create_model("test_efficientnet", 10, 1).eval()
    images = torch.randn(4, 1, 16, 16)
    full = wide(images)
    cut = keep_first_classes(wide, 7)
    assert cut(images).shape == (4, 7) and torch.allclose(cut(images), full[:, :7])
    assert cut.num_classes == 7 and cut.get_classifier().out_features == 7


def test_teacher_weights_for_other_classes_are_refused(tmp_path, tiny_run):
    import torch

    checkpoint = torch.load(tiny_run / "checkpoints" / "teacher.pt", weights_only=True)
    checkpoint["classes"] = [f"c{i}" for i in range(10)]
    torch.save(checkpoint, tmp_path / "other.pt")
    with pytest.raises(KdcError, match="trained on classes"):
        compress(CompressConfig(**TINY_CONFIG, teacher_weights=str(tmp_path / "other.pt"), artifacts=str(tmp_path / "a")))


def test_stride_one_stem_is_used_for_small_inputs_and_survives_a_checkpoint(tmp_path, tiny_run):
    import timm
    import torch

    from kdcompress.train.models import load_weights, save_checkpoint, set_stem_stride, small_input_stem

    torch.manual_seed(0)
    teacher = timm.create_model("test_efficientnet", num_classes=3)
    assert small_input_stem(teacher, 32) == 1 and small_input_stem(teacher, 224) is None
    assert small_input_stem(timm.create_model("test_resnet", num_classes=3), 32) is None  # no conv_stem
    set_stem_stride(teacher, 1)
    save_checkpoint(teacher, tmp_path / "t.pt", {"model": "test_efficientnet"})
    reloaded = timm.create_model("test_efficientnet", num_classes=3)
    assert load_weights(reloaded, tmp_path / "t.pt")["stem_stride"] == 1
    assert reloaded.conv_stem.stride == (1, 1)
    images = torch.randn(2, 3, 16, 16)
    assert torch.equal(teacher.eval()(images), reloaded.eval()(images))
    # compress's own teacher (16 px inputs) was trained with it, and says so
    manifest = read_manifest(tiny_run).to_dict()
    assert manifest["models"]["teacher"]["stem_stride"] == 1
    assert torch.load(tiny_run / "checkpoints" / "teacher.pt", weights_only=True)["stem_stride"] == 1


# kdc compress's failures: one line each, no run folder half-written.


@pytest.mark.parametrize(
    "students, said",
    [
        ("test_resnet,test_convnext", "--student test_convnext cannot take 16 px images (Calculated padded input size"),
        ("test_maxvit", "--student test_maxvit cannot take 16 px images (height (4) must be divisible by window (5)): it runs from"),
    ],
)
def test_a_student_that_cannot_take_the_image_size_is_refused_before_any_training(tmp_path, students, said):
    from conftest import TINY, fails_cleanly, runner
    from kdcompress.cli import app

    args = ["compress", *TINY, "--student", students, "--artifacts", str(tmp_path)]
    fails_cleanly(runner.invoke(app, args), said)
    assert not any(tmp_path.rglob("*.pt"))  # nothing trained, not even the teacher


def test_teacher_weights_in_a_text_file_are_not_a_checkpoint(tmp_path):
    from conftest import TINY, fails_cleanly, runner
    from kdcompress.cli import app

    for first in "abeqrstuMQR":  # each first byte once sent torch's reader into an IndexError
        text = tmp_path / f"{first}.pt"
        text.write_text(f"{first}oot:x:0:0:root:/root:/bin/bash\n")
        fails_cleanly(runner.invoke(app, ["compress", *TINY, "--teacher-weights", str(text), "--artifacts", str(tmp_path / "a")]),
                      f"{text} is not a PyTorch checkpoint")  # fmt: skip


def test_an_empty_folder_reserved_by_a_killed_run_is_removed_by_the_next(tmp_path):
    from kdcompress.core.files import RESERVED_MARK
    from kdcompress.runs.rundir import prepare_run_dir

    dead = 2**22 + 12345  # no such process (pid_max is at most 2^22 on Linux)
    (tmp_path / "digits-20260101-000000").mkdir()
    staging = tmp_path / f".partial-digits-20260101-000000.{dead}"
    staging.mkdir()
    (staging / RESERVED_MARK).write_text("digits-20260101-000000")
    (tmp_path / "kept").mkdir()  # an empty folder no killed run reserved: never touched
    folder = prepare_run_dir(CompressConfig(artifacts=str(tmp_path)).resolved())
    assert not (tmp_path / "digits-20260101-000000").exists() and not staging.exists() and (tmp_path / "kept").is_dir()
    assert (folder.staging / RESERVED_MARK).read_text() == folder.final.name


@pytest.mark.e2e
def test_a_busy_machine_is_said_when_compress_starts(tmp_path, monkeypatch):
    import os

    from kdcompress.core.world import usable_cores

    monkeypatch.setattr(os, "getloadavg", lambda: (usable_cores() + 1.5, 0.0, 0.0))
    reporter = Recorder()
    result = compress(CompressConfig(**{**TINY_CONFIG, "epochs": 1, "teacher_epochs": 1}, artifacts=str(tmp_path)), reporter)
    assert any("this machine is already busy (load average" in w for w in reporter.warnings)
    assert any("this machine is already busy (load average" in w for w in result.manifest.warnings)  # stored in the run
    from kdcompress.runs.launch import process_threads

    assert process_threads(2) == max(1, usable_cores() // 2) and process_threads(10_000) == 1


def test_a_model_that_answers_one_class_for_every_image_is_warned_about():
    from types import SimpleNamespace

    from kdcompress.runs.model_files import one_class_warning as _one_class_warning

    def entry(**recall):
        return SimpleNamespace(details={"per_class_accuracy": recall})

    # the walkthrough's 6-epoch teacher on 648 X-rays: 66.7% test accuracy, all of it PNEUMONIA
    warning = _one_class_warning("teacher", entry(NORMAL=0.0, PNEUMONIA=1.0))
    assert warning and "answers PNEUMONIA for every test image (distilling from it passes on nothing)" in warning
    assert "the baseline resnet10t model answers NORMAL" in _one_class_warning("baseline-resnet10t", entry(NORMAL=1.0, PNEUMONIA=0.0))
    assert _one_class_warning("teacher", entry(NORMAL=0.03, PNEUMONIA=1.0)) is None  # one NORMAL image right: two classes answered
    assert _one_class_warning("teacher", entry(NORMAL=0.0, PNEUMONIA=0.97)) is None  # some other answer than PNEUMONIA
    assert _one_class_warning("teacher", entry(a=1.0, b=None)) is None  # a class absent from the test split


def test_a_batch_too_large_for_the_training_images_is_warned_with_one_that_fits(tmp_path):
    # The walkthrough's folder of 230 X-rays at batch 128 trained every model for 15 steps, one an epoch, and the
    # teacher answered one class: say it before training, with a batch that gives 8 steps an epoch.
    from PIL import Image

    from kdcompress.train.fair import few_steps_warning, prepare

    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(25):
            Image.new("RGB", (8, 8), (i * 9, 0, 0)).save(tmp_path / name / f"{i}.png")
    config = CompressConfig(**{**TINY_CONFIG, "epochs": 3}, dataset="folder", data_dir=str(tmp_path))
    log = Recorder()
    prepared = prepare(config, log)
    train = prepared.data.counts()["train"]
    said = [m for m in log.warnings if "optimizer steps" in m]
    assert said == [
        f"{train} training images make 1 batch(es) of 128 an epoch, so each student trains for 3 optimizer steps in 3 "
        f"epochs: too few for most models to learn anything; --batch-size 4 gives {train // 4} an epoch (more images, or "
        "--epochs, give more steps too)"
    ]
    assert 32 <= train < 40  # so 4 is the largest power of two that gives 8 batches
    assert few_steps_warning(train, replace(config.resolved(), batch_size=4)) is None
    assert few_steps_warning(1294, CompressConfig().resolved()) is None  # digits: 10 batches of 128
    assert "--batch-size 64" in few_steps_warning(600, CompressConfig(dataset="folder").resolved())
