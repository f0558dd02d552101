"""kdc benchmark on tiny exported models: fields and units, golden MACs, agreement with the manifest."""

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import fails_cleanly, runner
from kdcompress.cli import app
from kdcompress.core import roles
from kdcompress.core.errors import KdcError
from kdcompress.core.files import write_json_atomic
from kdcompress.deploy.benchmark import benchmark_run, classification_metrics, ratios_vs_teacher
from kdcompress.deploy.graph import onnx_size
from kdcompress.deploy.manifest import read_manifest
from kdcompress.deploy.preprocessing import Preprocessing
from kdcompress.deploy.timing import ISA_FLAGS
from kdcompress.report.benchmark_render import benchmark_context, benchmark_tables
from kdcompress.train.export import export_onnx


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
    assert list(result.models) == ["teacher", "baseline", "student", "control"]
    # The verdicts are recomputed from the ONNX files' own predictions: they match compress's.
    recorded = {k: v["delta"] for k, v in manifest["comparisons"].items()}
    assert {k: v["delta"] for k, v in result.comparisons.items()} == pytest.approx(recorded, abs=0.3)
    assert result.attribution and "distilled vs label smoothing" in "\n".join(benchmark_context(result))
    assert result.units["latency"].startswith("milliseconds") and result.settings["threads"] == 1
    assert result.machine["cores"] >= 1 and isinstance(result.machine["busy"], bool)
    assert result.machine["runtimes"]["onnxruntime"] and "avx512_bf16" in ISA_FLAGS and "amx_bf16" in ISA_FLAGS
    for role, model in result.models.items():
        point = model.reference
        assert point.target == "onnxruntime-cpu" and point.precision == "native" and point.agreement == 1.0
        assert model.agrees_with_manifest and model.recorded_correct == manifest["models"][role]["test_correct"]
        assert 0 <= point.accuracy <= 1 and len(point.metrics["confusion_matrix"]) == 10
        assert 0 < point.batch1["p50_ms"] <= point.batch1["p90_ms"] <= point.batch1["p99_ms"] and point.batch1["runs"] >= 20
        assert point.images_per_s > 0 and model.macs > 0 and model.parameters > 0
        assert model.file_mb == pytest.approx((tiny_run / model.file).stat().st_size / 1e6)
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert "no CUDAExecutionProvider" in result.targets["onnxruntime-cuda"]
        assert not any(p.target == "onnxruntime-cuda" for p in result.points())
        assert any("onnxruntime-cuda not used: onnxruntime has no CUDAExecutionProvider" in line for line in benchmark_context(result))
    student = ratios_vs_teacher(result, result.models["student"].reference)
    assert student["smaller_x"] == pytest.approx(result.models["teacher"].file_mb / result.models["student"].file_mb)


def test_benchmark_json_carries_its_format_and_reads_back_into_its_type(tiny_run, tmp_path):
    from kdcompress.deploy.results import FORMAT, BenchmarkResult

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    runner.invoke(app, ["benchmark", str(run), "--quick", "--no-gpu", "--max-ms", "50"], catch_exceptions=False)
    saved = json.loads((run / "benchmark.json").read_text())
    assert saved["format"] == FORMAT == "kdcompress-benchmark/3"
    again = BenchmarkResult.from_dict(saved)
    assert again.to_dict() == saved and isinstance(again.models["student"].points[0].batch1["p50_ms"], float)
    assert again.recommendation["target"] in again.targets and again.command.endswith("--max-ms 50")
    with pytest.raises(KdcError, match="not a kdcompress-benchmark/3 benchmark result"):
        BenchmarkResult.from_dict({**saved, "format": "kdcompress-benchmark/1"})
    # format 3 adds the per-layer profile of the recommended model; a format 2 file (none) is still read
    chosen = saved["recommendation"]["model"]
    assert list(saved["profiles"]) == [chosen] and saved["profiles"][chosen][0]["by_precision"]
    assert [p["target"] for p in saved["profiles"][chosen]] == ["onnxruntime-cpu", "openvino-cpu"]  # both runtimes
    older = {k: v for k, v in saved.items() if k != "profiles"} | {"format": "kdcompress-benchmark/2"}
    assert BenchmarkResult.from_dict(older).profiles == {}
    said = (run / "benchmark.md").read_text()
    assert f"## Where {roles.label(chosen)}'s time goes (onnxruntime-cpu profiler" in said


def test_benchmark_flags_a_manifest_that_disagrees_with_the_onnx_file(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    manifest = read_manifest(run).to_dict()
    manifest["models"]["baseline"]["test_correct"] += 5
    write_json_atomic(run / "manifest.json", manifest)
    result = benchmark_run(run, quick=True, gpu=False)
    assert not result.models["baseline"].agrees_with_manifest
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
    assert human.exit_code == 0 and "x faster" in human.stdout and "onnxruntime-cpu" in human.stdout


@pytest.mark.parametrize("make, message", [(lambda p: p.mkdir(), "no finished run"), (lambda p: None, "folder not found")])
def test_cli_benchmark_without_a_run_is_a_clear_error(tmp_path, make, message):
    target = tmp_path / "artifacts"
    make(target)
    result = runner.invoke(app, ["benchmark", str(target)])
    fails_cleanly(result, message)


def test_benchmark_of_a_project_root_reads_its_artifacts_folder(tiny_run, tmp_path):
    from kdcompress.deploy.run_lookup import resolve_runs

    project = tmp_path / "project"
    (project / "artifacts").mkdir(parents=True)
    shutil.copytree(tiny_run, project / "artifacts" / "run")
    assert resolve_runs(project) == [project / "artifacts" / "run"]  # `kdc benchmark .` from the project's root
    (project / "artifacts" / "run" / "manifest.json").unlink()
    with pytest.raises(KdcError, match="no finished run in"):
        resolve_runs(project)


def test_a_busy_machine_is_flagged_not_silently_reported(tiny_run, monkeypatch):
    monkeypatch.setattr("kdcompress.deploy.timing.cpu_busy_fraction", lambda interval=0.5: 0.9)
    result = benchmark_run(tiny_run, quick=True, gpu=False)
    assert result.machine["busy"] and result.machine["cpu_busy_fraction"] == 0.9
    assert any(line.startswith("WARNING: the machine was busy (other processes used 90%") for line in benchmark_context(result))
    monkeypatch.setattr("kdcompress.deploy.timing.cpu_busy_fraction", lambda interval=0.5: 0.05)
    assert not benchmark_run(tiny_run, quick=True, gpu=False).machine["busy"]


def test_an_fp16_file_lists_each_node_after_its_inputs_and_counts_the_fp32_macs(tiny_run, tmp_path):
    import onnx

    from kdcompress.deploy.graph import count_macs
    from kdcompress.deploy.quantize import to_fp16

    fp32 = onnx.load(str(tiny_run / "student.onnx"))
    half = onnx.load(str(to_fp16(tiny_run / "student.onnx", tmp_path / "student-fp16.onnx")))
    ready = {v.name for v in half.graph.input} | {t.name for t in half.graph.initializer} | {""}
    for node in half.graph.node:
        assert all(name in ready for name in node.input), node.name
        ready.update(node.output)
    assert count_macs(half) == count_macs(fp32) > 0


# kdc benchmark's failures: one line each, nothing left half-written.


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


# Targets: OpenVINO beside onnxruntime, every point judged by its own predictions.


def test_a_target_that_is_not_installed_is_one_line_and_the_rest_goes_on(tiny_run, tmp_path, monkeypatch):
    import sys

    from conftest import copy_run

    run = copy_run(tiny_run, tmp_path)
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now fails, as where it is not installed
    result = runner.invoke(app, ["benchmark", str(run), "--quick", "--no-gpu"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "target openvino-cpu not used: OpenVINO is not installed (pip install 'kdcompress[openvino]')" in said
    saved = json.loads((run / "benchmark.json").read_text())
    assert {p["target"] for m in saved["models"].values() for p in m["points"]} == {"onnxruntime-cpu"}
    fails_cleanly(runner.invoke(app, ["benchmark", str(run), "--quick", "--target", "openvino-cpu"]),
                  "--target openvino-cpu: OpenVINO is not installed (pip install 'kdcompress[openvino]')")  # fmt: skip
    fails_cleanly(runner.invoke(app, ["benchmark", str(run), "--target", "tensorrt"]), "unknown target 'tensorrt'")


def test_every_points_accuracy_comes_from_its_own_predictions(tiny_run, monkeypatch):
    # OpenVINO's run is made to answer class 0 for every image: its points must score exactly the class-0 share,
    # and disagree with FP32 accordingly; an accuracy copied from the onnxruntime point would not.
    from kdcompress.deploy import targets

    real = targets.OpenvinoCpu.load

    def always_zero(self, path, threads=None, precision="f32"):
        loaded = real(self, path, threads, precision)
        loaded.run = lambda x: np.tile(np.eye(1, 10, 0, dtype=np.float32), (len(x), 1))
        return loaded

    monkeypatch.setattr(targets.OpenvinoCpu, "load", always_zero)
    result = benchmark_run(tiny_run, quick=True, gpu=False, targets=["openvino-cpu"])
    labels = np.load(tiny_run / "test_set.npz")["labels"]
    teacher = result.models["teacher"]
    ov = [p for p in teacher.points if p.target == "openvino-cpu"]
    assert ov and all(p.accuracy == pytest.approx((labels == 0).mean()) for p in ov)
    assert teacher.reference.accuracy != ov[0].accuracy
    predicted_zero = (np.asarray(teacher.reference.metrics["confusion_matrix"])[:, 0]).sum() / len(labels)
    assert all(p.agreement == pytest.approx(predicted_zero) for p in ov)


def test_openvino_points_on_this_cpu_read_their_precision_back(tiny_run):
    from kdcompress.deploy.targets import BF16_FLAGS

    result = benchmark_run(tiny_run, quick=True, gpu=False)
    teacher = result.models["teacher"]
    precisions = {p.precision for p in teacher.points if p.target == "openvino-cpu"}
    bf16 = any(flag in result.machine["isa"] for flag in BF16_FLAGS)
    assert precisions == ({"f32", "bf16"} if bf16 else {"f32"})
    # test_resnet's avg_down pooling at 16 px, which OpenVINO refused, is exported as the global average it computes
    assert not [n for n in result.notes if "cannot" in n]
    assert all(any(p.target == "openvino-cpu" for p in model.points) for model in result.models.values())
    f32 = next(p for p in teacher.points if p.precision == "f32")
    assert f32.agreement >= 0.99 and abs(f32.accuracy - teacher.reference.accuracy) <= 0.01


@pytest.mark.parametrize("width", [80, 120])
def test_tables_fit_80_and_120_columns_without_cutting_a_number(tiny_run, width):
    # At 80 columns numbers were cut to "7…" and columns went blank.
    import io

    from rich.console import Console

    from kdcompress.report.compress_render import summary_table

    result = benchmark_run(tiny_run, quick=True, gpu=False)
    for whole in [*benchmark_tables(result), summary_table(read_manifest(tiny_run))]:
        table = whole.fitted(width)
        out = io.StringIO()
        Console(file=out, width=width, force_terminal=False).print(table)
        text = out.getvalue()
        assert "…" not in text and max(len(line) for line in text.splitlines()) <= width
        shown = table.columns_for(width)
        for row in table.rows:
            for i in shown[1:]:
                assert str(row[i]) in text, (table.headers[i], row[i])
    wide = benchmark_tables(result, wide=True)[1]
    assert wide.columns_for(80) == list(range(len(wide.headers)))  # --wide: every column


# Writes, locks and runtimes that fail: nothing written through a link or sent, no result lost.


def _copy(run, tmp_path, name="run"):
    from conftest import copy_run

    return copy_run(run, tmp_path, name)


def test_result_files_replace_a_link_instead_of_writing_through_it(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    outside = tmp_path / "bashrc"
    outside.write_text("keep me\n")
    for name in ("benchmark.md", "benchmark.png", "benchmark.json"):
        (run / name).symlink_to(outside)
    result = runner.invoke(app, ["benchmark", str(run), "--quick", "--no-gpu"])
    assert result.exit_code == 0, result.output
    assert outside.read_text() == "keep me\n"
    for name in ("benchmark.md", "benchmark.png", "benchmark.json"):
        assert not (run / name).is_symlink() and (run / name).stat().st_size > 0
    assert not [p for p in run.iterdir() if p.name.endswith((".tmp", ".tmp.md", ".tmp.png", ".tmp.json"))]


@pytest.mark.parametrize("field", ["run", "class"])
def test_a_run_or_class_name_with_a_line_break_is_refused(tiny_run, tmp_path, field):
    from conftest import edit_manifest

    run = _copy(tiny_run, tmp_path)
    if field == "run":
        edit_manifest(run, lambda m: m.update(run="x\ntouch PWNED\n"))
    else:
        edit_manifest(run, lambda m: m["dataset"]["classes"].__setitem__(0, "zero\rtouch PWNED"))
    fails_cleanly(runner.invoke(app, ["benchmark", str(run), "--quick", "--no-gpu"]), "holds a control character")
    assert not (run / "benchmark.md").exists()


def test_the_three_result_files_are_saved_as_one_or_not_at_all(tiny_run, tmp_path, monkeypatch):
    import errno

    from kdcompress.report import benchmark_render as render

    run = _copy(tiny_run, tmp_path)
    first = runner.invoke(app, ["benchmark", str(run), "--quick", "--no-gpu"])
    assert first.exit_code == 0, first.output
    before = {name: (run / name).read_bytes() for name in ("benchmark.json", "benchmark.md", "benchmark.png")}

    def full_disk(result, path):
        path.write_bytes(b"half a png")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(render, "benchmark_plot", full_disk)
    result = runner.invoke(app, ["benchmark", str(run), "--quick", "--no-gpu", "--max-ms", "1000"])
    fails_cleanly(result, "any from an earlier benchmark are as they were")
    assert {name: (run / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


def test_one_writer_at_a_time_in_a_run_folder(tiny_run, tmp_path):
    import os

    from kdcompress.core.files import folder_lock

    run = _copy(tiny_run, tmp_path)
    before = (run / "manifest.json").read_bytes()
    with folder_lock(run, "quantize"):  # this process is a quantize adding INT8 entries to the manifest
        said = f"another kdc quantize (process {os.getpid()}) is working in"
        fails_cleanly(runner.invoke(app, ["benchmark", str(run), "--quick", "--no-gpu", "--rehash"]), said)
        fails_cleanly(runner.invoke(app, ["benchmark", str(run), "--quick", "--no-gpu"]), said)
    with folder_lock(run, "benchmark"):  # and a second benchmark waits for the first
        fails_cleanly(runner.invoke(app, ["quantize", str(run)]), "another kdc benchmark")
    assert (run / "manifest.json").read_bytes() == before and not (run / "benchmark.json").exists()


def test_rehash_records_only_files_that_load_and_all_skips_a_run_it_cannot_rehash(tiny_run, tmp_path):
    root = tmp_path / "artifacts"
    good, bad = _copy(tiny_run, root, "a-good"), _copy(tiny_run, root, "b-bad")
    before = (bad / "manifest.json").read_bytes()
    (bad / "student.onnx").write_bytes(b"\x08\x07 not a protobuf")
    fails_cleanly(runner.invoke(app, ["benchmark", str(bad), "--quick", "--no-gpu", "--rehash"]), "student.onnx (student) is not a readable ONNX model")
    assert (bad / "manifest.json").read_bytes() == before  # the original's hash stays: restoring the file works
    result = runner.invoke(app, ["benchmark", str(root), "--all", "--quick", "--no-gpu", "--rehash"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    said = " ".join(result.output.split())
    assert "warning: skipped" in said and "not a readable ONNX model" in said  # (its path is folded at 80 columns)
    assert "1 of 2 runs could not be benchmarked (b-bad;" in said
    assert (good / "benchmark.json").is_file()


def test_the_bytes_checked_are_the_bytes_run(tiny_run, tmp_path, monkeypatch):
    # A file swapped between the hash check and the load is never what runs: the runtimes get the checked bytes.
    from kdcompress.deploy import manifest as manifest_module

    run = _copy(tiny_run, tmp_path)
    real_read = manifest_module._read_model

    def read_then_swap(path, role):
        data = real_read(path, role)
        if role == "student":
            path.write_bytes((run / "baseline.onnx").read_bytes())  # swapped right after it was read and hashed
        return data

    monkeypatch.setattr(manifest_module, "_read_model", read_then_swap)
    result = benchmark_run(run, quick=True, gpu=False, targets=["onnxruntime-cpu"])
    assert result.models["student"].reference.correct == read_manifest(tiny_run).models["student"].test_correct


def test_a_run_under_a_non_ascii_path_loads_in_an_ascii_locale(tiny_run, tmp_path):
    import os
    import subprocess
    import sys

    run = _copy(tiny_run, tmp_path / "données")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONIOENCODING": "ascii"}
    command = [sys.executable, "-m", "kdcompress", "benchmark", str(run), "--quick", "--no-gpu", "--json"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, encoding="utf-8")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["models"]["student"]["points"]


def test_openvino_sends_nothing_and_writes_nothing_under_home(tiny_run, tmp_path):
    # With OpenVINO installed: importing it must not write ~/intel nor call out; and a benchmark that is not asked to
    # use it does not even import it. A sitecustomize shim records every urlopen and what was imported.
    import os
    import subprocess
    import sys

    pytest.importorskip("openvino")
    home, shim = tmp_path / "home", tmp_path / "shim"
    home.mkdir()
    shim.mkdir()
    record = tmp_path / "record.txt"
    (shim / "sitecustomize.py").write_text(
        "import atexit, sys, urllib.request\n"
        f"RECORD = {str(record)!r}\n"
        "def urlopen(*args, **kwargs):\n"
        "    open(RECORD, 'a').write('urlopen %r\\n' % (args[:1],))\n"
        "    raise OSError('no network in this test')\n"
        "urllib.request.urlopen = urlopen\n"
        "atexit.register(lambda: open(RECORD, 'a').write('openvino imported\\n') if 'openvino' in sys.modules else None)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "ORT_DISABLE_TELEMETRY", "ORT_TELEMETRY_DISABLED")}
    env.update(HOME=str(home), PYTHONPATH=os.pathsep.join([str(shim), env.get("PYTHONPATH", "")]), ORT_DISABLE_TELEMETRY="")
    command = [sys.executable, "-m", "kdcompress", "benchmark", str(_copy(tiny_run, tmp_path)), "--quick", "--no-gpu", "--json"]
    done = subprocess.run([*command, "--target", "onnxruntime-cpu"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not record.exists()  # no call out, and openvino never imported
    done = subprocess.run(command, env=env, capture_output=True, text=True)  # every target: openvino runs
    assert done.returncode == 0, done.stderr
    assert any(p["target"] == "openvino-cpu" for p in json.loads(done.stdout)["models"]["student"]["points"])
    assert record.read_text() == "openvino imported\n"  # imported, and still nothing sent
    assert not (home / "intel").exists() and not (home / ".cache" / "Microsoft").exists()
    assert list(home.iterdir()) == []  # matplotlib's font cache too goes to a temporary folder of kdc's


def test_an_empty_telemetry_variable_counts_as_unset():
    import os
    import subprocess
    import sys

    code = "import kdcompress, os; print(os.environ['ORT_DISABLE_TELEMETRY'], os.environ['ORT_TELEMETRY_DISABLED'])"
    for value, expected in (("", "1 1"), ("0", "0 1")):
        env = {**os.environ, "ORT_DISABLE_TELEMETRY": value}
        env.pop("ORT_TELEMETRY_DISABLED", None)
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert done.stdout.split() == expected.split()


def test_a_broken_openvino_is_one_note_and_the_rest_goes_on(tiny_run, tmp_path, monkeypatch):
    import sys
    import types

    broken = types.ModuleType("openvino")

    def core():
        raise RuntimeError("numpy.core.multiarray failed to import")

    broken.Core = core
    monkeypatch.setitem(sys.modules, "openvino", broken)
    run = _copy(tiny_run, tmp_path)
    result = runner.invoke(app, ["benchmark", str(run), "--quick", "--no-gpu"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "target openvino-cpu not used: OpenVINO is installed but cannot start (RuntimeError: numpy.core.multiarray" in said
    saved = json.loads((run / "benchmark.json").read_text())
    assert "openvino" not in saved["machine"]["runtimes"]  # no version beside "cannot start"


def test_a_target_that_fails_on_the_timing_batch_is_dropped_with_a_note(tiny_run, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    from kdcompress.deploy import targets

    real_load = targets.OpenvinoCpu.load

    def load(self, path, threads=None, precision="f32"):
        loaded = real_load(self, path, threads, precision)
        caller = loaded.caller

        def refuse_large(sample):
            if sample.shape[0] > 1:
                raise RuntimeError("std::bad_alloc")
            return caller(sample)

        loaded.caller = refuse_large
        return loaded

    monkeypatch.setattr(targets.OpenvinoCpu, "load", load)
    run = _copy(tiny_run, tmp_path)
    result = runner.invoke(app, ["benchmark", str(run), "--quick", "--no-gpu", "--batch", "8"])
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "benchmark.json").read_text())
    assert {p["target"] for m in saved["models"].values() for p in m["points"]} == {"onnxruntime-cpu"}
    assert any("openvino-cpu cannot time student.onnx" in n and "std::bad_alloc" in n for n in saved["notes"])


def test_the_newest_run_is_the_one_made_last_not_the_one_touched_last(tiny_run, tmp_path):
    from conftest import edit_manifest
    from kdcompress.deploy.run_lookup import resolve_runs

    root = tmp_path / "artifacts"
    old, new = _copy(tiny_run, root, "old"), _copy(tiny_run, root, "new")
    edit_manifest(old, lambda m: m.update(created="2026-01-01T00:00:00+00:00"))
    edit_manifest(new, lambda m: m.update(created="2026-06-01T00:00:00+00:00"))
    assert runner.invoke(app, ["benchmark", str(old), "--quick", "--no-gpu", "--rehash"]).exit_code == 0  # rewrites old's manifest
    assert resolve_runs(root) == [new]


def test_every_model_file_of_a_default_shaped_run_loads_on_every_installed_target(tmp_path):
    # The default digits run: ResNet10-T at 16 px on one channel, whose avg_down pooling meets a 1 x 1 map with a
    # 2 x 2 window; OpenVINO refused that file ("it cannot convert AveragePool-20, Conv-20").
    from kdcompress.deploy.benchmark import choose_targets
    from kdcompress.deploy.targets import TARGETS
    from kdcompress.train.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet10t", 10, 1).eval()
    prep = Preprocessing(16, 1, (0.5,), (0.25,))
    images = np.random.default_rng(0).integers(0, 256, (16, 1, 16, 16), dtype=np.uint8)
    path = tmp_path / "student.onnx"
    export_onnx(model, path, prep, images)
    from kdcompress.deploy.preprocessing import normalize

    x = normalize(images, prep)  # noqa: E501
    usable = [name for name, why in choose_targets(None, gpu=False).items() if why is None]
    logits = {name: TARGETS[name].load(path, 1, TARGETS[name].precisions([])[0]).run(x) for name in usable}
    for name, out in logits.items():
        np.testing.assert_allclose(out, logits["onnxruntime-cpu"], atol=1e-4, err_msg=name)
    import importlib.util

    assert "openvino-cpu" in logits or importlib.util.find_spec("openvino") is None


def test_sigterm_during_a_benchmark_keeps_the_earlier_results_whole(tiny_run, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    run = _copy(tiny_run, tmp_path)
    assert runner.invoke(app, ["benchmark", str(run), "--quick", "--no-gpu"]).exit_code == 0
    before = {name: (run / name).read_bytes() for name in ("benchmark.json", "benchmark.md", "benchmark.png")}
    process = subprocess.Popen([sys.executable, "-m", "kdcompress", "benchmark", str(run), "--no-gpu"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (run / ".kdc-run.lock").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # inside the measurements (the full timing takes several seconds a point)
    assert process.poll() is None, "the benchmark ended before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143 and "Traceback" not in err, err
    assert {name: (run / name).read_bytes() for name in before} == before
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []


def test_a_read_only_run_is_benchmarked_and_said_not_saved(tiny_run, tmp_path, monkeypatch):
    # As root a read-only folder is writable; the lock and the files fail here as they do there for a user (EROFS).
    import errno

    from kdcompress.core import files

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    run = _copy(tiny_run, tmp_path)
    result = runner.invoke(app, ["benchmark", str(run), "--quick", "--no-gpu"])
    fails_cleanly(result, "could not write the benchmark files")
    assert "p50 ms" in result.stdout and "it is benchmarked without its lock" in " ".join(result.output.split())
    assert not (run / "benchmark.json").exists()


def test_each_cpu_point_gets_its_load_time_first_inference_and_memory_from_a_process_of_its_own(tiny_run, tmp_path):
    # Measured in a child per point, even under --quick when --max-ram asks; a swapped file is
    # refused by the child as by every reader of a run.
    from kdcompress.deploy.footprint import footprint
    from kdcompress.deploy.frontier import Budget

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result = benchmark_run(run, quick=True, gpu=False, targets=["onnxruntime-cpu"], budget=Budget(max_ram=10_000))
    for point in result.points():
        assert point.footprint["load_ms"] > 0 and point.footprint["first_ms"] > 0 and point.footprint["peak_mb"] >= 0
    assert result.recommendation["meets"] and result.recommendation["budget"]["max_ram_mb"] == 10_000
    assert all(p.footprint is None for p in benchmark_run(run, quick=True, gpu=False, targets=["onnxruntime-cpu"]).points())
    with pytest.raises(RuntimeError, match="is not the file the run wrote"):
        footprint(run / "student.onnx", "0" * 64, "onnxruntime-cpu", "native", 1, [1, 1, 16, 16])
