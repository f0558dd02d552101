"""Students carved from the teacher by Torch-Pruning: smaller, rebuilt from the manifest, fair, exported."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import TINY_CONFIG
from kdcompress.core.errors import KdcError
from kdcompress.core.reporter import NullReporter
from kdcompress.core.roles import pruned_name, pruned_ratio
from kdcompress.train.config import CompressConfig
from kdcompress.train.models import count_parameters, create_model
from kdcompress.train.prune import prune, rebuild, structure


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])
def test_a_pruned_teacher_is_smaller_keeps_its_outputs_width_and_rebuilds_from_its_structure(name):
    torch.manual_seed(0)
    teacher = create_model(name, 10, 1).eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    pruned = prune(teacher, 0.5, 1, 16)
    assert count_parameters(pruned) < 0.45 * count_parameters(teacher)  # about (1 - 0.5)^2 of the weights
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # the teacher itself is untouched
    x = torch.randn(3, 1, 16, 16)
    assert pruned.eval()(x).shape == (3, 10)
    fresh = rebuild(create_model(name, 10, 1), json.loads(json.dumps(structure(pruned))))  # as the manifest keeps it
    fresh.load_state_dict(pruned.state_dict())
    assert torch.equal(fresh.eval()(x), pruned(x))
    assert (pruned_name(0.5), pruned_ratio("pruned50"), pruned_ratio("resnet50")) == ("pruned50", 0.5, None)


def test_a_model_torch_pruning_cannot_prune_is_one_line():
    vit = create_model("test_vit", 3, 3).eval()
    size = vit.patch_embed.img_size[0]
    with pytest.raises(KdcError, match="Torch-Pruning cannot prune VisionTransformer at 50%"):
        prune(vit, 0.5, 3, size)


@pytest.mark.parametrize("student", ["pruned1", "pruned05", "resnet10t,pruned99"])
def test_a_pruned_student_name_out_of_range_is_refused_in_one_line(student):
    with pytest.raises(KdcError, match=f"--student {student.split(',')[-1]}: the teacher pruned takes a percent from 5 to 95"):
        CompressConfig(student=student).resolved()
    assert CompressConfig(student="resnet10t,pruned50", prune="0.5,0.8").students == ["resnet10t", "pruned50", "pruned80"]


@pytest.mark.parametrize("value, message", [("0.5,x", "comma-separated ratios"), ("0.99", "between 0.05 and 0.95"),
                                            ("0.5,0.5", "lists a ratio twice"), ("0.555", "in steps of 0.01")])  # fmt: skip
def test_bad_prune_ratios_are_refused_in_one_line(value, message):
    with pytest.raises(KdcError, match=message):
        CompressConfig(prune=value).resolved()


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    """A run with a named student and two pruned ones, the second of which Torch-Pruning 'cannot' make."""
    from kdcompress.runs.compress import compress
    from kdcompress.train import prune as module

    real = module.prune

    def sometimes(teacher, ratio, channels, size):
        if ratio == 0.6:
            raise KdcError("Torch-Pruning cannot prune EfficientNet at 60% (a layer it does not know)")
        return real(teacher, ratio, channels, size)

    patch = pytest.MonkeyPatch()
    patch.setattr(module, "prune", sometimes)
    try:
        config = CompressConfig(**{**TINY_CONFIG, "epochs": 1, "control": "label-smoothing", "prune": "0.5,0.6"},
                                artifacts=str(tmp_path_factory.mktemp("a")))  # fmt: skip
        return compress(config), config
    finally:
        patch.undo()


@pytest.mark.xdist_group("pruned_run")  # one worker makes the run they share (pyproject.toml pins pytest for it)
def test_pruned_students_train_export_and_rebuild_and_one_that_cannot_be_made_is_said(pruned_run, tmp_path):
    from kdcompress.deploy.manifest import read_manifest
    from kdcompress.deploy.sessions import run_logits
    from kdcompress.deploy.targets import create_session
    from kdcompress.train.export import export_checkpoint

    result, _ = pruned_run
    run = result.run_dir
    manifest = read_manifest(run)
    names = {f"{kind}-{student}" for kind in ("baseline", "student", "control") for student in ("test_resnet", "pruned50")}
    assert set(manifest.models) == {"teacher"} | names  # pruned60 left out, the others finished
    assert any("pruned60 left out: Torch-Pruning cannot prune" in w for w in manifest.warnings)
    entry = manifest.models["student-pruned50"]
    assert entry.architecture == "test_efficientnet pruned 50%" and entry.details["pruned"]["ratio"] == 0.5
    assert entry.parameters < 0.45 * manifest.models["teacher"].parameters
    parity = entry.details["export"]  # the ONNX file agrees with its PyTorch model
    assert parity["max_abs_diff"] <= parity["allowed_diff"] and parity["same_top1"] == 1.0
    # the checkpoint alone (with the structure it carries, as the manifest does) rebuilds the network
    images = np.load(run / "test_set.npz")["images"][:16]
    again = tmp_path / "again.onnx"
    export_checkpoint(run / "checkpoints" / "student-pruned50.pt", again, manifest.preprocessing, images, 1)
    ours, rebuilt = (run_logits(create_session(p), images, manifest.preprocessing) for p in (run / entry.onnx, again))
    assert np.allclose(ours, rebuilt, atol=1e-5)


@pytest.mark.xdist_group("pruned_run")  # one worker makes the run they share (pyproject.toml pins pytest for it)
def test_a_pruned_students_baseline_distilled_and_control_start_from_identical_weights(pruned_run):
    from kdcompress.train.fair import fair_start, prepare
    from kdcompress.train.teacher import load_or_train_teacher

    _, config = pruned_run
    run = prepare(config, NullReporter())
    teacher, _ = load_or_train_teacher(run.cfg, run.data, run.prep, run.settings, NullReporter())  # the cached one
    start = fair_start(run, run.cfg.seed, teacher, "pruned50")
    made = [start.baseline(), start.distilled(teacher, 4.0, 0.5, 0.0), start.control(0.1)]
    first = made[0].student.state_dict()
    for objective in made[1:]:
        assert all(torch.equal(first[k], v) for k, v in objective.student.state_dict().items())
    with torch.no_grad():  # and that start is the teacher's own function, pruned: not a fresh network
        assert not torch.equal(made[0].student.get_classifier().weight, torch.zeros_like(made[0].student.get_classifier().weight))


@pytest.mark.e2e
def test_prune_to_ms_picks_the_least_ratio_that_meets_the_latency_as_timed(monkeypatch):
    # The search over the ratios, with latencies made up (10 ms x the share of channels kept): the first step within
    # the target is found by bisection of the real pruned and exported models, and the words say what was measured.
    from kdcompress.deploy import timing
    from kdcompress.deploy.preprocessing import Preprocessing
    from kdcompress.runs import prune_target as module

    made: list[float] = []
    timed: list[float] = []
    real_prune = module.prune

    def counting(teacher, ratio, channels, size):
        made.append(ratio)
        return real_prune(teacher, ratio, channels, size)

    def fake_latency(calls, **_):
        ratio = made[-1] if timed else 0.0  # the first model timed is the teacher itself
        timed.append(ratio)
        return {name: {"p50_ms": 10.0 * (1 - ratio)} for name in calls}

    monkeypatch.setattr(module, "prune", counting)
    monkeypatch.setattr(timing, "interleaved_latency", fake_latency)
    teacher = create_model("test_resnet", 10, 1).eval()
    prep = Preprocessing(16, 1, (0.5,), (0.25,))
    images = np.zeros((4, 1, 16, 16), np.uint8)
    ratio, words = module.ratio_for_latency(teacher, 3.2, prep, images, NullReporter())
    assert ratio == 0.7 and "pruned 70%, the least pruning within 3.2 ms" in words  # 10 x 0.3 = 3.0 <= 3.2 < 3.5
    assert len(made) <= 6  # a bisection of 19 steps, not a scan
    timed.clear()
    assert module.ratio_for_latency(teacher, 50, prep, images, NullReporter())[0] is None  # the teacher meets it


@pytest.mark.xdist_group("pruned_run")  # one worker makes the run they share (pyproject.toml pins pytest for it)
def test_a_sweep_trains_each_pruned_student_as_compress_does(pruned_run, tmp_path):
    # --prune in kdc sweep: each pruned student sweeps on its own, into --out/pruned50, and its seed's baseline and
    # distilled student score exactly what compress's scored (the same teacher, pruned weights, seed and batches).
    from kdcompress.deploy.manifest import read_manifest
    from kdcompress.runs.sweep import sweep
    from kdcompress.train.sweep_config import SweepConfig

    result, config = pruned_run
    run = result.run_dir
    base = replace(config, prune="0.5", teacher_weights=str(run / "checkpoints" / "teacher.pt"), control="none")
    swept = SweepConfig(base, temperatures=(config.temperature,), alphas=(config.alpha,), betas=(config.beta,), seeds=1,
                        out=str(tmp_path / "sweep"))  # fmt: skip
    subs = dict(swept.per_student())
    assert subs["pruned50"].base.students == ["pruned50"] and subs["pruned50"].base.named_students == []
    assert list(subs) == ["test_resnet", "pruned50"] and subs["pruned50"].out == str(tmp_path / "sweep" / "pruned50")
    results = sweep(subs["pruned50"])
    manifest, labels = read_manifest(run), np.load(run / "test_set.npz")["labels"]
    for swept_run in results["runs"]:
        role = "baseline-pruned50" if swept_run["kind"] == "baseline" else "student-pruned50"
        assert int((np.array(swept_run["predictions"]) == labels).sum()) == manifest.models[role].test_correct, role
    assert len(results["runs"]) == 2
