"""The `kdc` command line: parse options, call one library function, render the result.

Progress and status go to stderr, results to stdout. Heavy libraries are imported inside the
commands, so `kdc --help` answers at once.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console

from kdcompress.errors import KdcError

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


stdout = Console()
stderr = Console(stderr=True)


def _user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a KdcError into one red line on stderr and exit code 1, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KdcError as exc:
            stderr.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            stderr.print("[bold red]interrupted:[/] the unfinished run was discarded; earlier runs are untouched")
            raise typer.Exit(130) from None

    return wrapper


LOSS_HELP = (
    "loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))"
    " + beta * ||P(f_s) - f_t||^2   (KL averaged per sample; f = pooled penultimate features;"
    " P = linear projection used in training only, never exported)"
)


@app.command(help=f"Train a teacher, a baseline student and a distilled student; export all three to ONNX.\n\n{LOSS_HELP}")
@_user_errors
def compress(
    dataset: str = typer.Option("digits", "--dataset", "-d", help="digits (offline default), cifar3, chest-xray, or folder."),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Where the data is: cifar3 looks for cifar-10-batches-py here (default ./data, "
        "downloaded when absent); chest-xray and folder need it."
    ),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Input side in pixels (default per dataset: digits 16, others 32)."),
    teacher: str = typer.Option("efficientnet_b3", "--teacher", help="Teacher: any timm model name."),
    student: str = typer.Option("resnet18", "--student", help="Student: any timm model name (baseline and distilled)."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Start the teacher from timm's ImageNet weights (downloads)."),
    pretrained_student: bool = typer.Option(False, "--pretrained-student", help="Start both students from ImageNet weights."),
    teacher_weights: Optional[Path] = typer.Option(None, "--teacher-weights", help="Use this trained teacher checkpoint (.pt) instead of training one."),
    retrain_teacher: bool = typer.Option(False, "--retrain-teacher", help="Train the teacher even when an identical one was trained before."),
    temperature: float = typer.Option(4.0, "--T", "--temperature", help="Temperature T that softens both logit sets in the KL term (> 0)."),
    alpha: float = typer.Option(0.5, "--alpha", help="Weight of the KL term in [0, 1]; CE gets 1 - alpha."),
    beta: float = typer.Option(0.3, "--beta", help="Weight of the feature term (>= 0); 0 = logits-only distillation."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs per training (default per dataset: digits 10, cifar3 30, chest-xray 10, folder 15)."),
    teacher_epochs: Optional[int] = typer.Option(None, "--teacher-epochs", help="Epochs for the teacher (default: same as --epochs)."),
    batch_size: int = typer.Option(128, "--batch-size", help="Batch size of every training."),
    lr: float = typer.Option(2e-3, "--lr", help="Peak learning rate (AdamW, one-cycle schedule)."),
    weight_decay: float = typer.Option(0.05, "--weight-decay", help="AdamW weight decay."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share of train held out to pick the best epoch (the test split never is)."),
    seed: int = typer.Option(0, "--seed", help="Seed for weights, data order and augmentation."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (mixed precision on CUDA)."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts", help="Artifacts root; each run gets a new sub-folder."),
    out: Optional[Path] = typer.Option(None, "--out", help="Exact run folder; an earlier run there is replaced once this one completes."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON on stdout instead of the table."),
) -> None:
    from kdcompress.config import CompressConfig
    from kdcompress.pipeline import compress as run_compress
    from kdcompress.report import RichReporter, summary_table

    config = CompressConfig(
        dataset=dataset,
        data_dir=str(data_dir) if data_dir else None,
        image_size=image_size,
        teacher=teacher,
        student=student,
        pretrained=pretrained,
        pretrained_student=pretrained_student,
        teacher_weights=str(teacher_weights) if teacher_weights else None,
        retrain_teacher=retrain_teacher,
        temperature=temperature,
        alpha=alpha,
        beta=beta,
        epochs=epochs,
        teacher_epochs=teacher_epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        val_fraction=val_fraction,
        seed=seed,
        device=device,
        artifacts=str(artifacts),
        out=str(out) if out else None,
    )
    reporter = RichReporter(stderr)
    reporter.info(LOSS_HELP.split("   (")[0])
    result = run_compress(config, reporter)
    if as_json:
        sys.stdout.write(json.dumps(result.manifest, indent=2) + "\n")
        return
    stdout.print(summary_table(result.manifest))
    for warning in result.manifest["warnings"]:
        stdout.print(f"[bold yellow]warning:[/] {warning}", highlight=False)
    stdout.print(f"Run written to [bold]{result.run_dir}[/]: next, [bold]kdc benchmark {result.run_dir}[/]", highlight=False)


def main() -> None:
    """Entry point of the `kdc` console script."""
    app()
