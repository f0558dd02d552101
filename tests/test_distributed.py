"""Several processes under torchrun (gloo, 2 CPU processes, tiny models): DDP compress and the distributed sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY, fails_cleanly, runner
from kdcompress.cli import app
from kdcompress.deploy.manifest import read_manifest
from kdcompress.runs.launch import without_nproc
from kdcompress.runs.sweep import sweep
from kdcompress.train.collectives import revert_sync_batchnorm, shard
from kdcompress.train.config import CompressConfig
from kdcompress.train.models import create_model
from kdcompress.train.sweep_config import SweepConfig

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
SWEEP_GRID = ["--T", "2,4", "--alpha", "0.5", "--beta", "0,0.3", "--seeds", "1", "--control", "none"]


def _run(args: list[str], cwd: Path, threads: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **({"OMP_NUM_THREADS": threads} if threads else {})}
    # In a session of its own, as torchrun's agent signals process groups (its ranks'); the suite's workers twice died
    # together while a failing-rank run stopped its peers beside them.
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, start_new_session=True)


@pytest.mark.e2e
def test_two_ranks_see_one_process_views_and_end_with_the_same_weights(tmp_path):
    found_path = tmp_path / "found.json"
    done = _run([*TORCHRUN, str(REPO / "tests" / "ddp_worker.py"), str(found_path)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(found_path.read_text())
    assert found["world_size"] == 2 and found["per_rank_batch"] == 32  # --batch-size 64 over 2 ranks
    assert found["views_equal"] and found["labels_equal"]  # rrc views and mixup partners, gathered over ranks
    assert found["weights_identical"] and found["weights_moved"]  # parameters and BatchNorm statistics
    assert found["student_is_plain"] == "ResNet"


def _keys(value, skip=("training",)):
    """The shape of a manifest: its keys, nested, with the values left out."""
    if isinstance(value, dict):
        return {k: _keys(v) for k, v in value.items() if k not in skip and k not in ("history",)}
    return type(value).__name__ if not isinstance(value, (int, float)) or isinstance(value, bool) else "number"


def test_compress_with_nproc_2_writes_one_run_shaped_like_a_single_process_run(tmp_path, tiny_run):
    root = tmp_path / "artifacts"
    done = _run([sys.executable, "-m", "kdcompress", "compress", *TINY, "--epochs", "1", "--nproc", "2", "--artifacts", str(root)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Run written to") == 1 and "Traceback" not in done.stderr
    runs = [p for p in root.iterdir() if not p.name.startswith(".")]
    assert len(runs) == 1 and not [p for p in root.iterdir() if p.name.startswith(".partial")]
    manifest = read_manifest(runs[0]).to_dict()
    single = read_manifest(tiny_run).to_dict()
    assert _keys(manifest) == _keys(single)
    assert manifest["training"]["processes"] == 2 and manifest["training"]["batch_per_process"] == 64
    assert "per process" in manifest["training"]["batchnorm"]  # CPU: torch's SyncBatchNorm needs GPUs
    assert set(manifest["models"]) == {"teacher", "baseline", "student", "control"}


@pytest.mark.e2e
def test_a_failing_rank_stops_the_others_with_one_line(tmp_path):
    # The teacher's weights file is refused on rank 0 only (it alone reads it); rank 1 waits for it in a
    # collective and must be stopped by torchrun, not left hanging.
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(b"not a checkpoint")
    started = time.perf_counter()
    done = _run([sys.executable, "-m", "kdcompress", "compress", *TINY, "--nproc", "2", "--teacher-weights", str(bad),
                 "--artifacts", str(tmp_path / "a")], tmp_path)  # fmt: skip
    assert done.returncode == 1 and time.perf_counter() - started < 120
    assert "is not a PyTorch checkpoint" in done.stderr  # rank 0's own line, the cause
    assert "its error is above) and torchrun stopped the others" in done.stderr and "process 1 of 2" not in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "129"], "--batch-size 129 does not split evenly over 2 processes: pass a multiple of 2"),
        (["--teacher-batch-size", "65"], "--teacher-batch-size 65 does not split evenly over 2 processes: pass a multiple of 2"),
        (["--student", "resnet_18"], "unknown model 'resnet_18'"),
        (["--dataset", "folder", "--data-dir", "/no/such/photos"], "data folder not found: /no/such/photos"),
    ],
)
def test_nproc_refuses_bad_settings_in_one_line_before_starting_processes(tmp_path, args, message):
    for command in ("compress", "sweep"):
        result = runner.invoke(app, [command, *TINY, "--nproc", "2", *args, "--artifacts", str(tmp_path)])
        fails_cleanly(result, message)
        assert "starting 2 processes" not in result.output and "Traceback" not in result.output
        assert not any(tmp_path.iterdir())


def _sweep_args(out: Path, weights: Path) -> list[str]:
    return ["sweep", *TINY, *SWEEP_GRID, "--epochs", "2", "--teacher-weights", str(weights), "--out", str(out)]


def test_distributed_sweep_matches_one_process_and_resumes_after_a_kill(tmp_path, tiny_run):
    weights = tiny_run / "checkpoints" / "teacher.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Killed (SIGKILL to torchrun and both ranks) as soon as the first training is saved.
    runs = tmp_path / "two" / "runs"
    launcher = subprocess.Popen([*TORCHRUN, "-m", "kdcompress", *_sweep_args(tmp_path / "two", weights)], cwd=tmp_path,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    while launcher.poll() is None and time.time() < deadline and not list(runs.glob("seed*.json")):
        time.sleep(0.02)
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()
    before = {p.name: p.stat().st_mtime_ns for p in runs.glob("seed*.json")}
    assert 1 <= len(before) < 5, before  # stopped mid-sweep: baseline + 4 cells in all
    done = _run([*TORCHRUN, "-m", "kdcompress", *_sweep_args(tmp_path / "two", weights)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in runs.glob("seed*.json") if p.name in before} == before  # not retrained
    assert len(list(runs.glob("seed*.json"))) == 5
    assert done.stdout.count("kdc sweep: digits, 4 grid points") == 1  # rank 0 alone reports

    base = CompressConfig(teacher="test_efficientnet", student="test_resnet", image_size=16, epochs=2, device="cpu",
                          control="none", teacher_weights=str(weights))  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process: the same float sums, so the same numbers
    try:
        single = sweep(SweepConfig(base, (2.0, 4.0), (0.5,), (0.0, 0.3), seeds=1, out=str(tmp_path / "one")))
    finally:
        torch.set_num_threads(threads)
    distributed = json.loads((tmp_path / "two" / "results.json").read_text())
    assert [c["per_seed"] for c in distributed["cells"]] == [c["per_seed"] for c in single["cells"]]
    assert {r["name"]: r["predictions"] for r in distributed["runs"]} == {r["name"]: r["predictions"] for r in single["runs"]}


def test_shards_cover_every_item_once_in_order():
    for count in (0, 1, 7, 10):
        parts = [shard(count, rank, 3) for rank in range(3)]
        assert [i for part in parts for i in range(count)[part]] == list(range(count))


def test_without_nproc_keeps_everything_else():
    assert without_nproc(["compress", "--nproc", "2", "--T", "4", "--nproc=3", "--out", "x"]) == ["compress", "--T", "4", "--out", "x"]


def test_synchronised_batchnorm_turns_back_into_the_plain_layers_with_the_same_tensors():
    from timm.layers import BatchNormAct2d, convert_sync_batchnorm

    for name in ("test_efficientnet", "test_resnet"):
        torch.manual_seed(0)
        model = create_model(name, 3, 3).eval()
        images = torch.randn(2, 3, 16, 16)
        expected = model(images)
        kinds = {type(m) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
        synced = convert_sync_batchnorm(model)
        assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
        plain = revert_sync_batchnorm(synced).eval()
        assert {type(m) for m in plain.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)} == kinds
        assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in plain.modules())
        assert torch.equal(plain(images), expected)
    assert BatchNormAct2d in {type(m) for m in create_model("test_efficientnet", 3, 3).modules()}


def test_nproc_from_a_library_call_is_refused_rather_than_rerunning_another_command(tmp_path):
    # CliRunner leaves sys.argv as pytest's: there is no kdc command line for torchrun to run again
    result = runner.invoke(app, ["compress", *TINY, "--nproc", "2", "--artifacts", str(tmp_path)])
    fails_cleanly(result, "--nproc re-runs the kdc command line")
    assert "starting 2 processes" not in result.output and not any(tmp_path.iterdir())
