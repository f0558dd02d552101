"""Shared fixtures: the real data in ../shared/data and one tiny end-to-end run reused by many tests; Recorder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kdcompress.core.reporter import Reporter

# Under pytest-xdist (pyproject's addopts) each worker gets its share of the cores: torch's threads here, and
# OMP_NUM_THREADS for the processes a test starts (kdc, torchrun, export workers). Without it every worker
# would run as many threads as there are cores, and they would fight over them.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    THREADS = max(1, (os.cpu_count() or 1) // WORKERS)
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, str(THREADS))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KDC_SHARED_DATA", REPO.parent / "shared" / "data"))

class Recorder(Reporter):
    """A reporter that keeps what the library says: info lines and warnings (`from conftest import Recorder`)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.warnings: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def copy_run(run: Path, tmp_path: Path, name: str = "run") -> Path:
    """A copy of a finished run folder to change (without its benchmark files or locks)."""
    import shutil

    target = tmp_path / name
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("benchmark.*", ".kdc-*"))
    return target


def edit_manifest(run: Path, change) -> None:
    """Apply change(dict) to a run folder's manifest.json."""
    import json

    manifest = json.loads((run / "manifest.json").read_text())
    change(manifest)
    (run / "manifest.json").write_text(json.dumps(manifest))


def files_under(folder: Path) -> set[str]:
    """Every file below folder, as relative paths (what a command may have written)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


runner = CliRunner()  # every test that runs `kdc` in-process: runner.invoke(app, [...])


def fails_cleanly(result, message: str) -> None:
    """A CLI result (typer's CliRunner) that failed as a user error should: exit code 1, exactly one `error:` line
    holding message (white space folded), no traceback."""
    output = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1, result.output
    assert message in output, result.output


# Tiny timm models: the same code path as efficientnet_b3 / resnet18, in seconds on a CPU. Pinned to the CPU,
# where the same seed gives bit-identical numbers (tests/test_gpu.py covers CUDA, with tolerances).
# --teacher-select accuracy --teacher-ema 0: the teacher recipe the golden numbers were recorded with (digits' default
# is now the lowest validation loss of EMA weights).
TINY = ["--teacher", "test_efficientnet", "--student", "test_resnet", "--image-size", "16", "--epochs", "2", "--device", "cpu",
        "--teacher-select", "accuracy", "--teacher-ema", "0"]  # fmt: skip
# The same as CompressConfig keywords, for library calls. No control (the tests that need it ask for it, or use
# tiny_run); teacher_epochs pinned, as the golden numbers were recorded with a 2-epoch teacher.
TINY_CONFIG = dict(
    teacher="test_efficientnet", student="test_resnet", image_size=16, epochs=2, teacher_epochs=2, device="cpu", control="none",
    teacher_select="accuracy", teacher_ema=0.0,
)


def _require(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("KDC_REQUIRE_SHARED_DATA"):
            pytest.fail(f"shared data missing at {path} (KDC_REQUIRE_SHARED_DATA is set)")
        pytest.skip(f"shared data not found at {path}; set KDC_SHARED_DATA")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (or $KDC_SHARED_DATA)."""
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def chest_xray(shared_data: Path) -> Path:
    return _require(shared_data / "chest_xray")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished compress run on digits with tiny models (shared by export, benchmark and predict tests)."""
    from kdcompress.runs.compress import compress
    from kdcompress.train.config import CompressConfig

    root = tmp_path_factory.mktemp("artifacts")
    config = CompressConfig(**{**TINY_CONFIG, "control": "label-smoothing"}, artifacts=str(root))
    return compress(config).run_dir


# Fixtures that train a model (a run shared by a module's tests), or read the real data (its tests train).
TRAINS = ("tiny_run", "two_student_run", "pruned_run", "folder_run", "cli_sweep", "chest_xray", "shared_data")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that trains is e2e: marked by hand, or by using a fixture that trains (the session's tiny run), so that
    `python -m pytest -m "not e2e"` is the quick suite for editing. realdata tests train too."""
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in TRAINS) or item.get_closest_marker("realdata"):
            item.add_marker(pytest.mark.e2e)
