"""Failures (a full disk, a damaged or truncated file, Ctrl-C, a bad setting) are one line, exit code 1, no traceback,
and nothing lost or left behind."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, fails_cleanly, runner
from kdcompress.cli import app
from kdcompress.core.files import remove_stale


def _copy(run, tmp_path, name="run"):
    target = tmp_path / name
    shutil.copytree(run, target)
    return target


# 1. --out never deletes what is not a run -------------------------------------------------------


def test_out_refuses_a_folder_that_is_not_a_run_and_keeps_it(tmp_path):
    folder = tmp_path / "mine"
    (folder / "photos").mkdir(parents=True)
    (folder / "precious.txt").write_text("keep me")
    fails_cleanly(runner.invoke(app, ["compress", *TINY, "--out", str(folder)]), "is a folder that is not a kdc run")
    assert (folder / "precious.txt").read_text() == "keep me" and (folder / "photos").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # nothing trained, nothing staged


def test_out_refuses_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "precious.txt").write_text("keep me")
    fails_cleanly(runner.invoke(app, ["compress", *TINY, "--out", "."]), "is the current folder")
    assert [p.name for p in tmp_path.iterdir()] == ["precious.txt"]


@pytest.mark.e2e
def test_out_takes_an_empty_folder_and_the_teacher_cache_is_where_the_readme_says(tmp_path):
    out = tmp_path / "elsewhere" / "empty"
    out.mkdir(parents=True)
    artifacts = tmp_path / "artifacts"
    result = runner.invoke(app, ["compress", *TINY, "--epochs", "1", "--out", str(out), "--control", "none", "--artifacts", str(artifacts)])
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").is_file()
    # --out outside --artifacts: the teacher cache sits beside it, in .teachers/, as the README's privacy note says,
    # and nothing is written under --artifacts.
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == [".teachers", "empty"]
    assert not artifacts.exists()


# 2. refused before training, not after it ------------------------------------------------------


def test_negative_seed_is_refused_before_training(tmp_path):
    fails_cleanly(runner.invoke(app, ["compress", *TINY, "--seed", "-5", "--artifacts", str(tmp_path)]), "--seed must be between 0")
    assert not any(tmp_path.iterdir())


def test_an_image_size_that_cannot_fit_in_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr("kdcompress.data.memory.available_memory", lambda: 2 * 2**30)
    result = runner.invoke(app, ["compress", *TINY[:4], "--image-size", "2048", "--artifacts", str(tmp_path)])
    fails_cleanly(result, "1797 images at 2048x2048 px, 1 channel(s), need about 17.5 GiB")
    assert "2.0 GiB is available: use --image-size" in " ".join(result.output.split())
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.e2e
def test_a_four_step_run_trains_instead_of_dividing_by_zero(tmp_path):
    import torch

    from kdcompress.train.loop import warmup_fraction

    for steps in (1, 2, 3, 4, 5, 40):  # OneCycleLR must step through every length without raising
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-3, total_steps=steps, pct_start=warmup_fraction(steps))
        for _ in range(steps):
            optimizer.step()
            schedule.step()
    assert warmup_fraction(40) == 0.25  # every other length keeps the schedule it had
    # digits: 1293 training images // 300 = 4 steps in 1 epoch, once a ZeroDivisionError
    result = runner.invoke(app, ["compress", *TINY, "--batch-size", "300", "--epochs", "1", "--artifacts", str(tmp_path), "--control", "none"])
    assert result.exit_code == 0, result.output


# 3. predict: one bad image never aborts the batch; a model that does not fit the run is refused -----


def test_a_decompression_bomb_is_one_error_line_and_the_others_are_classified(tiny_run, tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("L", (8, 8), 10).save(folder / "a.png")
    Image.new("L", (200, 200), 10).save(folder / "bomb.png")
    Image.new("L", (8, 8), 200).save(folder / "c.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 200 x 200 is over twice the limit: Pillow refuses it
    result = runner.invoke(app, ["predict", str(folder), "--run", str(tiny_run), "--json"])
    assert result.exit_code == 1
    output = json.loads(result.stdout)
    assert [("error" in r) for r in output["results"]] == [False, True, False]
    assert "too large to decode safely" in output["results"][1]["error"]


def test_an_image_between_pils_limits_is_read_without_its_raw_warning(tmp_path, monkeypatch):
    import warnings

    from kdcompress.deploy.preprocessing import load_image

    Image.new("L", (40, 40), 10).save(tmp_path / "large.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1,600 pixels: over the warning limit, under twice it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_image(tmp_path / "large.png", 8, 1).shape == (1, 8, 8)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_a_model_whose_input_does_not_fit_the_run_is_refused(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["preprocessing"]["image_size"] = 32  # another run's preprocessing: the 16 px model cannot take it
    (run / "manifest.json").write_text(json.dumps(manifest))
    Image.new("L", (8, 8), 10).save(tmp_path / "a.png")
    result = runner.invoke(app, ["predict", str(tmp_path / "a.png"), "--run", str(run), "--model", str(tiny_run / "student.onnx")])
    fails_cleanly(result, "this run's images are 1 x 32 x 32")


# 4. full disk, read-only folder -----------------------------------------------------------------


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "somewhere")


def test_benchmark_prints_its_results_when_they_cannot_be_saved(tiny_run, tmp_path, monkeypatch):
    run = _copy(tiny_run, tmp_path)
    (run / "benchmark.json").unlink(missing_ok=True)  # other tests may have benchmarked the shared run
    monkeypatch.setattr("kdcompress.core.files.write_json_to", _enospc)
    result = runner.invoke(app, ["benchmark", str(run), "--quick", "--no-gpu"])
    fails_cleanly(result, "could not write the benchmark files")
    assert "x faster" in result.stdout and "p50 ms" in result.stdout  # the timings are shown, not lost
    assert not (run / "benchmark.json").exists()


def test_quantize_on_a_full_disk_is_one_line_and_leaves_the_run_as_it_was(tiny_run, tmp_path, monkeypatch):
    run = _copy(tiny_run, tmp_path)
    before = (run / "manifest.json").read_bytes()
    monkeypatch.setattr("kdcompress.deploy.quantize.to_fp16", _enospc)  # the disk fills while the files are being made
    fails_cleanly(runner.invoke(app, ["quantize", str(run)]), "No space left on device")
    assert (run / "manifest.json").read_bytes() == before
    assert not [p.name for p in run.iterdir() if p.name.startswith(".") or "int8" in p.name]


def test_compress_on_a_full_disk_is_one_line_and_leaves_nothing_behind(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch, "save", _enospc)  # the teacher cache and the checkpoints
    result = runner.invoke(app, ["compress", *TINY, "--epochs", "1", "--artifacts", str(tmp_path), "--control", "none"])
    fails_cleanly(result, "No space left on device")
    assert "could not cache the teacher" in result.output  # the cache costs only the reuse
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith((".partial-", ".replaced-")) or p.name.endswith(".tmp")]
    assert leftovers == [] and not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


# 5. corrupt artifacts ---------------------------------------------------------------------------


def test_a_truncated_onnx_file_under_quantize_is_one_line(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    data = (run / "student.onnx").read_bytes()
    (run / "student.onnx").write_bytes(data[: len(data) // 3])
    fails_cleanly(runner.invoke(app, ["quantize", str(run)]), "student.onnx (student) is not the file this run wrote")
    from kdcompress.core.errors import KdcError
    from kdcompress.deploy.manifest import rehash

    with pytest.raises(KdcError, match="is not a readable ONNX model"):  # a damaged file is never recorded as intended
        rehash(run)
    fails_cleanly(runner.invoke(app, ["quantize", str(run)]), "student.onnx (student) is not the file this run wrote")


def test_a_truncated_test_set_is_one_line(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    data = (run / "test_set.npz").read_bytes()
    (run / "test_set.npz").write_bytes(data[: len(data) // 2])
    fails_cleanly(runner.invoke(app, ["benchmark", str(run), "--quick", "--no-gpu"]), "test_set.npz is unreadable")


@pytest.mark.parametrize("command", [["benchmark", "--quick", "--no-gpu"], ["quantize"], ["predict", "IMAGE", "--run"]])
def test_a_manifest_with_missing_fields_is_one_line_in_every_command(tiny_run, tmp_path, command):
    run = _copy(tiny_run, tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["models"]["student"]["onnx"], manifest["preprocessing"]["mean"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    Image.new("L", (8, 8), 10).save(tmp_path / "a.png")
    args = [str(tmp_path / "a.png") if a == "IMAGE" else a for a in command]
    fails_cleanly(runner.invoke(app, [*args, str(run)]), "the run folder is damaged")


def test_a_manifest_of_format_1_is_still_read(tiny_run, tmp_path):
    from kdcompress.deploy.manifest import read_manifest

    run = _copy(tiny_run, tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["format"] = "kdcompress-run/1"
    del manifest["training"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    old = read_manifest(run)
    assert old.format == "kdcompress-run/1" and old.training == {} and old.models["student"].onnx == "student.onnx"
    manifest["format"] = "kdcompress-run/9"
    (run / "manifest.json").write_text(json.dumps(manifest))
    fails_cleanly(runner.invoke(app, ["benchmark", str(run), "--quick"]), "is not a kdcompress run manifest")


def test_a_corrupt_cached_teacher_names_retrain_teacher(tmp_path, tiny_run):
    # The session's tiny run cached the teacher these settings train (2 epochs): a copy of its cache is found.
    shutil.copytree(tiny_run.parent / ".teachers", tmp_path / ".teachers")
    short = ["compress", *TINY, "--epochs", "1", "--teacher-epochs", "2", "--control", "none", "--artifacts", str(tmp_path)]
    (record,) = (tmp_path / ".teachers").glob("*/record.json")
    record.write_text('{"objective": "loss = CE(tea')
    fails_cleanly(runner.invoke(app, short), "pass --retrain-teacher")
    again = runner.invoke(app, [*short, "--retrain-teacher"])
    assert again.exit_code == 0, again.output


# 6, 7. sweeps: another seed is refused, damaged run files are one line ------------------------------


def test_a_sweep_resumed_with_another_seed_is_refused_and_a_damaged_run_file_is_one_line(tiny_run, tmp_path):
    weights = str(tiny_run / "checkpoints" / "teacher.pt")
    sweep = ["sweep", *TINY, "--epochs", "1", "--T", "4", "--alpha", "0.5", "--beta", "0", "--seeds", "1"]
    out = ["--teacher-weights", weights, "--out", str(tmp_path / "sweep")]
    assert runner.invoke(app, [*sweep, *out]).exit_code == 0
    fails_cleanly(runner.invoke(app, [*sweep, *out, "--seed", "3"]), "seed 0 -> 3")
    run_file = tmp_path / "sweep" / "runs" / "seed0-baseline.json"
    whole = json.loads(run_file.read_text())
    run_file.write_text(run_file.read_text()[:50])
    fails_cleanly(runner.invoke(app, [*sweep, *out]), "delete it and run the same command again")
    # A run file that reads as JSON but is damaged is trained again, said in one warning each.
    distilled = tmp_path / "sweep" / "runs" / "seed0-T4-alpha0.5-beta0.json"
    run_file.write_text(json.dumps({**whole, "predictions": whole["predictions"][:5]}))
    distilled.write_text(json.dumps({**json.loads(distilled.read_text()), "best_val_accuracy": "high"}))
    again = runner.invoke(app, [*sweep, *out])
    assert again.exit_code == 0, again.output
    said = " ".join(again.output.split())
    assert "is damaged (5 predictions, not one per test image" in said  # (the path before it is folded at 80 columns)
    assert "is damaged (best_val_accuracy is 'high', not a fraction): that training runs again" in said
    assert json.loads(run_file.read_text())["predictions"] == whole["predictions"]  # retrained, the same numbers


def test_stale_working_folders_of_dead_processes_are_removed_and_others_kept(tmp_path):
    dead = 2**22 + 12345  # above Linux's pid_max default: no process has it
    stale = [tmp_path / f".partial-run.{dead}", tmp_path / f".replaced-run.{dead}", tmp_path / f".quantize-abc.{dead}"]
    live = [tmp_path / f".partial-other.{os.getpid() - 0}", tmp_path / f".partial-parent.{os.getppid()}"]
    foreign = [tmp_path / ".partial-notours", tmp_path / f"run.{dead}", tmp_path / f".cache.{dead}"]
    for path in stale + live + foreign:
        path.mkdir()
        (path / "f").write_text("x")
    assert sorted(remove_stale(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in live + foreign)


# 8. smaller items -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, target, said",
    [
        ("sweep", "kdcompress.runs.sweep.sweep", "trainings finished so far are kept in the sweep folder"),
        ("quantize", "kdcompress.deploy.quantize.quantize_run", "the run folder is unchanged"),
        ("compress", "kdcompress.runs.compress.compress", "the unfinished run was discarded"),
    ],
)
def test_ctrl_c_says_what_each_command_leaves_behind(tiny_run, monkeypatch, command, target, said):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupted)
    args = [str(tiny_run)] if command == "quantize" else list(TINY)
    result = runner.invoke(app, [command, *args])
    assert result.exit_code == 130 and said in " ".join(result.output.split())


def test_group_class_layouts_are_refused_instead_of_merged(tmp_path):
    for group, classes in (("animals", ("cat", "dog")), ("vehicles", ("car",))):
        for name in classes:
            (tmp_path / group / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / group / name / "0.png")
    result = runner.invoke(app, ["compress", "--dataset", "folder", "--data-dir", str(tmp_path), *TINY])
    fails_cleanly(result, "holds no images itself, only sub-folders (cat, dog)")


def test_json_files_of_a_run_get_the_usual_mode(tiny_run):
    expected = 0o666 & ~_umask()
    for name in ("manifest.json", "history.json"):
        assert stat.S_IMODE((tiny_run / name).stat().st_mode) == expected, name
    assert stat.S_IMODE((tiny_run / "student.onnx").stat().st_mode) == expected


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_predict_walks_a_class_folder_test_set_and_scores_it(tiny_run, tmp_path):
    test = np.load(tiny_run / "test_set.npz")
    for i in range(12):
        label = str(int(test["labels"][i]))
        (tmp_path / "test" / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(test["images"][i][0]).save(tmp_path / "test" / label / f"{i}.png")
    result = runner.invoke(app, ["predict", str(tmp_path / "test"), "--run", str(tiny_run), "--json"])
    assert result.exit_code == 0, result.output
    output = json.loads(result.stdout)
    assert len(output["results"]) == 12 and output["scores"]["images"] == 12
    correct = sum(r["predictions"][0]["class"] == r["label"] for r in output["results"])
    assert output["scores"]["correct"] == correct
    human = runner.invoke(app, ["predict", str(tmp_path / "test"), "--run", str(tiny_run)])
    assert f"Scored against the class folders: {correct} of 12 correct" in human.stdout


def test_progress_keeps_its_bar_count_and_time_at_80_columns():
    import io

    from rich.console import Console

    from kdcompress.report.console import RichReporter

    buffer = io.StringIO()
    reporter = RichReporter(Console(file=buffer, width=80, force_terminal=True, color_system=None))
    with reporter.progress("distilled", total=80) as advance:
        advance(80, status="ep 8/8 val 97.2% (best 97.9% @6) | loss 0.512 ce 0.101 kd 0.812 feat 0.441")
    last = buffer.getvalue().split("\r")[-1]
    assert "distilled" in last and "━━━━━━━━━━━━" in last and "80/80" in last and "0:00:00" in last
    assert max(len(line.replace("\x1b[2K", "")) for line in last.splitlines()) <= 80


# 9. an honest INT8 verdict ----------------------------------------------------------------------


def test_int8_slower_than_fp32_is_said_in_quantize_benchmark_and_json(tiny_run, tmp_path, monkeypatch):
    from kdcompress.deploy import quantize, timing
    from kdcompress.deploy.benchmark import _int8_verdict
    from kdcompress.report.benchmark_render import benchmark_context
    from kdcompress.runs.benchmark import benchmark_and_save

    run = _copy(tiny_run, tmp_path)
    real = timing.interleaved_latency

    def slow_int8(calls, **kwargs):  # quantize times FP32 and the candidates in turn: make every candidate 2x slower
        timings = real(calls, **kwargs)
        return {name: {k: v * (1.0 if name == "FP32" else 2.0) if k.endswith("_ms") else v for k, v in t.items()}
                for name, t in timings.items()}

    monkeypatch.setattr(quantize, "interleaved_latency", slow_int8)
    result = runner.invoke(app, ["quantize", str(run)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "INT8 kept for size (" in said and "slower at batch 1" in said
    verdict = json.loads((run / "manifest.json").read_text())["models"]["int8"]["quantization"]["verdict"]
    assert verdict["faster"] is False and verdict["speedup_batch1"] < 1

    bench = benchmark_and_save(run, quick=True, gpu=False)  # benchmark's own verdict, from its own timings, is saved
    assert json.loads((run / "benchmark.json").read_text())["int8_verdicts"]["int8"]["words"] == bench.int8_verdicts["int8"].words
    bench.models["int8"].reference.batch1["p50_ms"] = 3 * bench.models["student"].reference.p50_ms
    bench.int8_verdicts["int8"] = _int8_verdict(bench.models, "int8", 64)
    assert not bench.int8_verdicts["int8"].faster and "3.00x slower at batch 1" in bench.int8_verdicts["int8"].words
    assert any(line.startswith("WARNING: distilled int8: INT8 kept for size") for line in benchmark_context(bench))


def test_int8_verdict_words():
    from kdcompress.core.errors import KdcError
    from kdcompress.deploy.frontier import Int8Verdict, int8_verdict

    fast = int8_verdict({"p50_ms": 1.0, "images_per_s": 100, "bytes": 400}, {"p50_ms": 0.5, "images_per_s": 300, "bytes": 100}, 64)
    assert fast.faster and fast.words == "INT8 is 4.00x smaller and 2.00x faster at batch 1, 3.00x faster at batch 64 than FP32 on this machine"
    mixed = int8_verdict({"p50_ms": 0.55, "images_per_s": 7337, "bytes": 395}, {"p50_ms": 0.63, "images_per_s": 3490, "bytes": 100}, 64)
    assert not mixed.faster
    assert mixed.words == "INT8 kept for size (3.95x smaller); 1.15x slower at batch 1, 2.10x slower at batch 64 than FP32 on this machine"
    assert Int8Verdict.from_dict(mixed.to_dict()) == mixed  # as manifest.json and benchmark.json keep it
    with pytest.raises(KdcError, match="an INT8 verdict lacks words"):
        Int8Verdict.from_dict({k: v for k, v in mixed.to_dict().items() if k != "words"})
    with pytest.raises(KdcError, match="wrong type"):
        Int8Verdict.from_dict({**mixed.to_dict(), "faster": "no"})
