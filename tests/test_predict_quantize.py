"""kdc predict (same logits as evaluation, any image format, per-file errors) and kdc quantize."""

import json
import platform
import shutil

import numpy as np
import onnx
import pytest
from PIL import Image

from conftest import fails_cleanly, runner
from kdcompress.cli import app
from kdcompress.deploy.benchmark import benchmark_run
from kdcompress.deploy.manifest import read_manifest
from kdcompress.deploy.predict import predict_images
from kdcompress.deploy.preprocessing import Preprocessing
from kdcompress.deploy.quantize import candidates
from kdcompress.deploy.sessions import run_logits
from kdcompress.deploy.targets import create_session
from kdcompress.deploy.timing import cpu_isa
from kdcompress.runs.compress import compress
from kdcompress.train.config import CompressConfig


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A run on a generated two-class image folder, so test images exist as files."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for c, tint in (("cats", 40), ("dogs", 200)):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(rng.normal(tint, 40, (24, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i:02d}.png")
    config = CompressConfig(
        dataset="folder", data_dir=str(root), teacher="test_efficientnet", student="test_resnet",
        image_size=16, epochs=1, device="cpu", control="none", artifacts=str(tmp_path_factory.mktemp("artifacts")),
    )
    return root, compress(config).run_dir


@pytest.mark.xdist_group("folder_run")  # one worker makes the folder_run they share
def test_predict_gives_the_evaluation_logits_for_a_test_image(folder_run):
    root, run = folder_run
    manifest = read_manifest(run).to_dict()
    test = np.load(run / "test_set.npz")
    expected = run_logits(create_session(run / "student.onnx"), test["images"], Preprocessing.from_dict(manifest["preprocessing"]))
    # test split order: classes sorted, files sorted: dogs/01.png is row 4 + 1
    output = predict_images([root / "test" / "dogs" / "01.png"], run=run, model="student", top_k=2)
    assert output["results"][0]["logits"] == pytest.approx(expected[5].tolist(), abs=1e-6)
    probabilities = [p["probability"] for p in output["results"][0]["predictions"]]
    assert sum(probabilities) == pytest.approx(1.0) and probabilities == sorted(probabilities, reverse=True)


def _odd_images(folder):
    folder.mkdir()
    Image.fromarray(np.full((300, 200), 50000, dtype=np.uint16)).save(folder / "deep16.png")
    Image.new("RGBA", (40, 40), (10, 200, 30, 128)).save(folder / "alpha.png")
    Image.new("L", (7, 9), 128).save(folder / "gray.bmp")
    Image.new("RGB", (640, 480), (200, 10, 10)).save(folder / "big.jpg")
    return sorted(folder.iterdir())


def test_predict_accepts_every_format_and_a_folder(tiny_run, tmp_path):
    files = _odd_images(tmp_path / "imgs")
    output = predict_images([tmp_path / "imgs"], run=tiny_run, top_k=2)
    assert [r["file"] for r in output["results"]] == [str(f) for f in files]
    assert all(len(r["predictions"]) == 2 and "error" not in r for r in output["results"])


def test_predict_reports_bad_files_and_classifies_the_rest(tiny_run, tmp_path):
    good = _odd_images(tmp_path / "imgs")[0]
    (tmp_path / "notes.png").write_text("not an image")
    truncated = tmp_path / "cut.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:150])
    args = ["predict", str(good), str(tmp_path / "missing.png"), str(tmp_path / "notes.png"), str(truncated)]
    result = runner.invoke(app, [*args, "--run", str(tiny_run), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert "predictions" in data["results"][0]
    errors = [r.get("error", "") for r in data["results"][1:]]
    assert "not found" in errors[0] and "notes.png" in errors[1] and "cut.jpg" in errors[2]
    assert "3 of 4 image(s) could not be classified" in result.output and "Traceback" not in result.output
    human = runner.invoke(app, ["predict", str(good), "--run", str(tiny_run), "--model", "teacher", "--top-k", "1"])
    assert human.exit_code == 0 and f"{good}: " in human.stdout and "%" in human.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "int8"], "kdc quantize"),
        (["--model", "giant"], "unknown model 'giant'"),
        (["--top-k", "0"], "--top-k must be at least 1"),
    ],
)
def test_predict_argument_errors(tiny_run, tmp_path, args, message):
    good = _odd_images(tmp_path / "imgs")[0]
    result = runner.invoke(app, ["predict", str(good), "--run", str(tiny_run), *args])
    fails_cleanly(result, message)


def test_predict_uses_the_newest_run_under_artifacts(tiny_run, tmp_path):
    good = _odd_images(tmp_path / "imgs")[0]
    assert predict_images([good], artifacts=tiny_run.parent)["run"] == str(tiny_run)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["predict", str(good), "--artifacts", str(empty)])
    fails_cleanly(result, "no finished run")


def test_quantize_adds_a_smaller_int8_and_an_fp16_student_to_the_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result = runner.invoke(app, ["quantize", str(run)])
    assert result.exit_code == 0, result.output
    entry = read_manifest(run).to_dict()["models"]["int8"]
    assert entry["onnx"] == "student-int8.onnx" and entry["quantization"]["calibration_images"] > 0
    tried = [c["format"] for c in entry["quantization"]["candidates"]]
    assert tried == [c.name for c in candidates(platform.machine())] and len(tried) >= 4
    assert entry["quantization"]["chosen"] in tried and entry["quantization"]["machine"]["isa"] == cpu_isa()
    graph = onnx.load(str(run / "student-int8.onnx")).graph
    assert any(n.op_type == "DequantizeLinear" for n in graph.node)
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)  # weights stored as int8
    assert (run / "student.onnx").stat().st_size / entry["onnx_bytes"] > 3
    half = read_manifest(run).to_dict()["models"]["fp16"]
    assert half["onnx"] == "student-fp16.onnx" and half["fp16"]["top1_agreement"] >= 0.99
    weights = onnx.load(str(run / "student-fp16.onnx")).graph.initializer
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert not any(t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 4 for t in weights)  # no FP32 conv weights left
    assert 1.8 < (run / "student.onnx").stat().st_size / half["onnx_bytes"] < 2.2
    # The teacher's own files: made, chosen on validation and scored the same way, without a baseline.
    teacher8 = read_manifest(run).models["teacher-int8"]
    assert teacher8.onnx == "teacher-int8.onnx" and teacher8.details["quantization"]["chosen_on"] == "validation_set"
    assert teacher8.details["quantization"]["fp32_accuracy"] == read_manifest(run).models["teacher"].test_accuracy
    assert any(n.op_type == "DequantizeLinear" for n in onnx.load(str(run / "teacher-int8.onnx")).graph.node)
    from kdcompress.deploy.metadata import read_metadata

    assert [read_metadata(run / f).role for f in ("teacher-int8.onnx", "student-fp16.onnx")] == ["teacher-int8", "fp16"]
    assert "Kept" in result.output and "teacher-int8.onnx (" in " ".join(result.output.split())  # what quantize printed
    bench = benchmark_run(run, quick=True, gpu=False)
    assert list(bench.models) == ["teacher", "teacher-int8", "teacher-fp16", "baseline", "student", "control", "int8", "fp16"]
    assert all(bench.models[r].agrees_with_manifest for r in bench.models)
    assert bench.models["fp16"].format == "FP16" and bench.models["fp16"].source == "student"
    assert bench.models["teacher-int8"].format == "INT8" and bench.models["teacher-int8"].source == "teacher"
    assert bench.models["teacher-int8"].baseline is None and set(bench.int8_verdicts) == {"int8", "teacher-int8"}
    assert predict_images([_odd_images(tmp_path / "imgs8")[0]], run=run, model="teacher-int8")["results"][0]["predictions"]
    # The runtime's own profiler says which kernels ran in INT8; the float file has none
    from kdcompress.deploy.profile import profile_onnxruntime

    images = np.load(run / "test_set.npz")["images"]
    quantized = profile_onnxruntime(run / "student-int8.onnx", read_manifest(run).preprocessing, images, 1, runs=3)
    plain = profile_onnxruntime(run / "student.onnx", read_manifest(run).preprocessing, images, 1, runs=3)
    assert quantized["by_precision"]["int8"] > 0.3 and "convert" in quantized["by_precision"]
    assert "int8" not in plain["by_precision"] and set(plain["by_precision"]) <= {"fp32", "other"}
    assert quantized["runs"] == plain["runs"] == 3 and abs(sum(quantized["by_precision"].values()) - 1) < 1e-6
    from kdcompress.deploy.profile import profile_openvino  # OpenVINO's counters name the kernel type it executed

    quantized = profile_openvino(run / "student-int8.onnx", read_manifest(run).preprocessing, images, 1, runs=3)
    plain = profile_openvino(run / "student.onnx", read_manifest(run).preprocessing, images, 1, runs=3)
    assert quantized["by_precision"]["int8"] > 0.3 and "int8" not in plain["by_precision"] and "fp32" in plain["by_precision"]
    assert predict_images([_odd_images(tmp_path / "imgs")[0]], run=run, model="int8")["results"][0]["predictions"]


# kdc quantize's failures: one line each, the run as it was.


def test_a_role_that_names_a_path_is_refused_and_nothing_is_written_outside(tiny_run, tmp_path):
    from conftest import copy_run, edit_manifest, files_under

    run = copy_run(tiny_run, tmp_path / "runs")
    before = files_under(tmp_path)
    edit_manifest(run, lambda m: m["models"].__setitem__("student-d/../../escaped", m["models"]["student"]))
    for command in (["quantize", str(run)], ["benchmark", str(run), "--quick"]):
        fails_cleanly(runner.invoke(app, command), "is not a model name kdc makes")
    assert files_under(tmp_path) == before  # no escaped-int8.onnx above the run, nothing anywhere


def test_a_calibration_set_without_images_is_refused_before_anything_is_built(tiny_run, tmp_path):
    from conftest import copy_run, files_under

    run = copy_run(tiny_run, tmp_path)
    np.savez_compressed(run / "calibration.npz", images=np.zeros((0, 1, 16, 16), np.uint8), labels=np.zeros(0, np.int64))
    before = files_under(run)
    fails_cleanly(runner.invoke(app, ["quantize", str(run)]), "calibration.npz holds no images: the run folder is damaged")
    assert files_under(run) == before


@pytest.mark.xdist_group("folder_run")  # one worker makes the folder_run they share
def test_predict_on_openvino_agrees_with_onnxruntime_on_the_runs_test_images(folder_run):
    # The same preprocessing and the same output on either runtime (OpenVINO at f32).
    root, run = folder_run
    images = [root / "test"]
    ort = predict_images(images, run=run, model="teacher", top_k=1)
    ov = predict_images(images, run=run, model="teacher", top_k=1, runtime="openvino")
    assert ov["runtime"] == "openvino-cpu" and ov["precision"] == "f32" and ort["runtime"] == "onnxruntime-cpu"
    assert len(ov["results"]) == len(ort["results"]) == 8 and ov["scores"]["correct"] == ort["scores"]["correct"]
    for a, b in zip(ort["results"], ov["results"]):
        assert a["file"] == b["file"] and a["predictions"][0]["class"] == b["predictions"][0]["class"]
        assert np.allclose(a["logits"], b["logits"], atol=1e-3)
    fails_cleanly(runner.invoke(app, ["predict", str(root / "test"), "--run", str(run), "--runtime", "tensorrt"]),
                  "--runtime must be onnxruntime or openvino, not 'tensorrt'")  # fmt: skip


# A newcomer's first hour, predict's items.


@pytest.mark.xdist_group("folder_run")  # one worker makes the folder_run they share
def test_predict_never_guesses_between_runs_of_different_datasets(tiny_run, folder_run, tmp_path):
    from conftest import copy_run

    root, run = folder_run
    artifacts = tmp_path / "artifacts"
    copy_run(tiny_run, artifacts, "digits-run")
    copy_run(run, artifacts, "pets-run")
    image = root / "test" / "dogs" / "01.png"
    fails_cleanly(runner.invoke(app, ["predict", str(image), "--artifacts", str(artifacts)]),
                  "holds runs of 2 different datasets")  # fmt: skip
    named = runner.invoke(app, ["predict", str(image), "--run", str(artifacts / "pets-run")])
    assert named.exit_code == 0, named.output
    first = named.stdout.splitlines()[0]
    assert f"run {artifacts / 'pets-run'} (folder: cats, dogs); model student" in " ".join(first.split())
    assert len([line for line in named.stdout.splitlines() if line.startswith(str(image))]) == 1  # one line per image
    # 20 x 24 px, as the run's training images were: resized to 16 px as they were, so nothing to warn about
    assert "1 image(s) classified:" in named.stdout and "size" not in named.stdout
    assert read_manifest(artifacts / "pets-run").dataset.source_sizes == ["20x24"]
    digits = runner.invoke(app, ["predict", str(image), "--run", str(artifacts / "digits-run")])
    assert "1 of 1 image(s) are of another size than the images the run was trained from (8x8 px)" in " ".join(digits.stdout.split())


@pytest.mark.xdist_group("folder_run")  # one worker makes the folder_run they share
def test_predict_takes_the_recommended_model_and_a_files_own_name(folder_run, tmp_path):
    from conftest import copy_run

    root, run = folder_run
    run = copy_run(run, tmp_path)
    _recommend(run, "baseline")
    out = predict_images([root / "test" / "cats"], run=run)
    assert out["model_name"] == "baseline" and out["chosen_by"] == "the last kdc benchmark's recommendation"
    by_file = predict_images([root / "test" / "cats"], run=run, model="teacher.onnx")
    assert by_file["model"].endswith("teacher.onnx")
    assert predict_images([root / "test" / "cats"], run=run, model="teacher")["results"] == by_file["results"]


def test_the_int8_file_is_chosen_on_validation_and_the_test_split_read_after(tiny_run, tmp_path, monkeypatch):
    # The test split is read once, to score the chosen file; never to choose it.
    from conftest import copy_run
    from kdcompress.deploy import quantize

    run = copy_run(tiny_run, tmp_path)
    read: list[str] = []
    real_load, real_score = quantize.load_images, quantize.score_models

    def load(run_dir, manifest, key):
        read.append(key)
        return real_load(run_dir, manifest, key)

    def score(files, prep, split, threads):
        read.append(f"choose on {len(split[1])} images")
        return real_score(files, prep, split, threads)

    monkeypatch.setattr(quantize, "load_images", load)
    monkeypatch.setattr(quantize, "score_models", score)
    quantize.quantize_run(run)
    validation = len(np.load(run / "validation.npz")["labels"])
    chosen = f"choose on {validation} images"  # the distilled student's candidates, then the teacher's: test read once
    assert read == ["calibration_set", "validation_set", chosen, "test_set", chosen]
    q = read_manifest(run).models["int8"].details["quantization"]
    assert q["chosen_on"] == "validation_set" and all("choice_accuracy" in c and "accuracy" not in c for c in q["candidates"])


def _recommend(run, model):
    """A real benchmark.json of run (onnxruntime only), its recommendation set to model (None: a benchmark without a budget)."""
    from kdcompress.deploy.frontier import Budget

    result = benchmark_run(run, quick=True, gpu=False, targets=["onnxruntime-cpu"], budget=Budget(max_mb=1000) if model else None)
    data = result.to_dict()
    if model:
        data["recommendation"]["model"] = model
    (run / "benchmark.json").write_text(json.dumps(data))
    return data


# benchmark.json as predict reads it, and predict's own lines


@pytest.mark.parametrize(
    "damage, said",
    [
        (lambda data, run: data["recommendation"].update(model=["student"]), "recommendation.model is ['student']"),
        (lambda data, run: data["models"]["student"]["points"][0].update(accuracy="abc"), "accuracy is 'abc'"),
        (lambda data, run: data["models"]["student"]["points"][0]["batch1"].update(p50_ms=float("nan")), "batch1 is"),
        (lambda data, run: data.update(format=5), "not a kdcompress-benchmark/3 benchmark result"),
        (lambda data, run: (run / "benchmark.json").write_text("[" * 100_000 + "]" * 100_000), "cannot read"),
        (lambda data, run: ((run / "benchmark.json").unlink(), (run / "benchmark.json").symlink_to("/dev/zero")), "leads outside its run folder"),
        (lambda data, run: ((run / "benchmark.json").unlink(), __import__("os").mkfifo(run / "benchmark.json")), "is not a regular file"),
    ],
)
@pytest.mark.xdist_group("folder_run")  # one worker makes the folder_run they share
def test_predict_reads_benchmark_json_as_a_run_file_with_its_types_checked(folder_run, tmp_path, damage, said):
    from conftest import copy_run

    root, run = folder_run
    run = copy_run(run, tmp_path)
    data = _recommend(run, "baseline")
    written = json.dumps(data)
    damage(data, run)
    if json.dumps(data) != written:  # a change to the data: written back
        (run / "benchmark.json").write_text(json.dumps(data))
    fails_cleanly(runner.invoke(app, ["predict", str(root / "test" / "cats" / "01.png"), "--run", str(run)]), said)


@pytest.mark.xdist_group("folder_run")  # one worker makes the folder_run they share
def test_predict_says_when_no_recommendation_is_recorded(folder_run, tmp_path):
    from conftest import copy_run

    root, run = folder_run
    run = copy_run(run, tmp_path)
    _recommend(run, None)  # a benchmark without a budget
    out = predict_images([root / "test" / "cats" / "01.png"], run=run)
    assert out["model_name"] == "student"
    assert out["chosen_by"] == ("the default: its last kdc benchmark had no budget (--max-ms, --max-mb, --max-drop), so no "
                                "recommendation is recorded")  # fmt: skip


@pytest.mark.xdist_group("folder_run")  # one worker makes the folder_run they share
def test_a_failed_image_does_not_load_torch(folder_run, tmp_path):
    import subprocess
    import sys

    root, run = folder_run
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    code = (
        "import sys\n"
        "from kdcompress.cli import main\n"
        f"sys.argv = ['kdc', 'predict', {str(broken)!r}, {str(root / 'test' / 'cats' / '01.png')!r}, '--run', {str(run)!r}]\n"
        "try:\n    main()\n"
        "finally:\n    print('torch loaded' if 'torch' in sys.modules else 'no torch', file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().endswith("no torch") and "1 of 2 image(s) could not be classified" in done.stderr


@pytest.mark.e2e
def test_grayscale_images_of_a_run_trained_on_grayscale_files_are_not_said_to_be_converted(tmp_path):
    # A folder of grayscale PNGs trains at 3 channels (RGB); predicting on the same images converts them exactly as
    # training did, which is nothing to warn about. Colour images for that run are.
    from kdcompress.train.config import CompressConfig

    for label, shade in (("dark", 40), ("light", 200)):
        for i in range(10):
            (tmp_path / "data" / label).mkdir(parents=True, exist_ok=True)
            Image.new("L", (12, 12), shade + i).save(tmp_path / "data" / label / f"{i:02d}.png")
    config = CompressConfig(dataset="folder", data_dir=str(tmp_path / "data"), teacher="test_efficientnet",
                            student="test_resnet", image_size=12, epochs=1, teacher_epochs=1, device="cpu",
                            control="none", batch_size=4, artifacts=str(tmp_path / "artifacts"))  # fmt: skip
    run = compress(config).run_dir
    manifest = read_manifest(run)
    assert manifest.preprocessing.channels == 3 and manifest.dataset.source_channels == [1]
    out = predict_images([tmp_path / "data" / "dark"], run=run)
    assert len(out["results"]) == 10 and not [w for w in out["warnings"] if "channels" in w]


@pytest.mark.xdist_group("folder_run")  # one worker makes the folder_run they share
def test_a_benchmark_json_of_another_format_is_no_recommendation_not_an_error(folder_run, tmp_path):
    from conftest import copy_run

    root, run = folder_run
    run = copy_run(run, tmp_path)
    data = _recommend(run, "baseline")
    (run / "benchmark.json").write_text(json.dumps({**data, "format": "kdcompress-benchmark/1"}))
    out = predict_images([root / "test" / "cats" / "01.png"], run=run)
    assert out["model_name"] == "student" and "of format 'kdcompress-benchmark/1', not kdcompress-benchmark/3" in out["chosen_by"]


def test_a_file_describes_itself_and_predicts_alone_as_it_does_with_its_run(tiny_run, tmp_path):
    # The metadata round trip; the .onnx file copied away from its run gives the same classes
    # and logits as through the run.
    from kdcompress.deploy.metadata import read_metadata, stamp

    manifest = read_manifest(tiny_run)
    described = read_metadata(tiny_run / "student.onnx")
    assert described.classes == manifest.dataset.classes and described.preprocessing == manifest.preprocessing
    assert (described.run, described.role, described.dataset) == (tiny_run.name, "student", "digits")
    alone = tmp_path / "app" / "model.onnx"
    alone.parent.mkdir()
    shutil.copyfile(tiny_run / "student.onnx", alone)
    images = _odd_images(tmp_path / "imgs")[:3]
    result = runner.invoke(app, ["predict", str(alone), *map(str, images), "--json", "--artifacts", str(tmp_path / "none")])
    assert result.exit_code == 0, result.output
    by_file, by_run = json.loads(result.stdout), predict_images(images, run=tiny_run, model="student")
    assert by_file["classes"] == by_run["classes"] and by_file["model_name"] == "student"
    for a, b in zip(by_file["results"], by_run["results"]):
        assert a["predictions"] == b["predictions"] and np.allclose(a["logits"], b["logits"], atol=1e-6)
    assert tiny_run.name in by_file["run"] and "the file alone" in by_file["chosen_by"]
    # a file without the metadata (an older run's) is read through a run, as before
    older = onnx.load(str(alone))
    del older.metadata_props[:]
    onnx.save(older, str(alone))
    assert read_metadata(alone) is None
    assert predict_images([images[0]], run=tiny_run, model=str(alone))["run"] == str(tiny_run)
    # damaged metadata is one line, never a guess
    stamp(alone, {"kdc.format": "kdcompress-onnx/1", "kdc.classes": '["a\\nb", "c"]', "kdc.preprocessing": "{}"})
    fails_cleanly(runner.invoke(app, ["predict", str(alone), str(images[0])]), "its kdc metadata is damaged")
