"""Several students in one run: one teacher and one recording of its outputs for all, a fair start per student,
roles named by architecture through quantize, benchmark and predict; one-student runs keep their names."""

import json

import pytest

from conftest import TINY, TINY_CONFIG, fails_cleanly, runner
from kdcompress.cli import app
from kdcompress.core import roles
from kdcompress.core.errors import KdcError
from kdcompress.deploy.benchmark import benchmark_run
from kdcompress.deploy.manifest import read_manifest
from kdcompress.runs import compress as compress_module
from kdcompress.runs.compress import compress
from kdcompress.train.config import CompressConfig, split_students

TWO = "test_resnet,test_efficientnet"  # two tiny timm students (the second is also the tiny teacher's architecture)


def _counting(monkeypatch, name):
    """Wrap NAME where compress calls it (record_teacher and teacher_train_logits: where train.seed imports them from)
    so that each call is counted; returns the list of calls."""
    from kdcompress.train import fair as fair_module
    from kdcompress.train import teacher as teacher_module

    module = {"record_teacher": teacher_module, "teacher_train_logits": fair_module}.get(name, compress_module)
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.fixture(scope="module")
def two_student_run(tmp_path_factory):
    """A finished run with two students and the control, counting the teacher's trainings and output recordings."""
    patch = pytest.MonkeyPatch()
    try:
        counts = {name: _counting(patch, name) for name in ("load_or_train_teacher", "record_teacher", "teacher_train_logits")}
        config = CompressConfig(**{**TINY_CONFIG, "control": "label-smoothing", "student": TWO}, artifacts=str(tmp_path_factory.mktemp("a")))
        result = compress(config)
    finally:
        patch.undo()
    return result.run_dir, {name: len(calls) for name, calls in counts.items()}


@pytest.mark.xdist_group("two_student_run")  # one worker makes the two_student_run they share
def test_two_students_share_one_teacher_and_one_recording_of_its_outputs(two_student_run):
    run, counts = two_student_run
    assert counts == {"load_or_train_teacher": 1, "record_teacher": 1, "teacher_train_logits": 1}
    manifest = read_manifest(run)
    expected = {"teacher"} | {f"{kind}-{arch}" for kind in ("baseline", "student", "control") for arch in TWO.split(",")}
    assert set(manifest.models) == expected
    for name, entry in manifest.models.items():
        assert entry.onnx == f"{name}.onnx" and (run / entry.onnx).is_file()
        if name != "teacher":
            assert entry.architecture == roles.student_of(name)
    history = json.loads((run / "history.json").read_text())
    assert set(history) == expected
    # one verdict set and one attribution per student, each against its own baseline and control
    assert set(manifest.to_dict()["comparisons"]) == {
        f"{m}-{a}_vs_{r}-{a}" for a in TWO.split(",") for m, r in (("student", "baseline"), ("student", "control"), ("control", "baseline"))
    }
    assert set(manifest.to_dict()["attribution"]) <= set(TWO.split(","))
    # the matched smoothing is the teacher's, computed once: the same for both controls
    assert manifest.models["control-test_resnet"].details["matched"] == manifest.models["control-test_efficientnet"].details["matched"]


@pytest.mark.e2e
def test_each_students_baseline_and_distilled_are_identical_with_alpha_and_beta_zero(tmp_path):
    zero = compress(CompressConfig(**{**TINY_CONFIG, "alpha": 0.0, "beta": 0.0, "student": TWO}, artifacts=str(tmp_path)))
    history = json.loads((zero.run_dir / "history.json").read_text())
    for arch in TWO.split(","):
        assert [h["ce"] for h in history[f"student-{arch}"]] == [h["ce"] for h in history[f"baseline-{arch}"]]
        assert zero.manifest.models[f"student-{arch}"].test_correct == zero.manifest.models[f"baseline-{arch}"].test_correct


@pytest.mark.e2e
def test_a_student_trains_the_same_beside_another_as_alone(tmp_path):
    # Same seed, same views, and the teacher's outputs recorded once for the first student replayed for the second:
    # the second student's baseline and distilled student are those of a run of that student alone, bit for bit.
    both = compress(CompressConfig(**{**TINY_CONFIG, "student": TWO}, artifacts=str(tmp_path / "both")))
    alone = compress(CompressConfig(**{**TINY_CONFIG, "student": "test_efficientnet"}, artifacts=str(tmp_path / "alone")))
    history = json.loads((both.run_dir / "history.json").read_text())
    lone = json.loads((alone.run_dir / "history.json").read_text())
    for kind in ("baseline", "student"):
        assert [h["loss"] for h in history[f"{kind}-test_efficientnet"]] == [h["loss"] for h in lone[kind]], kind
        assert both.manifest.models[f"{kind}-test_efficientnet"].test_correct == alone.manifest.models[kind].test_correct


@pytest.mark.xdist_group("two_student_run")  # one worker makes the two_student_run they share
def test_quantize_benchmark_and_predict_address_each_student(two_student_run, tmp_path):
    run, _ = two_student_run
    result = runner.invoke(app, ["quantize", str(run), "--model", "student-test_resnet"])
    assert result.exit_code == 0, result.output
    assert (run / "student-test_resnet-int8.onnx").is_file() and (run / "student-test_resnet-fp16.onnx").is_file()
    assert not (run / "student-test_efficientnet-int8.onnx").exists()  # --model: that student alone
    manifest = read_manifest(run)
    assert manifest.models["int8-test_resnet"].onnx == "student-test_resnet-int8.onnx"
    fails_cleanly(runner.invoke(app, ["quantize", str(run), "--model", "baseline-test_resnet"]), "is neither a distilled student nor the teacher")

    bench = benchmark_run(run, quick=True, gpu=False)
    assert list(bench.models) == roles.ordered(manifest.models)
    assert set(bench.int8_verdicts) == {"int8-test_resnet"}
    assert all(set(p.pareto) == {"latency", "size"} for p in bench.points())

    image = tmp_path / "digit.png"
    from PIL import Image

    Image.new("L", (8, 8), 200).save(image)
    fails_cleanly(runner.invoke(app, ["predict", str(image), "--run", str(run)]), "pick one with --model student-test_resnet or")
    chosen = runner.invoke(app, ["predict", str(image), "--run", str(run), "--model", "int8-test_resnet", "--json"])
    assert chosen.exit_code == 0, chosen.output
    assert json.loads(chosen.stdout)["model"].endswith("student-test_resnet-int8.onnx")


def test_a_one_student_run_keeps_its_plain_names(tiny_run):
    manifest = read_manifest(tiny_run)
    assert set(manifest.models) == {"teacher", "baseline", "student", "control"}
    assert "student_vs_baseline" in manifest.to_dict()["comparisons"] and isinstance(manifest.to_dict()["attribution"], str)


@pytest.mark.parametrize(
    "text, message",
    [
        ("resnet18,,resnet10t", "has an empty name"),
        ("resnet18,resnet18", "names resnet18 more than once"),
        (",".join(f"test_resnet{i}" for i in range(9)), "at most 8 fit one run"),
        ("test_resnet,hf-hub:timm/resnet18.a1_in1k", "each must be a plain timm model name"),
    ],
)
def test_bad_student_lists_are_refused_in_one_line(text, message):
    with pytest.raises(KdcError, match=message):
        split_students(text)
    fails_cleanly(runner.invoke(app, ["compress", *TINY, "--student", text]), message)


@pytest.mark.e2e
def test_a_sweep_of_two_students_trains_one_teacher_and_records_each_seed_once(tmp_path, monkeypatch):
    from kdcompress.train import teacher as teacher_module

    trained, recorded = [], []
    train, record = teacher_module._train_teacher, teacher_module.record_teacher
    monkeypatch.setattr(teacher_module, "_train_teacher", lambda *a, **k: trained.append(1) or train(*a, **k))
    monkeypatch.setattr(teacher_module, "record_teacher", lambda *a, **k: recorded.append(1) or record(*a, **k))
    out = tmp_path / "sweep"
    args = ["sweep", *TINY, "--student", TWO, "--T", "4", "--alpha", "0.5", "--beta", "0.3", "--seeds", "1",
            "--control", "none", "--teacher-epochs", "1", "--artifacts", str(tmp_path), "--out", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (len(trained), len(recorded)) == (1, 1)
    for arch in TWO.split(","):
        results = json.loads((out / arch / "results.json").read_text())
        assert [r["name"] for r in results["runs"]] == ["seed0-baseline", "seed0-T4-alpha0.5-beta0.3"]
        assert f"student {arch}" in result.output
    # the recording's cost is kept where it was made (the first student's sweep), not where it was replayed
    costs = [[p.name for p in (out / arch / "runs").glob("*.cost")] for arch in TWO.split(",")]
    assert costs == [["seed0-teacher-outputs.cost"], []]
    fails_cleanly(runner.invoke(app, ["compress", *TINY, "--from-sweep", str(out)]), "holds a sweep per student: pass one of them")
    # The teacher is cached under --artifacts, not inside the sweep: a compress from one student's sweep reuses it.
    assert [p.name for p in (tmp_path / ".teachers").iterdir()] and not (out / ".teachers").exists()
    result = runner.invoke(app, ["compress", *TINY, "--from-sweep", str(out / "test_resnet"), "--artifacts", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert len(trained) == 1 and "reusing the" in " ".join(result.output.split())


def test_a_teacher_cached_inside_an_older_several_student_sweep_is_still_found(tmp_path):
    from kdcompress.train.teacher import _cached_teacher, teacher_cache_dir

    cfg = CompressConfig(artifacts=str(tmp_path), out=str(tmp_path / "sweep" / "test_resnet"))
    assert teacher_cache_dir(cfg) == tmp_path / ".teachers"
    assert _cached_teacher(cfg, "k") == tmp_path / ".teachers" / "k"  # nothing cached anywhere: the new place
    legacy = tmp_path / "sweep" / ".teachers" / "k"
    legacy.mkdir(parents=True)
    (legacy / "teacher.pt").write_bytes(b"")
    assert _cached_teacher(cfg, "k") == tmp_path / ".teachers" / "k"  # half an entry is no teacher
    (legacy / "record.json").write_text("{}")
    assert _cached_teacher(cfg, "k") == legacy
    outside = CompressConfig(artifacts=str(tmp_path / "artifacts"), out=str(tmp_path / "elsewhere" / "run"))
    assert teacher_cache_dir(outside) == tmp_path / "elsewhere" / ".teachers"


def test_each_format_of_a_student_is_judged_against_that_students_baseline():
    from kdcompress.deploy.benchmark import points_of
    from kdcompress.deploy.results import BenchmarkResult, ModelResult, PointResult

    def model(role, file, fmt="FP32", source=None, baseline=None, targets=("onnxruntime-cpu",)):
        points = [PointResult(role, file, t, "native" if t == "onnxruntime-cpu" else "f32", 0.9, 9, 1.0, {"p50_ms": 1.0}, 10.0) for t in targets]
        return ModelResult(role, file, fmt, source, baseline, 1, 1.0, 1, None, True, points)

    models = {
        "teacher": model("teacher", "teacher.onnx"),
        "baseline-resnet18": model("baseline-resnet18", "baseline-resnet18.onnx"),
        "student-resnet18": model("student-resnet18", "student-resnet18.onnx", baseline="baseline-resnet18", targets=("onnxruntime-cpu", "openvino-cpu")),
        "int8-resnet18": model(
            "int8-resnet18", "student-resnet18-int8.onnx", "INT8", "student-resnet18", "baseline-resnet18", ("onnxruntime-cpu", "openvino-cpu")
        ),
        "baseline-resnet10t": model("baseline-resnet10t", "baseline-resnet10t.onnx"),
        "student-resnet10t": model("student-resnet10t", "student-resnet10t.onnx", baseline="baseline-resnet10t"),
    }
    result = BenchmarkResult("r", "r", "d", 10, ["a", "b"], {}, {}, {}, models)
    points = {p.name: p for p in points_of(result)}
    assert points["student-resnet18-int8.onnx @ openvino-cpu f32"].baseline == "baseline-resnet18.onnx @ onnxruntime-cpu native"
    assert points["student-resnet18-int8.onnx @ openvino-cpu f32"].source == "student-resnet18.onnx @ openvino-cpu f32"  # same target
    assert points["student-resnet18-int8.onnx @ onnxruntime-cpu native"].source == "student-resnet18.onnx @ onnxruntime-cpu native"
    assert points["student-resnet10t.onnx @ onnxruntime-cpu native"].baseline == "baseline-resnet10t.onnx @ onnxruntime-cpu native"
    assert points["teacher.onnx @ onnxruntime-cpu native"].baseline is None and points["baseline-resnet18.onnx @ onnxruntime-cpu native"].baseline is None


@pytest.mark.xdist_group("two_student_run")  # one worker makes the two_student_run they share
def test_quantize_checks_every_student_first_and_publishes_nothing_when_one_is_missing(two_student_run, tmp_path):
    # A deleted student file used to be found after the first student's files were rewritten.
    from conftest import copy_run, files_under

    run = copy_run(two_student_run[0], tmp_path)
    for name in ("student-test_resnet-int8.onnx", "student-test_resnet-fp16.onnx", "student-test_efficientnet-int8.onnx"):
        (run / name).unlink(missing_ok=True)
    (run / "student-test_efficientnet.onnx").unlink()
    manifest, before = (run / "manifest.json").read_bytes(), files_under(run)
    fails_cleanly(runner.invoke(app, ["quantize", str(run)]), "student-test_efficientnet.onnx (student-test_efficientnet) is missing")
    assert files_under(run) == before and (run / "manifest.json").read_bytes() == manifest
