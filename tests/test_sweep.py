"""kdc sweep: recorded teacher outputs, fairness against compress, resuming, and its errors."""

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import TINY_CONFIG, Recorder, fails_cleanly, runner
from kdcompress.cli import app
from kdcompress.core.errors import KdcError
from kdcompress.core.reporter import NullReporter
from kdcompress.data.dataset import load_dataset
from kdcompress.deploy.manifest import read_manifest
from kdcompress.runs.sweep import sweep
from kdcompress.train.config import CompressConfig
from kdcompress.train.loop import TrainSettings, clone_model, fit
from kdcompress.train.models import create_model, create_projection
from kdcompress.train.objectives import Distillation
from kdcompress.train.sweep_config import SweepConfig
from kdcompress.train.teacher import record_teacher


def test_recorded_teacher_outputs_train_the_same_student_without_running_the_teacher():
    data = load_dataset("digits", None, 16, 0.1)
    prep = data.preprocessing()
    settings = TrainSettings(epochs=2, batch_size=64, lr=2e-3, weight_decay=0.05, seed=3, device="cpu")
    torch.manual_seed(0)
    teacher = create_model("test_efficientnet", 10, 1)
    initial = create_model("test_resnet", 10, 1)
    projection = create_projection(initial, teacher)

    live = clone_model(initial)
    fit(Distillation(live, teacher, 4.0, 0.5, 0.3, clone_model(projection)), data, prep, settings, NullReporter(), "live")

    recorded = record_teacher(teacher, data, prep, settings, True, NullReporter())
    assert recorded.views == 2 * (len(data.train_y) // 64)
    calls = []
    handle = teacher.register_forward_hook(lambda *args: calls.append(1))
    replayed = clone_model(initial)
    fit(Distillation(replayed, recorded, 4.0, 0.5, 0.3, clone_model(projection)), data, prep, settings, NullReporter(), "replay")
    handle.remove()
    assert calls == []  # the teacher never ran while the student trained
    for (name, a), b in zip(live.state_dict().items(), replayed.state_dict().values()):
        assert torch.equal(a, b), name


def test_recorded_teacher_refuses_batches_it_never_saw():
    from kdcompress.train.objectives import RecordedTeacher

    recorded = RecordedTeacher(torch.zeros(3, 4, 2), None, 8)
    with pytest.raises(ValueError, match="not recorded"):
        recorded(torch.zeros(4, 1, 8, 8), 3, False)
    with pytest.raises(ValueError, match="not recorded"):
        recorded(torch.zeros(5, 1, 8, 8), 0, False)
    with pytest.raises(ValueError, match="features"):
        recorded(torch.zeros(4, 1, 8, 8), 0, True)


def test_recorded_teacher_reads_a_batch_number_held_on_the_device_as_it_reads_an_int():
    """A CUDA graph replays with the batch number in a tensor (loop.TrainStep): it must pick the same outputs."""
    from kdcompress.train.objectives import RecordedTeacher

    logits, features = torch.randn(3, 4, 2), torch.randn(3, 4, 5)
    recorded = RecordedTeacher(logits, features, 5)
    images = torch.zeros(4, 1, 8, 8)
    for view in range(3):
        by_int = recorded(images, view, True)
        by_tensor = recorded(images, torch.tensor([view]), True)
        assert torch.equal(by_int[0], logits[view]) and torch.equal(by_tensor[0], logits[view])
        assert torch.equal(by_int[1], features[view]) and torch.equal(by_tensor[1], features[view])


def _config(tmp_path, teacher_weights, **grid):
    base = CompressConfig(**{**TINY_CONFIG, "control": "label-smoothing"}, teacher_weights=str(teacher_weights), artifacts=str(tmp_path))
    return SweepConfig(base=base, out=str(tmp_path / "sweep"), **grid)


def test_sweep_students_are_the_students_compress_trains(tmp_path, tiny_run):
    # Same teacher, seed, initial weights and batches: the sweep's baseline and its (T 4, alpha 0.5,
    # beta 0.3) student must score exactly what compress's baseline and distilled student scored.
    manifest = read_manifest(tiny_run).to_dict()
    config = _config(tmp_path, tiny_run / "checkpoints" / "teacher.pt", temperatures=(4.0,), alphas=(0.5,), betas=(0.3,), seeds=1)
    results = sweep(config)
    runs = {run["name"]: run for run in results["runs"]}
    test = np.load(tiny_run / "test_set.npz")
    for name, role in (("seed0-baseline", "baseline"), ("seed0-T4-alpha0.5-beta0.3", "student")):
        correct = int((np.array(runs[name]["predictions"]) == test["labels"]).sum())
        assert correct == manifest["models"][role]["test_correct"], name
    cell = results["cells"][0]
    expected = 100 * (manifest["models"]["student"]["test_accuracy"] - manifest["models"]["baseline"]["test_accuracy"])
    assert cell["delta"] == pytest.approx(expected) and cell["verdict"] in ("better", "worse", "noise")


def test_a_sweep_over_kd_losses_trains_each_as_compress_does(tmp_path, tiny_run):
    # DIST and DKD cells of one sweep: named apart (KL keeps its old names), each the student compress trains with it.
    from kdcompress.runs.compress import compress

    teacher = tiny_run / "checkpoints" / "teacher.pt"
    config = _config(tmp_path, teacher, temperatures=(4.0,), alphas=(0.5,), betas=(0.0,), kd_losses=("kl", "dist", "dkd"), seeds=1)
    config = SweepConfig(**{**config.__dict__, "base": CompressConfig(**{**config.base.__dict__, "control": "none"})})
    results = sweep(config)
    runs = {run["name"]: run for run in results["runs"]}
    assert {"seed0-T4-alpha0.5-beta0", "seed0-T4-alpha0.5-beta0-dist", "seed0-T4-alpha0.5-beta0-dkd"} <= set(runs)
    assert sorted(c["kd_loss"] for c in results["cells"]) == ["dist", "dkd", "kl"] and results["grid"]["kd_loss"] == ["kl", "dist", "dkd"]
    assert "DIST(inter 1, intra 1; T=4)" in runs["seed0-T4-alpha0.5-beta0-dist"]["objective"]
    assert runs["seed0-T4-alpha0.5-beta0-dist"]["predictions"] != runs["seed0-T4-alpha0.5-beta0"]["predictions"]
    ran = compress(CompressConfig(**{**TINY_CONFIG, "teacher_weights": str(teacher), "beta": 0.0, "kd_loss": "dist"}, out=str(tmp_path / "run")))
    test = np.load(tmp_path / "run" / "test_set.npz")
    correct = int((np.array(runs["seed0-T4-alpha0.5-beta0-dist"]["predictions"]) == test["labels"]).sum())
    assert ran.manifest.models["student"].test_correct == correct
    markdown = (tmp_path / "sweep" / "summary.md").read_text()
    assert "T 4, alpha 0.5, beta 0, dist:" in markdown and "T 4, alpha 0.5, beta 0, dkd:" in markdown


def test_a_two_class_sweep_reports_each_rows_roc_auc(tmp_path):
    from test_data import _write_folder

    from kdcompress.report.sweep_render import AUC_HEADER, sweep_markdown

    _write_folder(tmp_path / "data", per_class=16, classes=("negative", "positive"), size=12)
    base = CompressConfig(**{**TINY_CONFIG, "epochs": 1, "teacher_epochs": 1, "batch_size": 8, "image_size": 12}, dataset="folder",
                          data_dir=str(tmp_path / "data"), artifacts=str(tmp_path))  # fmt: skip
    results = sweep(SweepConfig(base=base, out=str(tmp_path / "sweep"), temperatures=(4.0,), alphas=(0.5,), betas=(0.0,), seeds=2))
    for row in (results["baseline"], results["cells"][0]):
        assert 0.0 <= row["roc_auc_mean"] <= 1.0 and row["roc_auc_std"] >= 0.0
    runs = [run for run in results["runs"] if run["kind"] == "baseline"]
    assert results["baseline"]["roc_auc_mean"] == pytest.approx(np.mean([run["roc_auc"] for run in runs]))
    assert all(len(run["predictions"]) == 32 for run in runs)  # 16 test images per class
    assert 0.0 <= results["teacher"]["roc_auc"] <= 1.0
    text = sweep_markdown(results, "kdc sweep ...")
    assert AUC_HEADER in text and f"ROC-AUC {results['teacher']['roc_auc']:.3f}" in text


def test_an_interrupted_sweep_resumes_and_other_settings_are_refused(tmp_path, tiny_run):
    weights = tiny_run / "checkpoints" / "teacher.pt"
    config = _config(tmp_path, weights, temperatures=(2.0,), alphas=(0.5, 0.9), betas=(0.0,), seeds=2)
    first = sweep(config)
    assert len(first["runs"]) == 10 and len(first["cells"]) == 2  # per seed: baseline, 2 controls (T, alpha), 2 cells
    assert all(len(c["per_seed"]) == 2 for c in first["cells"])
    lost = tmp_path / "sweep" / "runs" / "seed1-T2-alpha0.9-beta0.json"
    kept = tmp_path / "sweep" / "runs" / "seed0-T2-alpha0.5-beta0.json"
    kept_before = kept.read_text()
    lost.unlink()  # as if the sweep had been stopped during its last training
    log = Recorder()
    second = sweep(config, log)
    trained = [line for line in log.lines if line.startswith("[")]
    assert len(trained) == 1 and "seed1-T2-alpha0.9-beta0" in trained[0]
    assert any("9 of 10 trainings already done" in line for line in log.lines)
    assert kept.read_text() == kept_before and lost.is_file()
    assert [c["mean"] for c in second["cells"]] == [c["mean"] for c in first["cells"]]  # deterministic on CPU
    assert json.loads((tmp_path / "sweep" / "results.json").read_text())["cells"] == second["cells"]

    with pytest.raises(KdcError, match="other settings.*epochs"):
        sweep(SweepConfig(base=CompressConfig(**{**TINY_CONFIG, "epochs": 3}, teacher_weights=str(weights)), out=str(tmp_path / "sweep")))
    # A sweep whose students started from timm's head (before sweep.json recorded student_head) is not mixed with these.
    recorded = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    del recorded["settings"]["student_head"]
    (tmp_path / "sweep" / "sweep.json").write_text(json.dumps(recorded))
    with pytest.raises(KdcError, match="other settings.*student_head None -> 'zeroed'"):
        sweep(config)


@pytest.fixture(scope="module")
def cli_sweep(tmp_path_factory, tiny_run):
    """A finished 4-cell, 1-seed sweep made by the kdc command, and what it printed."""
    folder = tmp_path_factory.mktemp("cli-sweep") / "s"
    args = ["sweep", "--teacher", "test_efficientnet", "--student", "test_resnet", "--image-size", "16", "--epochs", "1"]
    args += ["--teacher-weights", str(tiny_run / "checkpoints" / "teacher.pt"), "--T", "2,4", "--alpha", "0.5"]
    args += ["--beta", "0,0.3", "--seeds", "1", "--out", str(folder)]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return folder, result.output


def test_sweep_command_writes_table_markdown_and_plots(cli_sweep):
    folder, output = cli_sweep
    assert "kdc sweep: digits, 4 grid points x 1 seeds" in output and "baseline" in output
    for name in ("results.json", "summary.md", "heatmap.png", "objectives.png"):
        assert (folder / name).stat().st_size > 0, name
    summary = (folder / "summary.md").read_text()
    assert summary.count("\n| ") == 2 + 7 and "T 4, alpha 0.5, beta 0.3:" in summary  # baseline, 2 controls, 4 cells
    assert "chosen on validation (what to use): T " in summary and "label smoothing" in summary
    assert "ROC-AUC" not in summary  # ten classes: no ROC-AUC column


def test_compress_from_sweep_retrains_the_cell_chosen_on_validation(tmp_path, cli_sweep):
    folder, _ = cli_sweep
    results = json.loads((folder / "results.json").read_text())
    chosen = results["chosen"]
    name = f"seed0-T{chosen['temperature']:g}-alpha{chosen['alpha']:g}-beta{chosen['beta']:g}"
    swept = next(run for run in results["runs"] if run["name"] == name)
    args = ["compress", "--from-sweep", str(folder), "--device", "cpu", "--control", "none", "--out", str(tmp_path / "run")]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"--from-sweep: T {chosen['temperature']:g}, alpha 0.5, beta {chosen['beta']:g}, KD loss kl: the cell" in result.output
    manifest = read_manifest(tmp_path / "run").to_dict()
    config = manifest["config"]
    assert (config["temperature"], config["alpha"], config["beta"]) == (chosen["temperature"], chosen["alpha"], chosen["beta"])
    # Everything else from the sweep (tiny models, 16 px, 1 epoch, its teacher), none of compress's own defaults:
    assert (config["teacher"], config["student"], config["image_size"], config["epochs"]) == ("test_efficientnet", "test_resnet", 16, 1)
    assert config["teacher_weights"] == results["settings"]["teacher_weights"] and config["from_sweep"] == str(folder)
    # The same seed, teacher, start and views: the very student the sweep trained for that cell, image for image.
    test = np.load(tmp_path / "run" / "test_set.npz")
    assert manifest["models"]["student"]["test_correct"] == int((np.array(swept["predictions"]) == test["labels"]).sum())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--alpha", "0.9"], "--alpha 0.9 (the sweep's: 0.5) contradicts them: drop that option, or --from-sweep"),
        (
            ["--epochs", "3", "--student", "test_efficientnet"],
            "--student test_efficientnet (the sweep's: test_resnet); --epochs 3 (the sweep's: 1) contradict them",
        ),
    ],
)
def test_compress_from_sweep_refuses_options_that_contradict_the_sweep(tmp_path, cli_sweep, args, message):
    folder, _ = cli_sweep
    result = runner.invoke(app, ["compress", "--from-sweep", str(folder), *args, "--out", str(tmp_path / "run")])
    fails_cleanly(result, message)
    assert not (tmp_path / "run").exists()


def test_compress_from_sweep_needs_a_finished_sweep_and_its_data(tmp_path, cli_sweep):
    folder, _ = cli_sweep
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for where, message in ((tmp_path / "nowhere", "sweep folder not found"), (unfinished, "holds no results.json: run the sweep to its end")):
        result = runner.invoke(app, ["compress", "--from-sweep", str(where), "--out", str(tmp_path / "run")])
        fails_cleanly(result, message)
    other = json.loads((folder / "results.json").read_text())
    other["settings"]["data"] = "0123456789abcdef"  # as if swept on other images
    (unfinished / "results.json").write_text(json.dumps(other))
    result = runner.invoke(app, ["compress", "--from-sweep", str(unfinished), "--device", "cpu", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "these images are not the ones" in result.output and "pass the sweep's --data-dir" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "change, said",
    [
        (lambda r: r["chosen"].__setitem__("temperature", "abc"), "chosen.temperature is 'abc', not a number"),
        (lambda r: r["chosen"].pop("alpha"), "chosen.alpha is None, not a number"),
        (lambda r: r.__setitem__("chosen", [4, 0.5, 0.3]), "chosen is [4, 0.5, 0.3], not a grid cell"),
        (lambda r: r["settings"].__setitem__("epochs", "many"), "settings.epochs is 'many', not a whole number or null"),
        (lambda r: r["settings"].__setitem__("teacher", 5), "settings.teacher is 5, not text or null"),
        (lambda r: r["chosen"].__setitem__("kd_loss", "crd"), "chosen.kd_loss is 'crd', not one of kl, dist, dkd"),
        (lambda r: r["settings"].__setitem__("teacher_weights", "/etc/passwd"), "/etc/passwd is not a PyTorch checkpoint"),
    ],
)
def test_a_tampered_sweep_results_file_is_one_line(tmp_path, cli_sweep, change, said):
    # results.json is read into checked fields before any of it reaches a configuration.
    folder = tmp_path / "s"
    shutil.copytree(cli_sweep[0], folder)
    results = json.loads((folder / "results.json").read_text())
    change(results)
    (folder / "results.json").write_text(json.dumps(results))
    args = ["compress", "--from-sweep", str(folder), "--device", "cpu", "--control", "none", "--out", str(tmp_path / "run")]
    fails_cleanly(runner.invoke(app, args), said)
    assert not (tmp_path / "run").exists()


def test_one_rule_says_when_the_teachers_outputs_are_recorded(tiny_run):
    # train.seed.teacher_outputs, the rule compress and sweep share: record in one process where it fits; on CUDA only
    # when replayed at least twice; under DDP live.
    from dataclasses import replace

    from kdcompress.train.objectives import RecordedTeacher
    from kdcompress.train.seed import teacher_outputs

    data = load_dataset("digits", None, 16, 0.1, NullReporter())
    teacher = create_model("test_efficientnet", 10, 1).eval()
    settings = TrainSettings(epochs=1, batch_size=128, lr=2e-3, weight_decay=0.05, seed=0, device="cpu")
    prep = data.preprocessing()
    assert isinstance(teacher_outputs(teacher, data, prep, settings, False, 1, NullReporter()), RecordedTeacher)
    assert teacher_outputs(teacher, data, prep, replace(settings, world_size=2), False, 8, NullReporter()) is teacher
    assert teacher_outputs(teacher, data, prep, replace(settings, device="cuda"), False, 1, NullReporter()) is teacher


def test_a_diverged_cell_is_recorded_and_the_sweep_goes_on(tmp_path, tiny_run, monkeypatch):
    # A 3-class MobileNetV4 diverged under DIST at lr 2e-3 in one seed of the KD-loss study: the sweep must not lose
    # its other cells for it.
    from kdcompress.core.errors import KdcError
    from kdcompress.runs import sweep as sweep_module

    real = sweep_module.train_one

    def diverging(run, made, settings, name, reporter, score=True):
        if name.endswith("-dist"):
            raise KdcError(f"{name}: the training diverged: its cross-entropy averaged 13.8 over epoch 6")
        return real(run, made, settings, name, reporter, score)

    monkeypatch.setattr(sweep_module, "train_one", diverging)
    config = _config(tmp_path, tiny_run / "checkpoints" / "teacher.pt", temperatures=(4.0,), alphas=(0.5,), betas=(0.0,),
                     kd_losses=("kl", "dist"), seeds=1)  # fmt: skip
    results = sweep(config)
    dist = next(c for c in results["cells"] if c["kd_loss"] == "dist")
    assert dist["diverged_seeds"] == 1 and dist["words"].startswith("diverged in 1 of 1 seed(s), each counted as all wrong")
    assert dist["mean"] == 0.0 and results["chosen"]["kd_loss"] == "kl"  # validation never chooses it
    run = json.loads((tmp_path / "sweep" / "runs" / "seed0-T4-alpha0.5-beta0-dist.json").read_text())
    assert "the training diverged" in run["diverged"]


def test_a_sweep_run_file_is_read_back_as_its_type_and_written_as_it_came():
    from kdcompress.runs.sweep_grid import SweepRun

    entry = {"name": "seed0-T4-alpha0.5-beta0", "objective": "KL", "test_accuracy": 0.5, "predictions": [0, 1], "device": "cpu",
             "best_epoch": 3, "best_val_accuracy": 0.75, "train_seconds": 1.5, "history": [{"loss": 1.0}], "seed": 0,
             "kind": "distilled", "temperature": 4.0, "alpha": 0.5, "beta": 0.0, "kd_loss": "kl"}  # fmt: skip
    run = SweepRun.from_dict(entry, 2, 3)
    assert (run.best_val_accuracy, run.kd_loss, run.roc_auc, run.rest["best_epoch"]) == (0.75, "kl", None, 3)
    assert run.to_dict() == entry  # nothing lost, nothing added (no roc_auc, matched or diverged where there were none)
    for change, said in (({"kind": "teacher"}, "not a seed and a kind"), ({"predictions": [0, 3]}, "not class indices 0..2"),
                         ({"best_val_accuracy": 2}, "best_val_accuracy is '2', not a fraction")):  # fmt: skip
        with pytest.raises(ValueError, match=said):
            SweepRun.from_dict({**entry, **change}, 2, 3)
