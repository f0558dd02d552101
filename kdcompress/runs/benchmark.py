"""`kdc benchmark` as a library call: measure a run's points (deploy.benchmark), then write its result files."""

from __future__ import annotations

import shlex
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from kdcompress.core.errors import KdcError
from kdcompress.core.files import folder_lock, write_together
from kdcompress.core.reporter import NullReporter, Reporter
from kdcompress.deploy.results import BenchmarkResult

RESULT_FILES = ("benchmark.json", "benchmark.md", "benchmark.png")


def benchmark_runs(
    path: Path, all_runs: bool, reporter: Reporter, show: Callable[[BenchmarkResult], None], rehash: bool = False,
    command: str | None = None, targets: tuple[str, ...] | None = None, **options: Any,
) -> tuple[list[BenchmarkResult], str | None]:
    """`kdc benchmark PATH [--all]`: benchmark_and_save each run PATH names (a run, an artifacts root's newest run, or
    with all_runs every finished run under it), show each result as it comes, and return them all with, under
    all_runs, what could not be benchmarked (None when every run was): such a run is warned about and skipped.

    targets: --target's names; command: the command line to record (default: the one that makes this result)."""
    from kdcompress.deploy.run_lookup import resolve_runs

    results, broken = [], []
    for run_dir in resolve_runs(path, all_runs):
        reporter.info(f"benchmarking {run_dir}")
        try:
            result = benchmark_and_save(
                run_dir, reporter, rehash=rehash, targets=targets, command=command or benchmark_command(run_dir, targets, **options), **options
            )
        except KdcError as exc:
            if not all_runs:
                raise
            reporter.warn(f"skipped {run_dir}: {exc}")  # --all: the other runs are still benchmarked
            broken.append(run_dir.name)
            continue
        results.append(result)
        show(result)
    said = None
    if broken:
        said = (f"{len(broken)} of {len(broken) + len(results)} runs could not be benchmarked ({', '.join(broken)}; why is "
                f"said above): the others' results were printed and saved")  # fmt: skip
    return results, said


def benchmark_command(run_dir: Path, targets: tuple[str, ...] | None, threads: int, batch: int, gpu: bool, quick: bool, budget: Any) -> str:
    """The kdc benchmark command line that makes this result, every option and the budget included (a library call)."""
    parts = ["kdc", "benchmark", shlex.quote(str(run_dir)), "--threads", str(threads), "--batch", str(batch)]
    parts += ["--target", ",".join(targets)] if targets else []
    parts += [] if gpu else ["--no-gpu"]
    parts += ["--quick"] if quick else []
    for flag, value in (("--max-ms", budget.max_ms), ("--max-mb", budget.max_mb), ("--max-drop", budget.max_drop), ("--max-ram", budget.max_ram)):
        parts += [flag, f"{value:g}"] if value is not None else []
    return " ".join(parts)


def benchmark_and_save(run_dir: str | Path, reporter: Reporter | None = None, rehash: bool = False, **options: Any) -> BenchmarkResult:
    """benchmark_run, then benchmark.json, benchmark.md and benchmark.png in the run folder, all under the run's lock
    (one writer at a time: a quantize or another benchmark of the same run is refused meanwhile, in one line).

    rehash: first record the SHA-256 of every model file in the manifest (read again under the lock).
    A folder that cannot be written (full disk, read-only) loses only the files: the result is returned all the
    same, with saved false and the reason in save_error.
    """
    from kdcompress.deploy.benchmark import benchmark_run
    from kdcompress.deploy.manifest import read_manifest
    from kdcompress.deploy.manifest import rehash as rehash_run

    reporter = reporter or NullReporter()
    run_dir = Path(run_dir)
    read_manifest(run_dir)  # a folder that is no run is said as such before any lock is taken in it
    with _run_lock(run_dir, reporter):
        if rehash:
            changed = rehash_run(run_dir)
            reporter.info(f"{run_dir}: recorded the SHA-256 of every model file ({', '.join(changed) or 'none'} had changed)")
        result = benchmark_run(run_dir, reporter=reporter, **options)
        save_result(result, run_dir, reporter)
    return result


@contextmanager
def _run_lock(run_dir: Path, reporter: Reporter) -> Iterator[None]:
    """The run's lock while benchmarking; a folder where not even the lock can be written (read-only, full) is
    benchmarked all the same, unlocked: nothing can be written there, and save_result says so."""
    with ExitStack() as stack:
        try:
            stack.enter_context(folder_lock(run_dir, "benchmark"))
        except OSError as exc:
            reporter.info(f"{run_dir} cannot be written ({exc.strerror or exc}): it is benchmarked without its lock")
        yield


def save_result(result: BenchmarkResult, run_dir: Path, reporter: Reporter) -> None:
    """Write the three files as one (rendered aside, then renamed: a link at one of their names is replaced, never
    written through); a failed write is reported (result.saved false) and leaves the earlier files as they were."""
    from kdcompress.core.files import write_json_to
    from kdcompress.report.benchmark_render import benchmark_markdown, benchmark_plot

    markdown = benchmark_markdown(result)
    result.saved = True
    try:
        write_together(run_dir, {
            "benchmark.json": lambda path: write_json_to(path, result.to_dict()),
            "benchmark.md": lambda path: path.write_text(markdown),
            "benchmark.png": lambda path: benchmark_plot(result, path),
        })  # fmt: skip
    except OSError as exc:
        result.saved = False
        result.save_error = (
            f"could not write the benchmark files into {run_dir} ({exc.strerror or exc}); any from an earlier benchmark "
            f"are as they were"
        )
        reporter.warn(result.save_error + ": the results below are not saved")
