"""kdc benchmark on tiny exported models: fields and units, golden MACs, agreement with the manifest."""

import json
import shutil

import numpy as np
import pytest
import torch

from kdcompress.deploy.benchmark import benchmark_run, classification_metrics, onnx_size
from kdcompress.cli import app
from kdcompress.train.export import export_onnx
from kdcompress.core.files import write_json_atomic
from kdcompress.deploy.manifest import read_manifest
from kdcompress.report.render import benchmark_context
from kdcompress.deploy.preprocessing import Preprocessing

from conftest import runner, fails_cleanly



def test_macs_and_parameters_of_a_known_network(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(256, 5)).eval()
    prep = Preprocessing(8, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    images = np.random.default_rng(0).integers(0, 256, (8, 3, 8, 8), dtype=np.uint8)
    export_onnx(model, tmp_path / "m.onnx", prep, images)
    size = onnx_size(tmp_path / "m.onnx")
    assert size["macs"] == 4 * 8 * 8 * (3 * 3 * 3) + 256 * 5  # conv output x kernel volume + linear
    assert size["parameters"] == (4 * 27 + 4) + (256 * 5 + 5)
    assert size["file_mb"] == pytest.approx((tmp_path / "m.onnx").stat().st_size / 1e6)


def test_binary_metrics_by_hand():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 2.0]])
    labels = np.array([0, 0, 1, 1, 1])  # predicted 0, 1, 1, 0, 1
    metrics = classification_metrics(logits, labels, ["NORMAL", "PNEUMONIA"])
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["confusion_matrix"] == [[1, 1], [1, 2]]
    assert metrics["sensitivity"] == pytest.approx(2 / 3) and metrics["specificity"] == pytest.approx(1 / 2)
    assert metrics["per_class"]["PNEUMONIA"]["precision"] == pytest.approx(2 / 3)
    # positives score 1 - sigmoid-like margins: ranking gives AUC 5/6 by counting pairs
    assert metrics["roc_auc"] == pytest.approx(5 / 6)


def test_benchmark_fields_units_and_honest_gpu_status(tiny_run):
    result = benchmark_run(tiny_run, quick=True)
    manifest = read_manifest(tiny_run).to_dict()
    assert list(result["models"]) == ["teacher", "baseline", "student", "control"]
    # The verdicts are recomputed from the ONNX files' own predictions: they match compress's.
    recorded = {k: v["delta"] for k, v in manifest["comparisons"].items()}
    assert {k: v["delta"] for k, v in result["comparisons"].items()} == pytest.approx(recorded, abs=0.3)
    assert result["attribution"] and "distilled vs label smoothing" in "\n".join(benchmark_context(result))
    assert result["units"]["latency"].startswith("milliseconds") and result["settings"]["threads"] == 1
    assert result["machine"]["cores"] >= 1 and isinstance(result["machine"]["busy"], bool)
    for role, model in result["models"].items():
        acc = model["accuracy"]
        assert acc["agrees_with_manifest"] and acc["recorded_correct"] == manifest["models"][role]["test_correct"]
        assert 0 <= acc["accuracy"] <= 1 and len(acc["confusion_matrix"]) == 10
        cpu = model["cpu"]["batch1"]
        assert 0 < cpu["p50_ms"] <= cpu["p90_ms"] <= cpu["p99_ms"] and cpu["runs"] >= 20
        assert model["cpu"]["provider"] == "CPUExecutionProvider" and model["cpu"]["throughput_images_per_s"] > 0
        assert model["macs"] > 0 and model["parameters"] > 0
        assert model["file_mb"] == pytest.approx((tiny_run / model["file"]).stat().st_size / 1e6)
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert result["gpu"]["available"] is False
        assert all(m["gpu"] == {"available": False, "reason": result["gpu"]["reason"]} for m in result["models"].values())
        assert any(line.startswith("GPU: not available (") for line in benchmark_context(result))
    student = result["models"]["student"]["ratios_vs_teacher"]
    teacher = result["models"]["teacher"]
    assert student["smaller_x"] == pytest.approx(teacher["file_mb"] / result["models"]["student"]["file_mb"])


def test_benchmark_flags_a_manifest_that_disagrees_with_the_onnx_file(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    manifest = read_manifest(run).to_dict()
    manifest["models"]["baseline"]["test_correct"] += 5
    write_json_atomic(run / "manifest.json", manifest)
    result = benchmark_run(run, quick=True, gpu=False)
    assert not result["models"]["baseline"]["accuracy"]["agrees_with_manifest"]
    assert any("WARNING: baseline" in line for line in benchmark_context(result))


def test_cli_benchmark_writes_json_markdown_and_plot(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result = runner.invoke(app, ["benchmark", str(tmp_path), "--quick", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["run_dir"] == str(run) and data["command"] == f"kdc benchmark {run} --threads 1 --batch 64 --quick"
    for name in ("benchmark.json", "benchmark.md", "benchmark.png"):
        assert (run / name).stat().st_size > 0
    assert "| distilled |" in (run / "benchmark.md").read_text()
    human = runner.invoke(app, ["benchmark", str(run), "--quick", "--no-gpu"])
    assert human.exit_code == 0 and "CPU x faster" in human.stdout and "not requested" in human.stdout


@pytest.mark.parametrize("make, message", [(lambda p: p.mkdir(), "no finished run"), (lambda p: None, "folder not found")])
def test_cli_benchmark_without_a_run_is_a_clear_error(tmp_path, make, message):
    target = tmp_path / "artifacts"
    make(target)
    result = runner.invoke(app, ["benchmark", str(target)])
    fails_cleanly(result, message)


def test_a_busy_machine_is_flagged_not_silently_reported(tiny_run, monkeypatch):
    monkeypatch.setattr("kdcompress.deploy.timing.cpu_busy_fraction", lambda interval=0.5: 0.9)
    result = benchmark_run(tiny_run, quick=True, gpu=False)
    assert result["machine"]["busy"] and result["machine"]["cpu_busy_fraction"] == 0.9
    assert any(line.startswith("WARNING: the machine was busy (other processes used 90%") for line in benchmark_context(result))
    monkeypatch.setattr("kdcompress.deploy.timing.cpu_busy_fraction", lambda interval=0.5: 0.05)
    assert not benchmark_run(tiny_run, quick=True, gpu=False)["machine"]["busy"]


def test_an_fp16_file_lists_each_node_after_its_inputs_and_counts_the_fp32_macs(tiny_run, tmp_path):
    import onnx

    from kdcompress.deploy.benchmark import count_macs
    from kdcompress.deploy.quantize import to_fp16

    fp32 = onnx.load(str(tiny_run / "student.onnx"))
    half = onnx.load(str(to_fp16(tiny_run / "student.onnx", tmp_path / "student-fp16.onnx")))
    ready = {v.name for v in half.graph.input} | {t.name for t in half.graph.initializer} | {""}
    for node in half.graph.node:
        assert all(name in ready for name in node.input), node.name
        ready.update(node.output)
    assert count_macs(half) == count_macs(fp32) > 0


# The third reliability probe (issue #33), benchmark's items.


@pytest.mark.parametrize(
    "images, labels, said",
    [
        (np.zeros((5, 3, 16, 16), np.uint8), np.zeros(5, np.int64), "not N x 1 x 16 x 16 uint8"),
        (np.zeros((5, 1, 16, 16), np.uint8), np.full(5, 10), "labels outside 0..9"),
        (np.zeros((5, 1, 16, 16), np.uint8), np.zeros(4, np.int64), "holds 5 images and 4 labels"),
        (np.zeros((5, 1, 16, 16), np.float32), np.zeros(5, np.int64), "(float32), not N x 1 x 16 x 16 uint8"),
    ],
)
def test_a_tampered_test_set_is_one_line(tiny_run, tmp_path, images, labels, said):
    from conftest import copy_run

    run = copy_run(tiny_run, tmp_path)
    np.savez_compressed(run / "test_set.npz", images=images, labels=labels)
    fails_cleanly(runner.invoke(app, ["benchmark", str(run), "--quick"]), said)


def test_swapped_model_files_are_named_and_rehash_records_a_deliberate_change(tiny_run, tmp_path):
    from conftest import copy_run

    run = copy_run(tiny_run, tmp_path)
    (run / "student.onnx").rename(run / "swap.onnx")
    (run / "control.onnx").rename(run / "student.onnx")
    (run / "swap.onnx").rename(run / "control.onnx")
    from PIL import Image

    Image.new("L", (8, 8), 200).save(tmp_path / "digit.png")
    for command in (["benchmark", str(run), "--quick"], ["predict", str(tmp_path / "digit.png"), "--run", str(run)]):
        fails_cleanly(runner.invoke(app, command), "student.onnx (student) is not the file this run wrote")
    result = runner.invoke(app, ["benchmark", str(run), "--quick", "--rehash"])
    assert result.exit_code == 0, result.output
    assert "student, control had changed" in " ".join(result.output.split())
    assert read_manifest(run).models["student"].details["sha256"] != read_manifest(tiny_run).models["student"].details["sha256"]


def test_markup_in_a_run_path_is_printed_as_it_is(tiny_run, tmp_path):
    from conftest import copy_run

    run = copy_run(tiny_run, tmp_path / "x[", "]y")  # the folder tmp/x[/]y
    result = runner.invoke(app, ["benchmark", str(run), "--quick", "--no-gpu"])
    assert result.exit_code == 0, result.output
    assert f"Saved benchmark.json, benchmark.md and benchmark.png in {run}" in " ".join(result.output.split())


def test_benchmark_leaves_no_onnxruntime_id_in_home_and_runs_with_an_unwritable_home(tiny_run, tmp_path):
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "ORT_DISABLE_TELEMETRY", "ORT_TELEMETRY_DISABLED")}
    command = [sys.executable, "-m", "kdcompress", "benchmark", str(tiny_run), "--quick", "--no-gpu", "--json"]
    subprocess.run(command, env={**env, "HOME": str(home)}, check=True, capture_output=True)
    assert not (home / ".cache" / "Microsoft").exists()  # onnxruntime's device id and event queue
    (tmp_path / "file").write_text("")
    done = subprocess.run(command, env={**env, "HOME": str(tmp_path / "file" / "home")}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["models"]
