"""The frontier and the recommendation: Pareto marking, budgets, never a format slower than FP32, interleaved timing."""

from __future__ import annotations

import json
import shutil

import pytest

from kdcompress.cli import app
from kdcompress.core.errors import KdcError
from kdcompress.deploy.frontier import Budget, not_faster, pareto, Point, recommend
from kdcompress.deploy.timing import cpu_isa, interleaved_latency
from kdcompress.report.render import label_offsets

from conftest import fails_cleanly, runner

# Hand-made points, shaped like a real run at 224 px: the teacher is the most accurate and the slowest.
TEACHER = Point("teacher", "teacher.onnx", 0.90, 16.0, 43.0)
BASELINE = Point("baseline", "baseline.onnx", 0.86, 2.0, 10.0)
STUDENT = Point("student", "student.onnx", 0.885, 2.0, 10.0, baseline="baseline")
INT8 = Point("int8", "student-int8.onnx", 0.88, 1.0, 2.7, source="student", baseline="baseline")
FP16 = Point("fp16", "student-fp16.onnx", 0.885, 2.6, 5.0, source="student", baseline="baseline")
POINTS = [TEACHER, BASELINE, STUDENT, INT8, FP16]
VERDICTS = {"student": {"delta": 2.5, "verdict": "better"}, "int8": {"delta": 2.0, "verdict": "noise"}}


def test_pareto_keeps_exactly_the_points_no_other_beats():
    # latency: the teacher (most accurate), the student (2 ms, 88.5%) and INT8 (1 ms); the baseline ties the
    # student's latency with less accuracy, FP16 ties its accuracy and is slower.
    assert pareto(POINTS, "p50_ms") == {"teacher", "student", "int8"}
    assert pareto(POINTS, "mb") == {"teacher", "fp16", "int8"}
    twins = [Point("a", "a", 0.5, 1.0, 1.0), Point("b", "b", 0.5, 1.0, 1.0)]
    assert pareto(twins, "mb") == {"a", "b"}  # equal points do not beat each other


def test_the_most_accurate_point_within_the_budget_is_recommended_with_ratios_and_verdict():
    out = recommend(POINTS, "teacher", Budget(max_ms=2, max_mb=10, max_drop=2), VERDICTS, "Test CPU (avx2)")
    assert out["meets"] and out["file"] == "student.onnx"  # more accurate than INT8, within 2 ms and 10 MB
    assert out["words"] == (
        "Ship student.onnx: 2.00 ms at batch 1 (8.00x faster than the teacher), 10.0 MB (4.30x smaller), accuracy "
        "88.5% (1.5 points below the teacher; vs its baseline +2.5 points, better beyond noise). Measured on Test CPU (avx2)."
    )
    tight = recommend(POINTS, "teacher", Budget(max_ms=1.5), VERDICTS, "here")
    assert tight["file"] == "student-int8.onnx" and "within noise" in tight["words"]


def test_a_recommendation_bigger_or_slower_than_the_teacher_says_larger_and_slower():
    # At 32 px a ResNet student can be larger and slower than a small teacher: the ratio words must not lie.
    small_teacher = Point("teacher", "teacher.onnx", 0.90, 1.0, 2.0)
    points = [small_teacher, Point("student", "student.onnx", 0.89, 1.25, 8.0, baseline="baseline")]
    words = recommend(points, "teacher", Budget(max_drop=5), {}, "here")["words"]
    assert "(1.25x slower than the teacher), 8.0 MB (4.00x larger)" in words and "smaller" not in words


def test_nothing_meets_the_budget_names_the_closest():
    out = recommend(POINTS, "teacher", Budget(max_ms=0.5, max_drop=0.5), VERDICTS, "here")
    assert not out["meets"] and out["file"] == "student-int8.onnx"  # the least over both limits
    assert out["words"].startswith("Nothing meets the budget (<= 0.5 ms, <= 0.5 points below the teacher); the closest is student-int8.onnx")


def test_an_int8_or_fp16_file_no_faster_than_fp32_is_never_recommended():
    slow_int8 = Point("int8", "student-int8.onnx", 0.885, 2.4, 2.7, source="student", baseline="baseline")
    points = [TEACHER, BASELINE, STUDENT, slow_int8, FP16]
    assert set(not_faster(points)) == {"int8", "fp16"}
    # Only INT8 fits 3 MB, but it is slower than the FP32 student here: the closest FP32 model is named instead.
    out = recommend(points, "teacher", Budget(max_mb=3), VERDICTS, "here")
    assert not out["meets"] and out["file"] != "student-int8.onnx" and set(out["excluded_not_faster"]) == {"int8", "fp16"}
    assert recommend(points, "teacher", Budget(max_mb=100), VERDICTS, "here")["file"] == "student.onnx"


def test_the_teacher_is_never_the_recommendation():
    out = recommend(POINTS, "teacher", Budget(max_drop=0), VERDICTS, "here")
    assert out["file"] != "teacher.onnx" and not out["meets"]


@pytest.mark.parametrize(
    "budget, message",
    [
        (dict(max_ms=0), "--max-ms must be above 0, got 0"),
        (dict(max_mb=-1), "--max-mb must be above 0, got -1"),
        (dict(max_drop=101), "--max-drop must be between 0 and 100 accuracy points, got 101"),
    ],
)
def test_out_of_range_budgets_are_refused(budget, message):
    with pytest.raises(KdcError, match=message):
        Budget(**budget)


def test_labels_of_coinciding_markers_are_moved_apart():
    xs = {"baseline": 0.52, "student": 0.53, "teacher": 0.94}
    ys = {"baseline": 98.6, "student": 98.63, "teacher": 98.9}
    offsets = label_offsets(xs, ys)
    assert offsets["baseline"] != offsets["student"]  # the two would print over each other today
    assert offsets["teacher"] == (6, 4)  # nothing near it: its label stays beside the marker


def test_interleaved_timing_visits_the_calls_in_turn():
    order: list[str] = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b")}
    timings = interleaved_latency(calls, warmup=1, runs=20, min_seconds=0.0)
    assert order[:2] == ["a", "b"]  # warm-ups
    visits = order[2:]
    assert visits[:4] == ["a", "a", "b", "b"] and visits.count("a") == visits.count("b") == timings["a"]["runs"] >= 20


def test_isa_flags_are_read_from_cpuinfo():
    intel = "model name\t: Intel Xeon\nflags\t\t: fpu sse avx2 avx512f avx512_vnni amx_tile amx_int8\n"
    assert cpu_isa(intel) == ["avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"]
    assert cpu_isa("Features\t: fp asimd asimddp i8mm\n") == ["asimddp", "i8mm"]
    assert cpu_isa("flags\t: fpu sse sse2\n") == []


def test_benchmark_marks_the_frontier_and_recommends_under_a_budget(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result = runner.invoke(app, ["benchmark", str(run), "--quick", "--no-gpu", "--max-ms", "1000", "--max-drop", "100"])
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "benchmark.json").read_text())
    assert all(set(m["pareto"]) == {"latency", "size"} for m in saved["models"].values())
    assert any(m["pareto"]["latency"] for m in saved["models"].values())
    rec = saved["recommendation"]
    assert rec["meets"] and rec["model"] != "teacher" and rec["budget"] == {"max_ms": 1000, "max_mb": None, "max_drop_points": 100}
    # the most accurate model but the teacher
    best = max((r for r in saved["models"] if r != "teacher"), key=lambda r: saved["models"][r]["accuracy"]["accuracy"])
    assert saved["models"][rec["model"]]["accuracy"]["accuracy"] == saved["models"][best]["accuracy"]["accuracy"]
    assert saved["machine"]["cpu"] in rec["words"] and " ".join(rec["words"].split()) in " ".join(result.output.split())
    assert "frontier" in result.output and saved["recommendation"]["words"] in (run / "benchmark.md").read_text()


def test_benchmark_refuses_a_bad_budget_in_one_line(tiny_run):
    fails_cleanly(runner.invoke(app, ["benchmark", str(tiny_run), "--max-ms", "0"]), "--max-ms must be above 0, got 0")


def test_a_size_budget_may_ship_a_smaller_format_that_is_not_faster_and_says_so():
    # Issue #33, item 9: --max-mb alone excluded every INT8 file as "not faster" and named a baseline over the budget.
    slow_int8 = Point("int8", "student-int8.onnx", 0.89, 2.2, 2.6, source="student", baseline="baseline")
    points = [TEACHER, BASELINE, Point("student", "student.onnx", 0.88, 2.0, 10.0, baseline="baseline"), slow_int8]
    chosen = recommend(points, "teacher", Budget(max_mb=3), {}, "here")
    assert chosen["meets"] and chosen["file"] == "student-int8.onnx"
    assert "chosen for its size: student-int8.onnx is not faster than student.onnx" in chosen["words"]
    assert recommend(points, "teacher", Budget(max_ms=3), {}, "here")["file"] == "student.onnx"  # latency: still excluded


@pytest.mark.parametrize("flag, value", [("--max-ms", "inf"), ("--max-mb", "nan"), ("--max-drop", "inf")])
def test_non_finite_budgets_are_refused(tiny_run, flag, value):
    fails_cleanly(runner.invoke(app, ["benchmark", str(tiny_run), flag, value]), f"{flag} must be a finite number")
