"""The kdc command line: help, exit codes, one-line errors without tracebacks, an end-to-end run."""

import json
import subprocess
import sys

import pytest

from conftest import TINY, fails_cleanly, runner
from kdcompress.cli import app


def _invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_help_states_the_loss_and_is_instant_without_torch():
    result = _invoke("compress", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "alpha * KD(student, teacher; T)" in text and "kl = T^2 * KL(softmax(teacher/T) || softmax(student/T))" in text
    assert "--kd-loss" in text and "--dkd-nontarget" in text and "--student-stem" in text
    # `kdc --help` must not pay for importing torch or onnxruntime
    code = "import sys, kdcompress.cli; sys.exit(('torch' in sys.modules) + 2 * ('onnxruntime' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize(
    "command, args, message",
    [
        ("compress", ["--dataset", "mnist"], "unknown dataset 'mnist'"),
        ("compress", ["--teacher", "efficientnet_b33"], "unknown model 'efficientnet_b33'"),
        ("compress", ["--alpha", "1.5"], "--alpha must be between 0 and 1, got 1.5"),
        ("compress", ["--T", "-2"], "--T must be between"),
        ("compress", ["--beta", "-0.1"], "--beta must be between"),
        ("compress", ["--epochs", "0"], "--epochs must be between"),
        ("compress", ["--dataset", "folder", "--data-dir", "/no/such/folder"], "data folder not found: /no/such/folder"),
        ("compress", ["--dataset", "chest-xray"], "needs --data-dir"),
        ("compress", ["--teacher-weights", "/no/teacher.pt", *TINY], "weights file not found"),
        ("compress", ["--augment", "autoaugment"], "--augment must be crop or rrc, not 'autoaugment'"),
        ("compress", ["--kd-loss", "crd"], "--kd-loss must be kl, dist or dkd, not 'crd'"),
        ("compress", ["--student-stem", "cifar"], "--student-stem must be timm or auto, not 'cifar'"),
        ("compress", ["--dkd-warmup", "2"], "--dkd-warmup must be between 0 and 1, got 2"),
        ("compress", ["--kd-loss", "dist", "--dist-inter", "0", "--dist-intra", "0", "--alpha", "1", "--beta", "0"],
         "is a logit term that is 0 for every image"),
        ("sweep", ["--kd-loss", "kl,dkd", "--dkd-target", "0", "--dkd-nontarget", "0"], "--kd-loss dkd with --dkd-target 0 and --dkd-nontarget 0"),
        ("sweep", ["--kd-loss", "kl,kl"], "--kd-loss needs each loss once"),
        ("sweep", ["--kd-loss", "kl,fitnet"], "--kd-loss must be kl, dist or dkd, not 'fitnet'"),
        ("compress", ["--compile", "graph", "--device", "cpu"], "--compile graph captures CUDA graphs and needs --device cuda"),
        ("sweep", ["--T", "1,x"], "--T takes comma-separated numbers"),
        ("sweep", ["--alpha", "0.5,1.5"], "--alpha must be between 0 and 1"),
        ("sweep", ["--beta", "0,0"], "--beta lists a value twice"),
        ("sweep", ["--seeds", "0"], "--seeds must be between 1 and 100"),
        ("sweep", ["--student", "resnet_18"], "unknown model 'resnet_18'"),
        ("compress", ["--unlabeled", "aux"], "--unlabeled aux uses cifar3's auxiliary images; digits has none"),
        ("compress", ["--prune", "2"], "--prune ratios must be between 0.05 and 0.95"),
        ("compress", ["--prune-to-ms", "0"], "--prune-to-ms must be between"),
        ("sweep", ["--unlabeled", "/no/such/images", "--kd-loss", "kl,dkd"], "images without labels lack: use kl or dist"),
        ("compress", ["--unlabeled", "/no/such/images", "--alpha", "0"], "would teach nothing"),
        ("compress", ["--unlabeled", "/no/such/images", *TINY], "--unlabeled folder not found: /no/such/images"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_1(tmp_path, command, args, message):
    result = _invoke(command, *args, "--artifacts", str(tmp_path / "a"))
    fails_cleanly(result, message)
    assert not (tmp_path / "a").exists() or not [p for p in (tmp_path / "a").iterdir() if not p.name.startswith(".")]


def test_a_bad_autotune_setting_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("KDC_CUDNN_AUTOTUNE", "yes")
    result = _invoke("compress", *TINY, "--artifacts", str(tmp_path / "a"))
    fails_cleanly(result, "KDC_CUDNN_AUTOTUNE='yes' is not understood: use on, off or auto")
    assert "Traceback" not in result.output and not (tmp_path / "a").exists()


def test_device_cuda_without_gpu_is_a_clear_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = _invoke("compress", *TINY, "--device", "cuda", "--artifacts", str(tmp_path))  # the last --device wins
    fails_cleanly(result, "no CUDA GPU")


@pytest.mark.e2e
def test_compress_end_to_end_prints_the_summary_and_the_verdict(tmp_path):
    args = ["--epochs", "1", "--artifacts", str(tmp_path), "--T", "2", "--alpha", "0.7", "--control", "none"]
    result = _invoke("compress", *TINY, *args)
    assert result.exit_code == 0, result.output
    for word in ("teacher", "baseline", "distilled", "test acc", "Run written to", "distilled vs baseline: ", "took "):
        assert word in result.output
    assert "label smoothing" not in result.output  # --control none: no fourth model, no verdict against it
    (run,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["objective"]["resolved"].startswith("loss = 0.3 * CE(student, y) + 0.7 * 2^2 * KL")
    assert set(manifest["models"]) == {"teacher", "baseline", "student"} and list(manifest["comparisons"]) == ["student_vs_baseline"]


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "kdcompress", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "compress" in done.stdout


def test_progress_is_plain_lines_with_time_left_when_not_a_terminal(monkeypatch):
    # Piped through tee, 3 minutes passed with nothing printed.
    import io

    from rich.console import Console

    from kdcompress.report import console as console_module
    from kdcompress.report.console import RichReporter

    now = [0.0]
    monkeypatch.setattr("time.monotonic", lambda: now[0])
    out = io.StringIO()
    reporter = RichReporter(Console(file=out, force_terminal=False, width=120))
    with reporter.progress("teacher", total=4) as advance:
        now[0] = 61.0
        advance(1, status="epoch 1")  # a minute since the last line: one more
        now[0] = 90.0
        advance(1)  # 29 s since: none
        now[0] = 131.0
        advance(1, status="epoch 3")
    lines = out.getvalue().splitlines()
    assert lines[0] == "teacher: 0/4 after 0 s"
    assert lines[1] == "teacher: 1/4 after 1 min 01 s, about 3 min 03 s left (epoch 1)"
    assert lines[2] == "teacher: 3/4 after 2 min 11 s, about 44 s left (epoch 3)"
    assert lines[3] == "teacher: 3/4 after 2 min 11 s (epoch 3)" and len(lines) == 4
    assert console_module.PLAIN_EVERY == 60.0


@pytest.mark.parametrize("command", ["compress", "sweep", "benchmark", "quantize", "predict"])
def test_help_prose_is_wrapped_by_the_terminal_not_by_the_source(command):
    # Typer's rich help kept each docstring line break, so at 80 columns a 100-character source line became a full
    # line and a stub ("each seed trains"): every description line but a paragraph's last must fill the width.
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80"}, catch_exceptions=False)
    assert result.exit_code == 0
    lines = result.output.split("Usage:", 1)[1].split("╭", 1)[0].splitlines()[2:]
    paragraphs = "\n".join(line.strip() for line in lines).strip().split("\n\n")
    for paragraph in paragraphs:
        *inner, _last = paragraph.splitlines()
        assert all(len(line) > 50 for line in inner), f"a line broken by the source in {command} --help: {paragraph!r}"


@pytest.mark.parametrize("command, shown", [("benchmark", "--target"), ("predict", "--runtime")])
def test_help_shows_the_extra_to_install_with_its_brackets(command, shown):
    result = _invoke(command, "--help")
    assert result.exit_code == 0 and "pip install 'kdcompress[openvino]'" in " ".join(result.output.replace("│", " ").split())


def test_a_memory_limit_is_one_line_not_a_traceback(tiny_run, tmp_path):
    # Under `ulimit -v` of about half a gigabyte, loading a library or running onnxruntime fails (where depends on
    # the limit): one line and exit code 1 at each limit, never a traceback.
    from conftest import copy_run

    run = copy_run(tiny_run, tmp_path)
    for megabytes in (420, 480, 500):  # (at 520 MB here OpenBLAS gives up and exits the process itself, from C)
        code = (
            "import resource, sys\n"
            "from kdcompress.cli import main\n"
            f"resource.setrlimit(resource.RLIMIT_AS, ({megabytes} * 2**20, {megabytes} * 2**20))\n"
            f"sys.argv = ['kdc', 'benchmark', {str(run)!r}, '--quick', '--no-gpu', '--target', 'onnxruntime-cpu']\n"
            "main()\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert "Traceback" not in done.stderr, (megabytes, done.stderr)
        if done.returncode != 0:  # it may fit on another machine; where it does not, it is said in one line
            assert done.returncode == 1, done.stderr
            if "OpenBLAS error: Memory allocation still failed" in done.stderr:
                continue  # OpenBLAS (numpy's) says it itself, in one line, and exits from C: nothing Python can catch
            assert done.stderr.count("error:") == 1, done.stderr
            assert "out of memory" in done.stderr or "could not be loaded" in done.stderr or "memory limit" in done.stderr


def test_the_per_dataset_defaults_in_help_are_the_specs_own():
    # The help once said digits trains 10 epochs and its teacher twice that, where data/specs.py said 5 and 4x.
    from kdcompress.data.specs import DATASETS

    text = " ".join(_invoke("compress", "--help").output.replace("│", " ").split())
    for name, spec in DATASETS.items():
        assert f"{name} {spec.epochs}" in text and f"{name} {spec.teacher_epoch_factor}x" in text
        assert f"{name} {spec.image_size}" in text and f"{name} {spec.teacher}" in text
        assert f"{name} {spec.teacher_select}" in text and f"{name} {spec.teacher_ema}" in text


@pytest.mark.parametrize("command", ["compress", "sweep"])
def test_every_setting_is_one_option_with_its_fields_default_and_range(command):
    # The options are generated from CompressConfig's fields: a field added there is an option of both commands
    # (compress only where it says so), with the field's default, and its range is checked from the same field.
    import typer

    from kdcompress.cli.options import GRID_PARAMETER
    from kdcompress.train.config import COMPRESS_ONLY, GRID, settings

    params = {p.name: p for p in typer.main.get_command(app).commands[command].params}
    for name, (default, how) in settings().items():
        if command == "sweep" and how.sweep == COMPRESS_ONLY:
            assert name not in params or name == "out"  # the sweep's --out is its own: the sweep folder
            continue
        option = params[GRID_PARAMETER[name] if command == "sweep" and how.sweep == GRID else name]
        assert set(how.flag_names(name)) <= set(option.opts), name
        if command == "compress" or how.sweep != GRID:
            assert (str(option.default) if how.path and default is not None else option.default) == default, name
            assert option.rich_help_panel == how.panel
        if how.high is not None and how.high < 10_000 and command == "compress":
            result = _invoke(command, how.flag_names(name)[0], str(how.high * 2 + 1))
            assert result.exit_code == 1 and f"{how.flag_names(name)[0]} must be between" in result.output, name
