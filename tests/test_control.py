"""The label-smoothing control and the sweep's choice on validation."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_CONFIG
from kdcompress.core.reporter import NullReporter
from kdcompress.core.stats import attribution
from kdcompress.runs.sweep import sweep
from kdcompress.runs.sweep_grid import choose_by_validation, summarize
from kdcompress.train import losses
from kdcompress.train.config import CompressConfig
from kdcompress.train.fair import fair_start, prepare
from kdcompress.train.loop import fit
from kdcompress.train.models import create_model
from kdcompress.train.sweep_config import SweepConfig


def test_matched_smoothing_puts_the_teachers_mass_off_the_true_class():
    # Two images, three classes, T = 2: softmax([2, 0, 0] / 2) gives the true class e / (e + 2).
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 4.0]])
    labels = torch.tensor([0, 2])
    first = 1 - math.e / (math.e + 2)
    second = 1 - math.e**2 / (math.e**2 + 2)
    mass = losses.off_true_mass(logits, labels, 2.0)
    assert mass == pytest.approx((first + second) / 2, rel=1e-6)
    smoothing = losses.matching_smoothing(mass, 3)
    # torch's smoothed target: (1 - s) on the true class plus s / 3 everywhere; mass off the true class = 2s/3.
    target = torch.full((1, 3), smoothing / 3)
    target[0, 0] += 1 - smoothing
    assert float(1 - target[0, 0]) == pytest.approx(mass, rel=1e-6)
    student = torch.tensor([[0.5, -1.0, 2.0]])
    expected = float(-(target * F.log_softmax(student, dim=1)).sum())
    assert float(losses.cross_entropy(student, torch.tensor([0]), smoothing)) == pytest.approx(expected, rel=1e-6)
    assert losses.matching_smoothing(0.99, 2) == 1.0  # capped: a target cannot be flatter than uniform


def test_the_control_sees_the_baselines_views_and_initial_weights_and_only_its_objective_differs():
    run = prepare(CompressConfig(**{**TINY_CONFIG, "epochs": 1}), NullReporter())
    torch.manual_seed(0)
    start = fair_start(run, 0, create_model("test_efficientnet", 10, 1))
    baseline, control = start.baseline(), start.control(0.3)
    for (name, a), b in zip(baseline.student.state_dict().items(), control.student.state_dict().values()):
        assert torch.equal(a, b), name
    seen = {}
    for name, objective in (("baseline", baseline), ("control", control)):
        views = seen[name] = []

        def keep(module, args, views=views):
            if module.training:  # training batches only, not the validation passes
                views.append(args[0].detach().clone())

        objective.trainable.register_forward_pre_hook(keep)  # what every objective runs the student through
        fit(objective, run.data, run.prep, start.settings, NullReporter(), name)
    assert len(seen["baseline"]) == len(run.data.train_y) // 128 > 0
    assert len(seen["baseline"]) == len(seen["control"])
    assert all(torch.equal(a, b) for a, b in zip(seen["baseline"], seen["control"]))
    weights = zip(baseline.student.state_dict().values(), control.student.state_dict().values())
    assert not all(torch.equal(a, b) for a, b in weights)  # the objective, and only it, differs


def test_choice_on_validation_takes_the_best_mean_and_the_first_of_equals():
    validation = {(1.0, 0.5, 0.0): [0.90, 0.94], (4.0, 0.5, 0.0): [0.93, 0.93], (4.0, 0.9, 0.0): [0.95, 0.89]}
    assert choose_by_validation(validation) == (4.0, 0.5, 0.0)
    assert choose_by_validation({(1.0, 0.5, 0.0): [0.9], (2.0, 0.5, 0.0): [0.9]}) == (1.0, 0.5, 0.0)


def test_attribution_says_regularisation_when_label_smoothing_matches_the_gain():
    better = {"verdict": "better"}
    noise = {"verdict": "noise"}
    assert "regularisation" in attribution({"student_vs_baseline": better, "student_vs_control": noise})
    assert "knowledge" in attribution({"student_vs_baseline": better, "student_vs_control": better})
    assert "no gain" in attribution({"student_vs_baseline": noise, "student_vs_control": better})
    assert attribution({"student_vs_baseline": better}) is None  # no control trained
    # a loss beyond noise is said as a loss, not as "no gain"
    worse = attribution({"student_vs_baseline": {"verdict": "worse"}, "student_vs_control": {"verdict": "worse"}})
    assert worse.startswith("distillation cost accuracy: worse than the baseline beyond noise") and "no gain" not in worse


def test_sweep_chooses_without_reading_test_predictions(tmp_path, tiny_run):
    weights = str(tiny_run / "checkpoints" / "teacher.pt")
    base = CompressConfig(**{**TINY_CONFIG, "control": "label-smoothing"}, teacher_weights=weights, artifacts=str(tmp_path))
    config = SweepConfig(base=base, temperatures=(2.0, 4.0), alphas=(0.5,), betas=(0.0,), seeds=1, out=str(tmp_path / "s"))
    results = sweep(config)
    chosen = {k: results["chosen"][k] for k in ("temperature", "alpha", "beta")}
    assert [(c["temperature"], c["alpha"]) for c in results["controls"]] == [(2.0, 0.5), (4.0, 0.5)]
    for control in results["controls"]:
        matched = control["matched"]
        assert matched["smoothing"] == pytest.approx(0.5 * matched["teacher_off_true_mass"] * 10 / 9, abs=1e-5)
    assert all("vs_control" in cell for cell in results["cells"])
    # Make the cell that was not chosen perfect on test: the best on test moves, the choice must not.
    other = next(c for c in results["cells"] if c["temperature"] != chosen["temperature"])
    path = tmp_path / "s" / "runs" / f"seed0-T{other['temperature']:g}-alpha0.5-beta0.json"
    run = json.loads(path.read_text())
    run["predictions"] = np.load(tiny_run / "test_set.npz")["labels"].tolist()
    path.write_text(json.dumps(run))
    resolved = config.resolved()
    again = summarize(resolved, prepare(resolved.base, NullReporter()).data, tmp_path / "s", "cpu")
    assert {k: again["chosen"][k] for k in chosen} == chosen
    assert again["best_on_test"]["temperature"] == other["temperature"] and again["best_on_test"]["mean"] == 1.0


def test_mixup_views_are_reproducible_by_seed_and_the_teacher_sees_the_same_ones():
    from kdcompress.data.dataset import load_dataset
    from kdcompress.train.loop import TrainSettings, clone_model
    from kdcompress.train.models import create_projection
    from kdcompress.train.objectives import Distillation
    from kdcompress.train.teacher import record_teacher
    from kdcompress.train.views import ViewStream

    data = load_dataset("digits", None, 16, 0.1)
    prep = data.preprocessing()
    settings = TrainSettings(epochs=1, batch_size=64, lr=2e-3, weight_decay=0.05, seed=5, device="cpu", mixup=0.4, classes=10)
    first, again = list(ViewStream(data, prep, settings).epoch()), list(ViewStream(data, prep, settings).epoch())
    plain = list(ViewStream(data, prep, TrainSettings(**{**settings.__dict__, "mixup": 0.0})).epoch())
    for (x, y), (x2, y2), (_x0, y0) in zip(first, again, plain):
        assert torch.equal(x, x2) and torch.equal(y, y2)
        assert y.shape == (64, 10) and torch.allclose(y.sum(1), torch.ones(64))
        lam = float(y[torch.arange(64), y0].min())  # each image keeps at least min(lam, 1 - lam) of its own label
        assert 0 < lam <= 1
    assert not all(torch.equal(x, x0) for (x, _), (x0, _) in zip(first, plain))
    assert any((y.max(1).values < 0.999).any() for _, y in first)  # labels are mixed, not one-hot

    # A student distilled live and one distilled from recorded outputs end identical: the teacher saw the mixed views.
    torch.manual_seed(0)
    teacher, initial = create_model("test_efficientnet", 10, 1), create_model("test_resnet", 10, 1)
    projection = create_projection(initial, teacher)
    live, replayed = clone_model(initial), clone_model(initial)
    fit(Distillation(live, teacher, 4.0, 0.5, 0.3, clone_model(projection)), data, prep, settings, NullReporter(), "live")
    recorded = record_teacher(teacher, data, prep, settings, True, NullReporter())
    fit(Distillation(replayed, recorded, 4.0, 0.5, 0.3, clone_model(projection)), data, prep, settings, NullReporter(), "replay")
    for (name, a), b in zip(live.state_dict().items(), replayed.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_small_input_stem_is_shared_by_baseline_distilled_student_and_control():
    run = prepare(CompressConfig(**{**TINY_CONFIG, "student": "test_efficientnet", "epochs": 1, "student_stem": "auto"}), NullReporter())
    torch.manual_seed(0)
    start = fair_start(run, 0, create_model("test_efficientnet", 10, 1))
    assert start.stem_stride == 1
    models = [start.baseline().student, start.distilled(create_model("test_efficientnet", 10, 1), 4.0, 0.5, 0.0).student,
              start.control(0.2).student]  # fmt: skip
    assert all(tuple(m.conv_stem.stride) == (1, 1) for m in models)
    for tensors in zip(*(m.state_dict().values() for m in models)):
        assert all(torch.equal(tensors[0], t) for t in tensors[1:])
    timm_start = fair_start(prepare(CompressConfig(**{**TINY_CONFIG, "student": "test_efficientnet", "epochs": 1}), NullReporter()), 0,
                            create_model("test_efficientnet", 10, 1))  # fmt: skip
    assert timm_start.stem_stride is None and tuple(timm_start.initial.conv_stem.stride) == (2, 2)
    x = torch.zeros(1, 1, 64, 64)  # the stem halves the network's total stride: twice the final map
    assert models[0].eval().forward_features(x).shape[-1] == 2 * timm_start.initial.eval().forward_features(x).shape[-1]


def test_every_student_starts_from_a_zeroed_head_and_uniform_predictions():
    # MobileNetV4-Conv-Small started near 7x chance with timm's head and its baseline diverged on a 230-image folder;
    # the fair start zeroes the classifier of every student, as the teacher recipe does for the teacher.
    run = prepare(CompressConfig(**{**TINY_CONFIG, "epochs": 1}), NullReporter())
    start = fair_start(run, 0, create_model("test_efficientnet", 10, 1))
    head = start.initial.get_classifier()
    assert torch.count_nonzero(head.weight) == 0 and torch.count_nonzero(head.bias) == 0
    logits = start.baseline().student.eval()(torch.randn(4, 1, 16, 16))
    assert torch.equal(logits, torch.zeros_like(logits))  # cross-entropy ln(10) at the first step, for every objective
    assert sum(torch.count_nonzero(p) for p in start.initial.parameters()) > 0  # the body keeps timm's initialisation


@pytest.mark.e2e
def test_images_without_labels_reach_the_distilled_student_alone_and_the_verdict_says_so(tmp_path):
    # --unlabeled DIR: the baseline and the control train on exactly what they would without it (the same numbers);
    # the distilled student's epochs take the extra images too, and the attribution says it saw other data.
    import numpy as np
    from PIL import Image

    from kdcompress.runs.compress import compress

    folder = tmp_path / "unlabeled" / "any" / "layout"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(200):
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(folder / f"{i}.png")
    plain = CompressConfig(**{**TINY_CONFIG, "epochs": 1, "control": "label-smoothing"}, artifacts=str(tmp_path / "a"))
    config = replace(plain, unlabeled=str(tmp_path / "unlabeled"))
    run = prepare(config, NullReporter())
    assert len(run.distilled_data.train_y) == len(run.data.train_y) + 200 and (run.distilled_data.train_y == -1).sum() == 200
    with_images, without = compress(config).manifest, compress(replace(plain, artifacts=str(tmp_path / "b"))).manifest
    for kind in ("baseline", "control"):
        assert with_images.models[kind].test_correct == without.models[kind].test_correct, kind
    said = with_images.details["attribution"]
    assert "Not the same data: the distilled student also learnt 200 images from" in said and "never saw" in said
    assert with_images.details["config"]["unlabeled"] == str(tmp_path / "unlabeled")


def test_a_sweep_with_images_without_labels_says_its_comparison_is_not_data_equal():
    # The recorded --unlabeled aux study (benchmarks/results): its summary says so; the same sweep without it does not.
    from conftest import REPO
    from kdcompress.report.sweep_render import sweep_context

    results = json.loads((REPO / "benchmarks/results/study43-cifar3-unlabeled-aux/results.json").read_text())
    assert sweep_context(results)[-1].startswith("Not the same data: the distilled students also learnt the images without "
                                                 "labels of the dataset's auxiliary classes")  # fmt: skip
    results["settings"]["unlabeled"] = None
    assert not any(line.startswith("Not the same data") for line in sweep_context(results))
