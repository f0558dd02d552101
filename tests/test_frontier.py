"""The frontier and the recommendation: Pareto marking, budgets, never a format slower than FP32, interleaved timing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import fails_cleanly, runner
from kdcompress.cli import app
from kdcompress.core.errors import KdcError
from kdcompress.deploy.frontier import Budget, Point, not_faster, pareto, recommend
from kdcompress.deploy.timing import cpu_isa, interleaved_latency

# Hand-made points, shaped like a real run at 224 px: the teacher is the most accurate and the slowest. Each gets
# right the first N of 200 test images, so that paired comparisons between them are what the counts say.
IMAGES = 200


def _right(n: int) -> np.ndarray:
    return np.arange(IMAGES) < n


def pt(name, correct, ms, mb, source=None, baseline=None, target="onnxruntime-cpu", precision="native", file=None):
    return Point(name, file or f"{name}.onnx", correct / IMAGES, ms, mb, source, baseline, None, target, precision, _right(correct))


TEACHER = pt("teacher", 180, 16.0, 43.0)
BASELINE = pt("baseline", 160, 2.0, 10.0)
STUDENT = pt("student", 177, 2.0, 10.0, baseline="baseline")
INT8 = pt("int8", 176, 1.0, 2.7, source="student", baseline="baseline", file="student-int8.onnx")
FP16 = pt("fp16", 177, 2.6, 5.0, source="student", baseline="baseline", file="student-fp16.onnx")
POINTS = [TEACHER, BASELINE, STUDENT, INT8, FP16]


def test_pareto_keeps_exactly_the_points_no_other_beats():
    # latency: the teacher (most accurate), the student (2 ms, 88.5%) and INT8 (1 ms); the baseline ties the
    # student's latency with less accuracy, FP16 ties its accuracy and is slower.
    assert pareto(POINTS, "p50_ms") == {"teacher", "student", "int8"}
    assert pareto(POINTS, "mb") == {"teacher", "fp16", "int8"}
    twins = [Point("a", "a", 0.5, 1.0, 1.0), Point("b", "b", 0.5, 1.0, 1.0)]
    assert pareto(twins, "mb") == {"a", "b"}  # equal points do not beat each other


def test_a_within_noise_faster_smaller_file_wins_and_says_how_many_tied():
    # INT8 gets one test image fewer right than the FP32 student, and is 2x faster and 4x smaller: tied, and faster.
    out = recommend(POINTS, "teacher", Budget(max_ms=2, max_mb=10, max_drop=3), "Test CPU (avx2), 1 thread(s)")
    assert out["meets"] and out["file"] == "student-int8.onnx" and set(out["tied"]) == {"student", "int8"}
    assert out["words"] == (
        "Within the budget (<= 2 ms, <= 10 MB, <= 3 points below the teacher): ship student-int8.onnx on onnxruntime-cpu, "
        "in the file's own precision: 1.00 ms at batch 1 (16.00x faster than "
        "the teacher there), 2.7 MB (15.93x smaller), accuracy 88.0% (2.0 points below the teacher; vs its baseline "
        "+8.0 points, better beyond noise). Measured on Test CPU (avx2), 1 thread(s). 2 points within the budget tied "
        "within noise of the most accurate; this is the fastest of them."
    )


def test_a_file_better_beyond_noise_is_never_passed_over_for_a_faster_one():
    fast_but_worse = pt("int8", 150, 0.5, 2.7, source="student", baseline="baseline", file="student-int8.onnx")
    out = recommend([TEACHER, BASELINE, STUDENT, fast_but_worse], "teacher", Budget(max_ms=5), "here")
    assert out["file"] == "student.onnx" and out["tied"] == ["student"]
    # within noise of the best, but beaten beyond noise by the student: not chosen either
    middle = pt("control", 170, 0.8, 10.0, baseline="baseline")
    slow_best = pt("student", 185, 3.0, 10.0, baseline="baseline")
    assert recommend([TEACHER, BASELINE, slow_best, middle, pt("int8", 165, 0.5, 2.7, file="x.onnx")], "teacher",
                     Budget(max_ms=5), "here")["file"] == "student.onnx"  # fmt: skip


def test_the_points_of_one_file_on_several_targets_compete_and_the_line_names_the_runtime():
    ov = pt("int8@ov", 176, 0.4, 2.7, source="student@ov", baseline="baseline", target="openvino-cpu", precision="f32", file="student-int8.onnx")
    ov_fp32 = pt("student@ov", 177, 1.6, 10.0, baseline="baseline", target="openvino-cpu", precision="f32", file="student.onnx")
    teacher_ov = pt("teacher@ov", 180, 4.0, 43.0, target="openvino-cpu", precision="f32", file="teacher.onnx")
    points = [TEACHER, teacher_ov, BASELINE, STUDENT, INT8, ov_fp32, ov]
    points = [p if p.name != "teacher@ov" else Point(**{**p.__dict__, "role": "teacher"}) for p in points]
    out = recommend(points, "teacher", Budget(max_ms=2), "here")
    assert out["point"] == "int8@ov" and out["target"] == "openvino-cpu" and out["precision"] == "f32"
    assert "student-int8.onnx on openvino-cpu at f32 precision: 0.40 ms at batch 1 (10.00x faster than the teacher there)" in out["words"]


def test_a_recommendation_bigger_or_slower_than_the_teacher_says_larger_and_slower():
    # At 32 px a ResNet student can be larger and slower than a small teacher: the ratio words must not lie.
    small_teacher = pt("teacher", 180, 1.0, 2.0)
    points = [small_teacher, pt("student", 178, 1.25, 8.0, baseline="baseline")]
    words = recommend(points, "teacher", Budget(max_drop=5), "here")["words"]
    assert "(1.25x slower than the teacher there), 8.0 MB (4.00x larger)" in words and "smaller" not in words


def test_nothing_meets_the_budget_names_the_closest():
    out = recommend(POINTS, "teacher", Budget(max_ms=0.5, max_drop=0.5), "here")
    assert not out["meets"] and out["file"] == "student-int8.onnx"  # the least over both limits
    assert out["words"].startswith("Nothing meets the budget (<= 0.5 ms, <= 0.5 points below the teacher); the closest is student-int8.onnx")


def test_an_int8_or_fp16_file_no_faster_than_fp32_is_never_recommended_for_speed():
    slow_int8 = pt("int8", 177, 2.4, 2.7, source="student", baseline="baseline", file="student-int8.onnx")
    points = [TEACHER, BASELINE, STUDENT, slow_int8, FP16]
    assert set(not_faster(points)) == {"int8", "fp16"}
    out = recommend(points, "teacher", Budget(max_ms=3), "here")
    assert out["file"] == "student.onnx" and set(out["excluded_not_faster"]) == {"int8", "fp16"}


def test_the_teacher_is_never_the_recommendation():
    out = recommend(POINTS, "teacher", Budget(max_drop=0), "here")
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


def test_interleaved_timing_visits_the_calls_in_turn():
    order: list[str] = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b")}
    timings = interleaved_latency(calls, warmup=1, runs=20, min_seconds=0.0)
    assert order[:2] == ["a", "b"]  # warm-ups
    visits = order[2:]
    assert visits[:4] == ["a", "a", "b", "b"] and visits.count("a") == visits.count("b") == timings["a"]["runs"] >= 20


def test_a_fast_call_is_not_kept_timing_until_a_slow_one_has_as_many_runs():
    import time

    calls = {"teacher batch": lambda: time.sleep(0.01), "student": lambda: None}
    timings = interleaved_latency(calls, warmup=1, runs=20, min_seconds=0.1)
    # The slow call leaves once it has its 20 runs and 0.1 s; before, every call ran until the slowest had 20 x 20.
    assert 20 <= timings["teacher batch"]["runs"] < 40
    assert timings["student"]["runs"] == 400  # its cap: a no-op never fills 0.1 s


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
    points = [p for m in saved["models"].values() for p in m["points"]]
    assert all(set(p["pareto"]) == {"latency", "size"} for p in points) and any(p["pareto"]["latency"] for p in points)
    rec = saved["recommendation"]
    assert rec["meets"] and rec["model"] != "teacher" and rec["budget"] == {"max_ms": 1000, "max_mb": None, "max_drop_points": 100, "max_ram_mb": None}
    best = max(p["accuracy"] for p in points if p["role"] != "teacher")
    chosen = next(p for p in points if p["role"] == rec["model"] and p["target"] == rec["target"] and p["precision"] == rec["precision"])
    assert chosen["accuracy"] == best or rec["point"] in rec["tied"]  # the most accurate, or tied with it within noise
    assert saved["machine"]["cpu"] in rec["words"] and " ".join(rec["words"].split()) in " ".join(result.output.split())
    markdown = (run / "benchmark.md").read_text()
    assert "frontier" in result.output and rec["words"] in markdown and "```python" in markdown
    assert saved["command"].endswith("--max-ms 1000 --max-drop 100")


def test_benchmark_refuses_a_bad_budget_in_one_line(tiny_run):
    fails_cleanly(runner.invoke(app, ["benchmark", str(tiny_run), "--max-ms", "0"]), "--max-ms must be above 0, got 0")


def test_a_size_budget_may_ship_a_smaller_format_that_is_not_faster_and_says_so():
    # --max-mb alone once excluded every INT8 file as "not faster" and named a baseline over the budget.
    slow_int8 = pt("int8", 178, 2.2, 2.6, source="student", baseline="baseline", file="student-int8.onnx")
    points = [TEACHER, BASELINE, pt("student", 150, 2.0, 10.0, baseline="baseline"), slow_int8]
    chosen = recommend(points, "teacher", Budget(max_mb=3), "here")
    assert chosen["meets"] and chosen["file"] == "student-int8.onnx"
    assert "chosen for its size: student-int8.onnx is not faster than student.onnx" in chosen["words"]
    assert recommend(points, "teacher", Budget(max_ms=3), "here")["file"] == "baseline.onnx"  # latency: INT8 still excluded


@pytest.mark.parametrize("flag, value", [("--max-ms", "inf"), ("--max-mb", "nan"), ("--max-drop", "inf")])
def test_non_finite_budgets_are_refused(tiny_run, flag, value):
    fails_cleanly(runner.invoke(app, ["benchmark", str(tiny_run), flag, value]), f"{flag} must be a finite number")


def test_the_line_gives_sensitivity_and_specificity_for_two_classes():
    two = Point(**{**INT8.__dict__, "sensitivity": 0.95, "specificity": 0.64})
    words = recommend([TEACHER, BASELINE, STUDENT, two], "teacher", Budget(max_ms=1.5), "here")["words"]
    assert "; sensitivity 95.0%, specificity 64.0%;" in words


def test_the_recommendation_says_what_the_shipped_models_gain_means_for_its_kind():
    from kdcompress.deploy.benchmark import gain_meaning

    said = {"resnet10t": "no gain over the baseline beyond noise, so nothing to attribute to the teacher"}
    # the walkthrough shipped control-resnet10t under the distilled student's verdict; a control never saw the teacher
    assert "regularisation, not the teacher's knowledge" in gain_meaning("control-resnet10t", said)
    assert said["resnet10t"] not in gain_meaning("control-resnet10t", said)
    assert gain_meaning("int8-resnet10t", said) == f" What its gain over the baseline means: {said['resnet10t']}."
    assert gain_meaning("student", "the teacher's knowledge") == " What its gain over the baseline means: the teacher's knowledge."
    assert gain_meaning("baseline-resnet10t", said) == gain_meaning("teacher", said) == ""


def test_the_teachers_own_int8_file_competes_and_wins_where_it_is_the_most_accurate_within_the_budget():
    # The measured case: the teacher's INT8 file (95.6% -> 96.0%, 4.6 -> 1.9 ms) against the distilled student's INT8.
    teacher_int8 = pt("teacher-int8", 181, 1.9, 11.0, source="teacher", file="teacher-int8.onnx")
    out = recommend([*POINTS, teacher_int8], "teacher", Budget(max_ms=2), "here")
    assert out["file"] == "teacher-int8.onnx" and out["meets"]
    assert "8.42x faster than the teacher there" in out["words"] and "vs its baseline" not in out["words"]
    assert "it is the teacher itself, in another format: no training" in out["words"]
    # beyond the budget it is never chosen: the student's INT8 file is
    assert recommend([*POINTS, teacher_int8], "teacher", Budget(max_ms=1.5), "here")["file"] == "student-int8.onnx"


def test_max_ram_chooses_within_the_memory_budget_by_the_same_tie_rule():
    # The student's INT8 file adds the most memory here; a RAM budget passes it over for the next tied
    # point, and a point whose memory was not measured is never within a RAM budget.
    def with_ram(point, ram):
        return Point(**{**point.__dict__, "ram_mb": ram})

    points = [with_ram(TEACHER, 90.0), with_ram(BASELINE, 20.0), with_ram(STUDENT, 20.0), with_ram(INT8, 40.0), with_ram(FP16, 15.0)]
    assert recommend(points, "teacher", Budget(max_ms=2), "here")["file"] == "student-int8.onnx"
    out = recommend(points, "teacher", Budget(max_ms=2, max_ram=30), "here")
    assert out["file"] == "student.onnx" and out["budget"]["max_ram_mb"] == 30
    assert "<= 30 MB of RAM" in out["words"] and "It adds 20 MB of resident memory when loaded." in out["words"]
    unmeasured = [points[0], points[1], Point(**{**STUDENT.__dict__}), points[3]]
    assert recommend(unmeasured, "teacher", Budget(max_ms=2, max_ram=30), "here")["file"] == "baseline.onnx"
    with pytest.raises(KdcError, match="--max-ram must be above 0"):
        Budget(max_ram=0)
