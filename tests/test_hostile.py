"""What a hostile or careless user cannot make kdc do: run code from a file, read or write outside the folders they
named, replace a run they did not name, or lose a run to a signal, a crafted manifest or a second process. User
errors are one `error:` line, exit code 1, no traceback, and leave nothing behind.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, TINY, TINY_CONFIG, Recorder, copy_run, edit_manifest, fails_cleanly, runner
from kdcompress.cli import app
from kdcompress.deploy.manifest import rehash

_copy, _edit_manifest = copy_run, edit_manifest


def _leftovers(folder: Path) -> list[str]:
    """Working files a command may leave behind: staging folders, candidates, locks, temporary files."""
    marks = (".partial-", ".replaced-", ".quantize-", ".kdc-")
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.startswith(marks) or p.name.endswith(".tmp"))


def _onnx_model(path: Path, channels: int, outputs: int) -> Path:
    """A small valid ONNX classifier: N x channels x H x W -> global average pool -> N x outputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((channels, outputs), dtype=np.float32), "w")
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", outputs])], [weight],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _image(tmp_path: Path) -> Path:
    path = tmp_path / "a.png"
    Image.new("L", (8, 8), 10).save(path)
    return path


# 1. Two runs that start in the same second never share a folder ------------------------------------


def test_two_runs_started_in_the_same_second_reserve_two_folders(tmp_path, monkeypatch):
    from datetime import datetime

    from kdcompress.runs import rundir
    from kdcompress.train.config import CompressConfig

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 12, 2, 12, 0, 0)

    monkeypatch.setattr(rundir, "datetime", Frozen)
    cfg = CompressConfig(artifacts=str(tmp_path)).resolved()
    first = rundir.prepare_run_dir(cfg)  # both reserved before either has published
    second = rundir.prepare_run_dir(cfg)
    assert first.final.name == "digits-20261202-120000" and second.final.name == "digits-20261202-120000-2"
    assert first.final.is_dir() and second.final.is_dir()  # the names are taken, not merely computed
    for folder in (first, second):
        rundir.discard_run(folder)
    assert list(tmp_path.iterdir()) == []


def test_a_run_never_replaces_one_it_was_not_asked_to_replace(tmp_path):
    from kdcompress.deploy.manifest import Manifest
    from kdcompress.runs import rundir
    from kdcompress.train.config import CompressConfig

    folder = rundir.prepare_run_dir(CompressConfig(artifacts=str(tmp_path), out=str(tmp_path / "mine")).resolved())
    (folder.final / "manifest.json").write_text('{"run": "the other one"}')  # another process published here meanwhile
    (folder.staging / "manifest.json").write_text("{}")
    manifest = Manifest.__new__(Manifest)
    manifest.run, manifest.warnings, manifest.to_dict = "mine", [], lambda: {"run": manifest.run}
    recorder = Recorder()
    landed = rundir.publish_run(folder, manifest, recorder)
    assert landed == tmp_path / "mine-2" and json.loads((landed / "manifest.json").read_text()) == {"run": "mine-2"}
    assert json.loads((tmp_path / "mine" / "manifest.json").read_text()) == {"run": "the other one"}  # untouched
    assert "was filled by another run while this one trained" in recorder.warnings[0]
    assert not folder.staging.exists()


def test_two_compress_runs_in_the_same_second_both_keep_their_runs(tiny_run, tmp_path, monkeypatch):
    from datetime import datetime

    from kdcompress.runs import rundir

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 12, 2, 12, 0, 0) if tz is None else datetime.now(tz)

    monkeypatch.setattr(rundir, "datetime", Frozen)
    weights = str(tiny_run / "checkpoints" / "teacher.pt")
    args = ["compress", *TINY, "--epochs", "1", "--control", "none", "--teacher-weights", weights, "--artifacts", str(tmp_path)]
    outputs = [runner.invoke(app, args) for _ in range(2)]
    assert all(r.exit_code == 0 for r in outputs), outputs[-1].output
    runs = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert runs == ["digits-20261202-120000", "digits-20261202-120000-2"]
    said = [" ".join(r.output.split()) for r in outputs]
    assert f"Run written to {tmp_path / runs[0]}" in said[0] and f"Run written to {tmp_path / runs[1]}" in said[1]


# 2. A data folder never runs code ---------------------------------------------------------------------


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_cifar_batch_is_refused_without_running_it(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "code-ran"
    for name in ("data_batch_1", "test_batch"):
        (folder / name).write_bytes(pickle.dumps({"data": _Payload(marker), "labels": [0]}))
    result = runner.invoke(app, ["compress", "--dataset", "cifar3", "--data-dir", str(tmp_path), *TINY, "--artifacts", str(tmp_path / "a")])
    fails_cleanly(result, "which a CIFAR-10 batch never holds")
    assert "it is not a CIFAR-10 python batch" in " ".join(result.output.split())
    assert not marker.exists()


def test_a_genuine_cifar_batch_still_reads(tmp_path):
    from kdcompress.data.readers import _read_cifar_batch

    images = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({"batch_label": "b", "labels": [3, 1], "data": images, "filenames": ["a", "b"]}))
    x, y = _read_cifar_batch(tmp_path / "data_batch_1")
    assert x.shape == (2, 3, 32, 32) and np.array_equal(x.reshape(2, -1), images) and y.tolist() == [3, 1]


def test_every_torch_load_reads_weights_only():
    calls = []
    for path in (REPO / "kdcompress").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" and getattr(node.func.value, "id", None) == "torch":
                only = [k for k in node.keywords if k.arg == "weights_only"]
                calls.append((path.name, bool(only) and getattr(only[0].value, "value", None) is True))
    assert calls and all(ok for _, ok in calls), calls


# 3, 4, 5. A foreign or damaged run folder is one line -------------------------------------------------------


@pytest.mark.parametrize(
    "name, said",
    [("/etc/passwd", "a path outside the run folder"), ("../other-run/student.onnx", "a path outside the run folder")],
)
@pytest.mark.parametrize("command", ["benchmark", "predict"])
def test_manifest_paths_stay_inside_the_run_folder(tiny_run, tmp_path, name, said, command):
    run = _copy(tiny_run, tmp_path)
    _edit_manifest(run, lambda m: m["models"]["student"].update(onnx=name))
    args = ["benchmark", str(run), "--quick", "--no-gpu"] if command == "benchmark" else ["predict", str(_image(tmp_path)), "--run", str(run)]
    fails_cleanly(runner.invoke(app, args), said)


def test_a_link_out_of_the_run_folder_is_refused(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    outside = shutil.copy(run / "test_set.npz", tmp_path / "elsewhere.npz")
    (run / "test_set.npz").unlink()
    (run / "test_set.npz").symlink_to(outside)
    fails_cleanly(runner.invoke(app, ["benchmark", str(run), "--quick", "--no-gpu"]), "leads outside its run folder")


@pytest.mark.parametrize(
    "change, said",
    [
        (lambda m: m["models"]["student"].update(test_correct="many"), "test_correct is 'many', not a whole number"),
        (lambda m: m["dataset"].update(counts="lots"), "counts is 'lots', not image counts per split"),
        (lambda m: m["models"]["baseline"].update(onnx=5), "onnx is 5, not text"),
        (lambda m: m["preprocessing"].update(mean=[]), "mean and std need one value per channel"),
        (lambda m: m["dataset"].update(classes="abc"), "classes is 'abc', not a list"),
        (lambda m: m["models"]["teacher"].update(parameters=None), "parameters is None, not a whole number"),
        (lambda m: m.update(files=["test_set.npz"]), "files is ['test_set.npz'], not file names by role"),
        (lambda m: m["models"]["student"].update(sha256=5), "sha256 is 5, not a SHA-256 in hex"),
        (lambda m: m["models"]["student"].update(sha256=["ab"]), "sha256 is ['ab'], not a SHA-256 in hex"),
        (lambda m: m["dataset"].update(source_channels=[2]), "source_channels is [2], not a list of channel counts"),
    ],
)
def test_manifest_values_of_the_wrong_type_are_one_line(tiny_run, tmp_path, change, said):
    run = _copy(tiny_run, tmp_path)
    _edit_manifest(run, change)
    result = runner.invoke(app, ["benchmark", str(run), "--quick", "--no-gpu"])
    fails_cleanly(result, said)
    assert "the run folder is damaged" in " ".join(result.output.split())


def test_benchmark_refuses_a_model_whose_input_does_not_fit_the_run(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    _onnx_model(run / "student.onnx", channels=3, outputs=10)  # a 3-channel model in a 1-channel run
    rehash(run)  # put there on purpose: past the SHA-256 check, to the shape check
    fails_cleanly(runner.invoke(app, ["benchmark", str(run), "--quick", "--no-gpu"]), "this run's images are 1 x 16 x 16")


@pytest.mark.parametrize("command", ["benchmark", "predict", "quantize"])
def test_a_model_with_the_wrong_number_of_outputs_is_refused(tiny_run, tmp_path, command):
    run = _copy(tiny_run, tmp_path)
    _onnx_model(run / "student.onnx", channels=1, outputs=3)
    rehash(run)
    args = {
        "benchmark": ["benchmark", str(run), "--quick", "--no-gpu"],
        "predict": ["predict", str(_image(tmp_path)), "--run", str(run)],
        "quantize": ["quantize", str(run)],
    }[command]
    fails_cleanly(runner.invoke(app, args), "gives 3 outputs, but this run has 10 classes")
    assert _leftovers(run) == []


# 6. Folder names are shown, never read as markup ---------------------------------------------------------------


def test_class_names_are_printed_as_they_are(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    names = ["[link=https://evil.example]click[/link]", "[unknown]", "[bold]b", *map(str, range(3, 10))]
    _edit_manifest(run, lambda m: m["dataset"].update(classes=names))
    result = runner.invoke(app, ["benchmark", str(run), "--quick", "--no-gpu"])
    assert result.exit_code == 0, result.output
    for name in names[:3]:
        assert name in result.stdout


# 7. A diverged training stops in one line ---------------------------------------------------------------------


def test_a_diverged_training_stops_with_one_line_and_writes_no_run(tmp_path):
    result = runner.invoke(app, ["compress", *TINY, "--lr", "10", "--control", "none", "--artifacts", str(tmp_path)])
    fails_cleanly(result, "the training diverged: its cross-entropy averaged")
    assert "lower --lr (now 10) and retry" in " ".join(result.output.split())
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [] and _leftovers(tmp_path) == []


def test_divergence_is_judged_against_chance_level():
    from kdcompress.core.errors import KdcError
    from kdcompress.train.loop import check_diverged

    check_diverged("baseline", 1, {"loss": 9.0, "ce": 22.9}, 10, 2e-3, ended=True)  # under 10 x ln(10) = 23.03
    check_diverged("baseline", 1, {"loss": 9.0, "ce": 500.0}, 10, 2e-3, ended=False)  # judged at the end of an epoch
    with pytest.raises(KdcError, match=r"averaged 23.1 over epoch 2, over 10x chance level \(2.30\)"):
        check_diverged("baseline", 2, {"loss": 9.0, "ce": 23.1}, 10, 2e-3, ended=True)
    with pytest.raises(KdcError, match="the loss became nan in epoch 1"):
        check_diverged("teacher", 1, {"loss": float("nan")}, 3, 2e-3, ended=False)


def test_a_high_loss_that_is_not_rising_is_no_divergence():
    """MobileNetV4 from scratch starts far above chance; only a loss that ran away from where it got stops a training."""
    from kdcompress.core.errors import KdcError
    from kdcompress.train.loop import check_diverged

    def follow(epochs, classes):
        reached = epochs[0]  # the first step's was not recorded: epoch 1's mean stands in for it (the stricter case)
        for epoch, ce in enumerate(epochs, 1):
            check_diverged("baseline", epoch, {"loss": ce, "ce": ce}, classes, 2e-3, ended=True, reached=reached)
            reached = min(reached, ce)

    follow([4.69, 4.29, 5.10, 8.68], 2)  # the walkthrough's baseline, 256 X-rays at 64 px (10 x ln 2 = 6.93)
    follow([6.27, 5.27, 4.43, 4.94, 5.53, 5.67, 4.72, 2.63, 1.82, 1.42], 3)  # the cifar3 study's seed-2 baseline
    with pytest.raises(KdcError, match=r"averaged 13.8 over epoch 6, over 10x chance level \(1.10\) and 13.8x the 1"):
        check_diverged("distilled", 6, {"loss": 20.0, "ce": 13.8}, 3, 2e-3, ended=True, reached=1.0)  # a run-away


# 8. EXIF orientation ------------------------------------------------------------------------------------------


def test_exif_orientation_is_applied_when_an_image_is_read(tmp_path):
    from kdcompress.deploy.preprocessing import load_image, pil_to_array

    pixels = np.zeros((8, 16), dtype=np.uint8)
    pixels[:, 8:] = 255  # left half black, right half white, as stored
    stored = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: shown turned 90 degrees clockwise
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=100)
    shown = Image.open(tmp_path / "phone.jpg").transpose(Image.Transpose.ROTATE_270)
    loaded = load_image(tmp_path / "phone.jpg", 8, 1)
    assert np.array_equal(loaded, pil_to_array(shown, 8, 1))
    assert loaded[0, :4].mean() < 64 and loaded[0, 4:].mean() > 192  # black on top, white below


# 9. benchmark --all reports every good run -----------------------------------------------------------------------


def test_benchmark_all_goes_past_a_broken_run(tiny_run, tmp_path):
    good = _copy(tiny_run, tmp_path, "a-good")
    bad = _copy(tiny_run, tmp_path, "b-bad")
    (bad / "test_set.npz").write_bytes(b"broken")
    result = runner.invoke(app, ["benchmark", str(tmp_path), "--all", "--quick", "--no-gpu"])
    fails_cleanly(result, "1 of 2 runs could not be benchmarked (b-bad;")
    assert (good / "benchmark.json").is_file() and not (bad / "benchmark.json").exists()
    said = " ".join(result.output.split())
    assert "warning: skipped" in said and "is unreadable" in said  # why, said once, above the error


# 10. A terminal that cannot show every character ---------------------------------------------------------------


def test_names_the_terminal_cannot_encode_are_replaced_not_fatal(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    _edit_manifest(run, lambda m: m["dataset"].update(classes=["cat 🐱", *map(str, range(1, 10))]))
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    done = subprocess.run(
        [sys.executable, "-m", "kdcompress", "predict", str(_image(tmp_path)), "--run", str(run), "--top-k", "10"],
        capture_output=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert b"Traceback" not in done.stderr and b"cat ?" in done.stdout


# 11. Hidden files and folders are skipped, and said --------------------------------------------------------------


def test_hidden_files_and_class_folders_are_skipped_with_one_info_line(tmp_path):
    from kdcompress.data.readers import load_folder
    from kdcompress.deploy.preprocessing import list_images

    for name in ("alpha", "beta", ".gamma"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("L", (8, 8), 40 * i).save(tmp_path / name / f"{i}.png")
    (tmp_path / "alpha" / "._0.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # not an image at all
    (tmp_path / ".DS_Store").write_bytes(b"\x00")
    recorder = Recorder()
    source = load_folder(tmp_path, 8, 1, recorder)
    assert source.classes == ["alpha", "beta"] and len(source.train_y) + len(source.test_y) == 6
    (line,) = [line for line in recorder.lines if "hidden" in line]
    assert "skipped 3 hidden file(s) or folder(s)" in line and ".gamma" in line and "alpha/._0.png" in line
    assert [p.name for p in list_images(tmp_path / "alpha")] == ["0.png", "1.png", "2.png"]


# 12. --nproc within the machine ---------------------------------------------------------------------------------


def test_more_processes_than_cores_are_refused(tmp_path):
    result = runner.invoke(app, ["compress", *TINY, "--nproc", "64", "--artifacts", str(tmp_path)])
    fails_cleanly(result, "--nproc 64 asks for more processes than the")
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


# 13. SIGTERM cleans up like Ctrl-C -------------------------------------------------------------------------------


def _terminate_when(command: list[str], cwd: Path, ready) -> subprocess.CompletedProcess:
    """Run `python -m kdcompress command`, send it SIGTERM once ready() is true, and return how it ended."""
    process = subprocess.Popen([sys.executable, "-m", "kdcompress", *command], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the command ended before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


@pytest.mark.e2e
def test_sigterm_during_compress_discards_the_run_in_one_line(tmp_path):
    root = tmp_path / "artifacts"
    args = ["compress", *TINY, "--epochs", "50", "--teacher-epochs", "50", "--artifacts", str(root)]
    done = _terminate_when(args, tmp_path, lambda: any(root.glob(".partial-*")))
    err = done.stderr.decode()
    assert done.returncode == 143 and "Traceback" not in err, err
    assert "interrupted (SIGTERM): the unfinished run was discarded" in " ".join(err.split())
    assert _leftovers(root) == [] and [p.name for p in root.iterdir() if not p.name.startswith(".")] == []


@pytest.mark.parametrize("where", ["once the folder is reserved", "once the staging folder is made", "right after"])
def test_an_interruption_as_the_run_folder_is_made_leaves_nothing(tmp_path, monkeypatch, where):
    # Under load the suite's SIGTERM landed between the staging folder's mkdir and the try that discards it (an import
    # stood there): .partial-* and its mark were left behind although the run said it was discarded.
    from kdcompress.runs import compress as compress_module
    from kdcompress.runs import rundir
    from kdcompress.train.config import CompressConfig

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "once the folder is reserved":
        monkeypatch.setattr(rundir, "remove_stale", interrupted)
    elif where == "once the staging folder is made":
        monkeypatch.setattr(Path, "write_text", lambda *a, **k: interrupted())  # its reservation mark
    else:
        monkeypatch.setattr(compress_module, "broadcast_object", interrupted)  # the first step after prepare_run_dir
    root = tmp_path / "artifacts"
    config = CompressConfig(**{**TINY_CONFIG, "epochs": 1, "teacher_epochs": 1}, artifacts=str(root))
    with pytest.raises(KeyboardInterrupt):
        compress_module.compress(config)
    assert not root.exists() or list(root.iterdir()) == []


def test_sigterm_during_quantize_leaves_the_run_as_it_was(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    before = (run / "manifest.json").read_bytes()
    done = _terminate_when(["quantize", str(run)], tmp_path, lambda: any(run.glob(".quantize-*")))
    assert done.returncode == 143 and b"Traceback" not in done.stderr, done.stderr.decode()
    assert (run / "manifest.json").read_bytes() == before and _leftovers(run) == [] and not (run / "student-int8.onnx").exists()


# 14. One quantize at a time ----------------------------------------------------------------------------------------


def test_a_second_quantize_on_a_run_is_refused_while_the_first_holds_it(tiny_run, tmp_path):
    from kdcompress.core.files import folder_lock

    run = _copy(tiny_run, tmp_path)
    before = (run / "manifest.json").read_bytes()
    with folder_lock(run, "quantize"):  # this process is the first quantize
        fails_cleanly(runner.invoke(app, ["quantize", str(run)]), f"another kdc quantize (process {os.getpid()}) is working in")
    assert (run / "manifest.json").read_bytes() == before and _leftovers(run) == []


def test_a_lock_left_by_a_killed_quantize_is_taken_over(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    (run / ".kdc-run.lock").write_text(f"{2**22 + 12345} quantize")  # above Linux's pid_max default: no such process
    result = runner.invoke(app, ["quantize", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "student-int8.onnx").is_file() and _leftovers(run) == []


# 15. Messages that say what is wrong ----------------------------------------------------------------------------------


def test_an_out_of_range_seed_is_said_in_whole_numbers(tmp_path):
    result = runner.invoke(app, ["compress", *TINY, "--seed", "4294967296", "--artifacts", str(tmp_path)])
    fails_cleanly(result, "--seed must be between 0 and 4294967295, got 4294967296")


def test_teacher_weights_that_are_not_a_fitting_checkpoint_say_why(tiny_run, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    cases = [
        (str(tiny_run / "checkpoints" / "student.pt"), "(the file says it holds a test_resnet) do not fit test_efficientnet"),
        (str(text), "is not a PyTorch checkpoint"),
        (str(tmp_path), "is a folder, not a weights file"),
    ]
    for weights, said in cases:
        result = runner.invoke(app, ["compress", *TINY, "--teacher-weights", weights, "--artifacts", str(tmp_path / "a")])
        fails_cleanly(result, said)
    first = runner.invoke(app, ["compress", *TINY, "--teacher-weights", cases[0][0], "--artifacts", str(tmp_path / "a")])
    assert "tensors are missing (first:" in " ".join(first.output.split())


def test_a_url_given_to_predict_is_said_to_be_unsupported(tiny_run, tmp_path):
    result = runner.invoke(app, ["predict", "https://example.com/cat.png", "--run", str(tiny_run)])
    assert result.exit_code == 1
    assert "https://example.com/cat.png: URLs are not supported; download the image first" in " ".join(result.output.split())
