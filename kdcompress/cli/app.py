"""The `kdc` command line: parse options, call one library function, render the result.

Progress and status go to stderr, results to stdout. Heavy libraries are imported inside the
commands, so `kdc --help` answers at once.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from kdcompress.cli import options
from kdcompress.cli.output import say, stderr, stdout, terminate, tolerant_output, user_errors
from kdcompress.core.errors import KdcError
from kdcompress.train.losses import FORMULA, FORMULA_NOTES

app = typer.Typer(
    name="kdc",
    help="Distil a big image classifier into a small one, export both to ONNX and measure what was gained.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Distil a big image classifier into a small one, export both to ONNX and measure what was gained."""


SPAWN_SAFE = "spawn_safe"  # in the click context's obj when main() runs the command line (not a test's CliRunner)
DISCARDED = "the unfinished run was discarded; earlier runs are untouched"


LOSS_HELP = f"{FORMULA}   ({FORMULA_NOTES})"


@app.command(
    help="Train a teacher and, for each student (--student a,b,c), a baseline, a distilled student and a label-smoothing "
    "control; export them to ONNX and say whether distillation beat the baseline and the control beyond noise."
    f"\n\n{LOSS_HELP}"
)
@user_errors(DISCARDED)
@options.with_settings("compress")
def compress(ctx: typer.Context, nproc: int = options.NPROC, as_json: bool = options.JSON, **settings: Any) -> None:
    config = options.compress_config(ctx.params)
    from kdcompress.report.compress_render import summary_table, verdict_lines
    from kdcompress.runs.compress import compress as run_compress
    from kdcompress.runs.launch import relaunched
    from kdcompress.runs.rundir import check_out

    if relaunched(nproc, config, sys.argv[1:], _reporter(), lambda: check_out(config.out) if config.out else None):
        return

    reporter = _reporter()
    reporter.info(FORMULA)
    result = run_compress(config, reporter, spawn_safe=bool(ctx.obj and ctx.obj.get(SPAWN_SAFE)))
    if result.manifest is None:  # a process other than rank 0 under torchrun: rank 0 reports
        return
    if as_json:
        sys.stdout.write(json.dumps(result.manifest.to_dict(), indent=2) + "\n")
        return
    stdout.print(summary_table(result.manifest))
    details = result.manifest.details
    for line in verdict_lines(details.get("comparisons", {}), details.get("attribution")):
        stdout.print(escape(line), highlight=False)
    for warning in result.manifest.warnings:
        stdout.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False)
    say(stdout, f"Run written to {result.run_dir}: next, kdc benchmark {shlex.quote(str(result.run_dir))}", "bold")


@app.command()
@user_errors("trainings finished so far are kept in the sweep folder: run the same command again to resume")
@options.with_settings("sweep")
def sweep(
    ctx: typer.Context,
    seeds: int = options.SEEDS,
    nproc: int = options.NPROC,
    out: Optional[Path] = typer.Option(
        None, "--out", rich_help_panel=options.OUTPUT, help="Sweep folder [default: ARTIFACTS/sweep-DATASET]; an interrupted sweep there resumes."
    ),
    as_json: bool = options.JSON,
    **settings: Any,
) -> None:
    """Distil over a grid of T x alpha x beta and several seeds; say which settings beat the baseline beyond noise.

    One teacher serves the whole sweep (trained once, or reused from compress); each seed trains
    its baseline once (and a label-smoothing control per T and alpha), and the teacher's outputs
    are computed once per seed for every augmented batch, so N distilled students cost about N
    baseline trainings. Names the cell chosen on validation, with its test result. Writes results.json,
    summary.md, heatmap.png and objectives.png into the sweep folder; finished trainings are kept,
    so running the same command again resumes an interrupted sweep.

    With --nproc N (or under torchrun) each process trains its own share of the trainings, whole, on its own GPU.
    """
    from kdcompress.report.sweep_render import sweep_table
    from kdcompress.runs.launch import relaunched
    from kdcompress.runs.sweep import sweep_students
    from kdcompress.train.sweep_config import SweepConfig

    base = options.compress_config(ctx.params, leave_out=("out",))  # --out is the sweep folder here
    config = SweepConfig(
        base=base,
        temperatures=options.numbers("--T", settings["temperatures"]),
        alphas=options.numbers("--alpha", settings["alphas"]),
        betas=options.numbers("--beta", settings["betas"]),
        kd_losses=options.names(settings["kd_losses"]),
        seeds=seeds,
        out=str(out) if out else None,
    )
    if relaunched(nproc, base, sys.argv[1:], _reporter(), config.resolved):
        return
    command = " ".join(["kdc", *sys.argv[1:]]) if sys.argv[1:2] == ["sweep"] else "kdc sweep"
    by_student = sweep_students(config, _reporter(), command=command)
    if by_student is None:  # a process other than rank 0 under torchrun: rank 0 reports
        return
    folders = dict(config.per_student())
    if as_json:  # one student: its results, as before; several: results by student
        sys.stdout.write(json.dumps(by_student if len(by_student) > 1 else next(iter(by_student.values())), indent=2) + "\n")
        return
    for student, results in by_student.items():
        stdout.print(sweep_table(results, student if len(by_student) > 1 else None))
        say(stdout, f"Saved results.json, summary.md, heatmap.png and objectives.png in {folders[student].out}")


def main() -> None:
    """Entry point of the `kdc` console script and of `python -m kdcompress` (both guarded by `__name__`)."""
    import signal

    tolerant_output()
    signal.signal(signal.SIGTERM, terminate)
    app(obj={SPAWN_SAFE: True})  # a spawned worker re-imports our guarded main module: safe (train.export)


def _reporter() -> Any:
    """Progress and status on stderr; under torchrun from rank 0 only (the others' would interleave with it)."""
    from kdcompress.core.reporter import NullReporter
    from kdcompress.core.world import launched

    if not launched().main:
        return NullReporter()
    from kdcompress.report.console import RichReporter

    return RichReporter(stderr)


@app.command()
@user_errors("nothing was written; the run folders are untouched")
def benchmark(
    path: Path = typer.Argument(Path("artifacts"), help="A run folder, or an artifacts root (its newest finished run)."),
    all_runs: bool = typer.Option(False, "--all", help="Benchmark every finished run under the artifacts root."),
    target: Optional[str] = typer.Option(
        None, "--target", help="Targets to run every file on, comma-separated: onnxruntime-cpu (always), onnxruntime-cuda "
        "(onnxruntime-gpu and a GPU), openvino-cpu (pip install 'kdcompress\\[openvino]'). Default: every one that can run "
        "here; one named here that cannot is an error.",
    ),
    threads: int = typer.Option(1, "--threads", help="Intra-op threads of every target for the timings (fixed, reported)."),
    batch: int = typer.Option(64, "--batch", help="Batch size for the throughput figure."),
    gpu: bool = typer.Option(True, "--gpu/--no-gpu", help="Also run onnxruntime-cuda when onnxruntime-gpu can use a GPU."),
    quick: bool = typer.Option(False, "--quick/--no-quick", help="Fewer timing runs (for smoke tests; figures are noisier)."),
    rehash: bool = typer.Option(
        False, "--rehash", help="First record the SHA-256 of every model file in the run's manifest: after you replaced or "
        "re-exported a file on purpose (otherwise a changed file is refused, as a tampered one would be).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout instead of tables."),
    wide: bool = typer.Option(False, "--wide", help="Every column of the tables, however narrow the terminal (they fold)."),
    max_ms: Optional[float] = typer.Option(
        None, "--max-ms", help="Budget: latency at batch 1 on the point's own target, in ms (as timed here).", rich_help_panel="Budget"
    ),
    max_mb: Optional[float] = typer.Option(None, "--max-mb", help="Budget: ONNX file size, in MB.", rich_help_panel="Budget"),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="Budget: accuracy points below the teacher.", rich_help_panel="Budget"),
    max_ram: Optional[float] = typer.Option(
        None, "--max-ram", help="Budget: MB of resident memory the loaded model adds (measured in a process per point).", rich_help_panel="Budget"
    ),
) -> None:
    """Every ONNX file of a run on every runtime that can run it here, the frontier, and the point to ship.

    A point is (file, target, precision): onnxruntime on the CPU (and CUDA), OpenVINO on the CPU at f32 and at its
    default precision where that is not f32 (bf16 on CPUs with avx512_bf16 or AMX). Each point's accuracy comes from
    its own predictions; all are timed interleaved in one process. The Pareto frontier (accuracy vs latency, vs size)
    runs over every point. Each CPU point's load time, first inference and the resident memory it adds are measured
    in a process of its own (not with --quick, unless --max-ram asks). With a budget (--max-ms, --max-mb,
    --max-drop, --max-ram) it names the point to ship: of those within
    every limit that no other beats beyond noise, the fastest, then the smallest; never the teacher, and never a
    format that is not faster than its FP32 file on the same target unless the budget limits size. The recommended
    file and every INT8 file no faster than its FP32 file are then profiled layer by layer (onnxruntime, OpenVINO).
    Writes benchmark.json, benchmark.md (with the Python that runs the chosen point) and benchmark.png into each run.
    """
    from kdcompress.deploy.frontier import Budget
    from kdcompress.report.benchmark_render import benchmark_context, benchmark_tables
    from kdcompress.report.console import RichReporter
    from kdcompress.runs.benchmark import benchmark_runs

    budget = Budget(max_ms, max_mb, max_drop, max_ram)
    command = " ".join(["kdc", *map(shlex.quote, sys.argv[1:])]) if sys.argv[1:2] == ["benchmark"] else None
    targets = options.names(target) if target else None
    measure = {"threads": threads, "batch": batch, "gpu": gpu, "quick": quick, "budget": budget}

    def show(result: Any) -> None:
        if not as_json:
            for table in benchmark_tables(result, wide):
                stdout.print(table)
            for line in benchmark_context(result):
                say(stdout, line, "bold yellow" if line.startswith("WARNING") else "dim")
            if result.recommendation:
                say(stdout, result.recommendation["words"], "bold green" if result.recommendation["meets"] else "bold yellow")
            if result.saved:
                say(stdout, f"Saved benchmark.json, benchmark.md and benchmark.png in {result.run_dir}")

    results, broken = benchmark_runs(path, all_runs, RichReporter(stderr), show, rehash=rehash, command=command, targets=targets, **measure)
    if as_json:
        dicts = [r.to_dict() for r in results]
        sys.stdout.write(json.dumps(dicts if all_runs else dicts[0], indent=2) + "\n")
    if broken:
        raise KdcError(broken)
    unsaved = [r.save_error for r in results if not r.saved]
    if unsaved:
        raise KdcError(f"{unsaved[0]}: the results were printed above but not saved; free space or pick a writable run folder")


@app.command()
@user_errors("the run folder is unchanged (no INT8 or FP16 model was added)")
def quantize(
    run: Path = typer.Argument(Path("artifacts"), help="A run folder, or an artifacts root (its newest finished run)."),
    threads: int = typer.Option(1, "--threads", help="onnxruntime threads used to time the candidates."),
    model: Optional[str] = typer.Option(
        None, "--model", help="Quantize this one alone: a distilled student (student, or student-ARCH with several) or teacher [default: all]."
    ),
) -> None:
    """Write the deployment formats of each distilled student and of the teacher: static INT8 (QDQ) and FP16.

    INT8: U8S8 with per-channel or per-tensor weight scales, with and without reduce-range (and S8S8 off
    x86), calibrated on training images, are built and timed in turn with the FP32 student on this
    machine; the fastest that loses at most 1 point of accuracy is kept as student-int8.onnx, and the
    verdict says whether it is faster than FP32 here. FP16 (student-fp16.onnx) is for GPU targets: its
    agreement with FP32 is checked on this CPU; `kdc benchmark` times it on CUDA where there is one.
    A run with several students gets both formats for each distilled student (student-ARCH-int8.onnx ...).
    The teacher gets both too (teacher-int8.onnx, teacher-fp16.onnx): the compression that needs no
    training, on the frontier beside the students.
    """
    from kdcompress.core.roles import format_of, format_role, source_of
    from kdcompress.deploy.quantize import quantize_run
    from kdcompress.deploy.run_lookup import resolve_runs
    from kdcompress.report.console import RichReporter
    from kdcompress.report.predict_render import quantize_lines

    run_dir = resolve_runs(run)[0]
    made = quantize_run(run_dir, threads=threads, reporter=RichReporter(stderr), model=model)
    for name, entry in made.items():
        if format_of(name) == "int8":
            if len(made) > 2:
                stdout.print(f"[bold]{escape(source_of(name))}[/]", highlight=False)
            for line in quantize_lines(entry, made.get(format_role(source_of(name), "fp16"))):
                stdout.print(line, highlight=False)


@app.command()
@user_errors("nothing was written")
def predict(
    images: list[Path] = typer.Argument(
        ..., help="Image files (PNG, JPEG, BMP...) or folders of images; first a .onnx file kdc wrote to classify with it alone."
    ),
    run: Optional[Path] = typer.Option(None, "--run", help="Run folder [default: the newest run under --artifacts]."),
    model: Optional[str] = typer.Option(
        None, "--model", help="teacher, baseline, student (distilled), control, int8, fp16, teacher-int8, teacher-fp16 (with several students: student-ARCH, "
        "int8-ARCH ...), a file of the run by its name (student-ARCH-int8.onnx), or a .onnx file. Default: the model the run's "
        "last kdc benchmark under a budget recommended, else the distilled student.",
    ),
    top_k: int = typer.Option(1, "--top-k", help="How many classes to show per image (one line each image)."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts", help="Artifacts root searched when --run is not given."),
    runtime: str = typer.Option(
        "onnxruntime", "--runtime", help="onnxruntime, or openvino (at f32; pip install 'kdcompress\\[openvino]'): the same preprocessing and output."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the predictions as JSON on stdout."),
) -> None:
    """Classify images with a model of a run, one line per image and a summary; it names the run and the model it used.

    Without --run it takes the newest run under --artifacts, and refuses to guess when that folder holds runs of
    different datasets. Images of another size or channels than the run's are resized or converted, and said to be.

    kdc predict FILE.onnx IMAGE... needs no run folder: every ONNX file kdc writes carries its class names, input
    size, mean and std, resize and colour rules, and the run and role it came from, in its metadata (kdc.* keys).
    A file without them (an older run's) is read through its run, as before.
    """
    from kdcompress.deploy.predict import predict_images
    from kdcompress.report.predict_render import prediction_output

    output = predict_images(images, run=run, model=model, top_k=top_k, artifacts=artifacts, runtime=runtime)
    failed = [r for r in output["results"] if "error" in r]
    if as_json:
        sys.stdout.write(json.dumps(output, indent=2) + "\n")
    else:
        for line in prediction_output(output):
            say(stdout, line, "bold yellow" if line.startswith("warning:") else None)
    for result in failed:
        stderr.print(f"[bold red]error:[/] {escape(result['error'])}", highlight=False, soft_wrap=True)
    if failed:
        stderr.print(f"{len(failed)} of {len(output['results'])} image(s) could not be classified", highlight=False)
        raise typer.Exit(1)


def _prose(text: str) -> str:
    """Help text as the terminal should wrap it: paragraphs kept, the source's line breaks inside each folded.

    Typer's rich help keeps a docstring's single line breaks, so at 80 columns every 100-character source line
    wrapped once more and broke mid-sentence."""
    import inspect

    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in paragraph.splitlines()) for paragraph in paragraphs)


for _command in app.registered_commands:
    _command.help = _prose(_command.help or _command.callback.__doc__ or "")
