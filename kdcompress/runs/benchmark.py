"""`kdc benchmark` as a library call: measure a run's points (deploy.benchmark), then write its result files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdcompress.core.files import write_json_atomic
from kdcompress.core.reporter import NullReporter, Reporter
from kdcompress.deploy.benchmark import benchmark_run
from kdcompress.deploy.results import BenchmarkResult


def benchmark_and_save(run_dir: str | Path, reporter: Reporter | None = None, **options: Any) -> BenchmarkResult:
    """benchmark_run, then benchmark.json, benchmark.md and benchmark.png in the run folder.

    A folder that cannot be written (full disk, read-only) loses only the files: the result is returned all the
    same, with saved false and the reason in save_error.
    """
    reporter = reporter or NullReporter()
    result = benchmark_run(run_dir, reporter=reporter, **options)
    save_result(result, Path(run_dir), reporter)
    return result


def save_result(result: BenchmarkResult, run_dir: Path, reporter: Reporter) -> None:
    """Write the three files; a failed write is reported (result.saved false), not raised."""
    from kdcompress.report.render import benchmark_markdown, benchmark_plot

    try:
        result.saved = True
        write_json_atomic(run_dir / "benchmark.json", result.to_dict())
        (run_dir / "benchmark.md").write_text(benchmark_markdown(result))
        benchmark_plot(result, run_dir / "benchmark.png")
    except OSError as exc:
        result.saved = False
        result.save_error = f"could not write the benchmark files into {run_dir} ({exc.strerror or exc})"
        reporter.warn(result.save_error + ": the results below are not saved")
