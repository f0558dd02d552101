"""What a person reads of a run: tables, context lines, Markdown and the accuracy-vs-latency plot."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from kdcompress.core import roles

def _points(delta: float) -> str:
    return f"{delta * 100:+.1f}"


def format_count(n: int) -> str:
    """12_345_678 -> '12.35 M'."""
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def _train_time(seconds: float | None, reused: bool) -> str:
    return "reused" if reused else ("—" if seconds is None else f"{seconds:.0f} s")


SUMMARY_HEADERS = ["model", "test acc", "Δ pts", "Δ imgs", "params", "MB", "best ep", "train"]


def summary_table(manifest: Any) -> Table:
    """Teacher, then each student's baseline / distilled / control side by side: accuracy, change vs that student's
    baseline, size, training time."""
    models = manifest.models
    n_test = manifest.dataset.counts["test"]
    rows = []
    for role in [r for r in roles.ordered(models) if r == roles.TEACHER or roles.kind_of(r) in roles.TRAINED]:
        entry = models[role]
        baseline = models.get(roles.sibling(role, "baseline"))
        compared = role != roles.TEACHER and roles.kind_of(role) != "baseline" and baseline is not None
        if role == roles.TEACHER and "baseline" in models:  # one student: the teacher against its baseline, too
            baseline, compared = models["baseline"], True
        rows.append(
            [
                roles.label(role),
                f"{entry.test_accuracy:.2%}",
                _points(entry.test_accuracy - baseline.test_accuracy) if compared else "—",
                f"{entry.test_correct - baseline.test_correct:+d}" if compared else "—",
                format_count(entry.parameters),
                f"{entry.onnx_bytes / 1e6:.2f}",
                str(entry.details.get("best_epoch", "—")),
                _train_time(entry.details.get("train_seconds"), entry.details.get("reused", False)),
            ]
        )
    students = [models[r].architecture for r in roles.ordered(models) if roles.kind_of(r) == "baseline"]
    return build_table(
        f"kdc compress: {manifest.run} ({manifest.dataset.name}, {n_test} test images)\n"
        f"teacher {models[roles.TEACHER].architecture}, {'students' if len(students) == 1 else 'student architectures'} "
        f"{', '.join(students)}",
        SUMMARY_HEADERS,
        rows,
        caption="Δ: change vs the baseline (the same student trained without distillation), in points and test images",
    )


def verdict_lines(comparisons: dict[str, Any], attribution: str | dict[str, str] | None) -> list[str]:
    """The noise verdicts of a run in words: distilled vs baseline, vs the label-smoothing control, and what they mean.

    attribution: the run's one line, or (several students) one line per student architecture.
    """
    lines = []
    for key, value in comparisons.items():
        model, _, reference = key.partition("_vs_")
        lines.append(f"{roles.label(model)} vs {roles.label(reference)}: {value['words']}")
    if isinstance(attribution, dict):
        return lines + [f"so, for {architecture}: {words}" for architecture, words in attribution.items()]
    return lines + ([f"so: {attribution}"] if attribution else [])


def _ms(speed: dict[str, Any], key: str = "p50_ms") -> str:
    return f"{speed['batch1'][key]:.2f}" if "batch1" in speed else "n/a"


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "—"


def accuracy_rows(result: dict[str, Any]) -> list[list[str]]:
    """Per model: accuracy and size, with the change and ratio vs the teacher."""
    rows = []
    for role, model in result["models"].items():
        ratios, is_teacher = model["ratios_vs_teacher"], role == "teacher"
        rows.append(
            [
                roles.label(role),
                f"{model['accuracy']['accuracy']:.2%}",
                "—" if is_teacher else f"{ratios['accuracy_change_points']:+.1f}",
                format_count(model["parameters"]),
                f"{model['file_mb']:.2f}",
                "—" if is_teacher else _x(ratios.get("smaller_x")),
                f"{model['macs'] / 1e6:.1f}",
                _pareto(model.get("pareto")),
            ]
        )
    return rows


def _pareto(marks: dict[str, bool] | None) -> str:
    """Which frontiers a model is on: "ms" (accuracy vs latency), "MB" (accuracy vs size)."""
    if not marks:
        return "—"
    return " + ".join(label for key, label in (("latency", "ms"), ("size", "MB")) if marks.get(key)) or "·"


def speed_rows(result: dict[str, Any]) -> list[list[str]]:
    """Per model: CPU latency percentiles and throughput, GPU latency, speed-ups vs the teacher."""
    rows = []
    for role, model in result["models"].items():
        ratios, is_teacher, cpu = model["ratios_vs_teacher"], role == "teacher", model["cpu"]
        rows.append(
            [
                roles.label(role),
                _ms(cpu),
                _ms(cpu, "p90_ms"),
                _ms(cpu, "p99_ms"),
                f"{cpu['throughput_images_per_s']:.0f}",
                "—" if is_teacher else _x(ratios.get("cpu_faster_x")),
                _ms(model["gpu"]),
                "—" if is_teacher or "gpu_faster_x" not in ratios else _x(ratios["gpu_faster_x"]),
            ]
        )
    return rows


ACCURACY_HEADERS = ["model", "test acc", "Δ pts vs teacher", "params", "MB", "x smaller", "MMACs/img", "frontier"]
SPEED_HEADERS = ["model", "CPU p50 ms", "p90 ms", "p99 ms", "CPU img/s", "CPU x faster", "GPU p50 ms", "GPU x faster"]


def benchmark_context(result: dict[str, Any]) -> list[str]:
    """Lines that say where and how the numbers were measured, and what to doubt."""
    m, s = result["machine"], result["settings"]
    lines = [
        f"CPU: {m['cpu']}, {m['cores']} cores; onnxruntime CPUExecutionProvider, {s['threads']} thread(s); "
        f"latency at batch 1, throughput at batch {s['throughput_batch']}",
        "GPU: " + (result["gpu"]["reason"] if result["gpu"]["available"] else f"not available ({result['gpu']['reason']})"),
    ]
    if m["busy"]:
        lines.append(
            f"WARNING: the machine was busy (other processes used {_share(m['cpu_busy_fraction'])} of the CPU before "
            f"and {_share(m['cpu_busy_fraction_after'])} after timing; load average {m['load_average_1m']} on "
            f"{m['cores']} cores): latencies are inflated, rerun on an idle machine"
        )
    for role, model in result["models"].items():
        acc = model["accuracy"]
        if not acc["agrees_with_manifest"]:
            lines.append(
                f"WARNING: {role}: the ONNX file gets {acc['correct']} test images right, compress recorded "
                f"{acc['recorded_correct']}"
            )
    lines.append(
        "frontier: the models no other beats on both accuracy and CPU latency (ms) or accuracy and file size (MB); "
        "· on neither"
    )
    for words in result.get("not_faster_than_fp32", {}).values():
        lines.append(f"WARNING: {words}: never recommended here" + (" (FP16 is meant for GPUs)" if "fp16" in words else ""))
    lines += verdict_lines(result.get("comparisons", {}), result.get("attribution"))
    verdicts = result.get("int8_verdicts", {"int8": result.get("int8_verdict")})  # one, in results written before
    for role, verdict in verdicts.items():
        if verdict:
            whose = f"{roles.label(role)}: " if roles.student_of(role) else ""
            lines.append(("" if verdict["faster"] else "WARNING: ") + whose + verdict["words"] + " (CPU, as timed above)")
    agreeing = [r for r, m in result["models"].items() if m["accuracy"]["agrees_with_manifest"]]
    if agreeing:
        lines.append(f"Accuracy from the ONNX files agrees with what compress recorded for: {', '.join(agreeing)}")
    return lines


def build_table(title: str, headers: list[str], rows: list[list[Any]], caption: str | None = None) -> Table:
    """First column left-aligned, the figures right-aligned, nothing wrapped.

    Every string is shown as it is, never read as Rich markup: class names come from folder names, and
    `[link=...]` in one must not become a live hyperlink. Styled cells are passed as rich Text.
    """
    table = Table(title=Text(title), caption=None if caption is None else Text(caption))
    for i, header in enumerate(headers):
        table.add_column(Text(header), justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(cell if isinstance(cell, Text) else Text(str(cell)) for cell in row))
    return table


def _share(value: float | None) -> str:
    return "?" if value is None else f"{value:.0%}"


def benchmark_tables(result: dict[str, Any]) -> list[Table]:
    """What a person reads first: accuracy and size, then speed, then per-class figures."""
    head = f"kdc benchmark: {result['run']} ({result['dataset']}, {result['test_images']} test images)"
    s = result["settings"]
    tables = [
        build_table(f"{head}\naccuracy and size (onnxruntime on the test split)", ACCURACY_HEADERS, accuracy_rows(result)),
        build_table(
            f"speed: batch 1 latency, throughput at batch {s['throughput_batch']}, {s['threads']} CPU thread(s)",
            SPEED_HEADERS,
            speed_rows(result),
        ),
    ]
    names = list(result["models"])
    if len(names) > WIDE_MODELS:  # several students: a row per model, F1 alone, so the table still fits a terminal
        rows = [[roles.label(r)] + [f"{result['models'][r]['accuracy']['per_class'][c]['f1']:.2f}" for c in result["classes"]] for r in names]
        tables.append(build_table("per class: F1", ["model"] + list(result["classes"]), rows))
        return tables
    rows = []
    for name in result["classes"]:
        rows.append([name] + [_precision_recall_f1(result["models"][r]["accuracy"]["per_class"][name]) for r in names])
    if len(result["classes"]) == 2:
        for key, label in (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("roc_auc", "ROC-AUC")):
            rows.append([label] + [_fraction(result["models"][r]["accuracy"].get(key)) for r in names])
    tables.append(build_table("per class: precision / recall / F1", ["class"] + [roles.label(r) for r in names], rows))
    return tables


WIDE_MODELS = 6  # more models than this: the per-class table shows F1 alone, a row per model


def _precision_recall_f1(per_class: dict[str, float]) -> str:
    return f"{per_class['precision']:.2f} / {per_class['recall']:.2f} / {per_class['f1']:.2f}"


def _fraction(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table as lines: header, rule, one line per row."""
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def benchmark_markdown(result: dict[str, Any], command: str) -> str:
    """The same figures as a Markdown report, with the command that produced them."""
    lines = [f"# kdc benchmark: {result['run']}", "", f"Command: `{command}`", ""]
    if result.get("recommendation"):
        lines += [f"**{result['recommendation']['words']}**", ""]
    lines += [f"- {line}" for line in benchmark_context(result)]
    for headers, rows in ((ACCURACY_HEADERS, accuracy_rows(result)), (SPEED_HEADERS, speed_rows(result))):
        lines += ["", *markdown_table(headers, rows)]
    lines += ["", "## Confusion matrices (rows: true class, columns: predicted)", ""]
    for role, model in result["models"].items():
        lines += [f"**{roles.label(role)}**", "", "| | " + " | ".join(result["classes"]) + " |"]
        lines += ["|" + " --- |" * (len(result["classes"]) + 1)]
        for name, row in zip(result["classes"], model["accuracy"]["confusion_matrix"]):
            lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
        lines.append("")
    return "\n".join(lines)


def benchmark_plot(result: dict[str, Any], path: Any) -> None:
    """Accuracy vs CPU latency, one labelled point per model, the latency frontier drawn through its points; PNG.

    Up to WIDE_MODELS models each marker carries its label (kept apart by label_offsets); with more (several
    students) each carries a number, the labels are listed beside the plot, and each student has its colour.
    """
    plt = pyplot()
    models = result["models"]
    numbered = len(models) > WIDE_MODELS
    fig, ax = plt.subplots(figsize=(9.6 if numbered else 6.4, 4.2), dpi=120)
    xs = {role: m["cpu"]["batch1"]["p50_ms"] for role, m in models.items()}
    ys = {role: 100 * m["accuracy"]["accuracy"] for role, m in models.items()}
    students = list(dict.fromkeys(roles.student_of(r) for r in models if r != roles.TEACHER))
    colour = {r: "C0" if r == roles.TEACHER or not numbered else f"C{1 + students.index(roles.student_of(r)) % 9}" for r in models}
    for role, m in models.items():
        on = m.get("pareto", {}).get("latency", False)
        c = colour[role]
        ax.scatter([xs[role]], [ys[role]], s=40 + 12 * m["file_mb"], facecolors=c if on else "none", edgecolors=c, zorder=3)
    front = sorted((r for r, m in models.items() if m.get("pareto", {}).get("latency")), key=lambda r: xs[r])
    if len(front) > 1:
        ax.plot([xs[r] for r in front], [ys[r] for r in front], color="C0", alpha=0.5, linestyle="--", zorder=2)
    if numbered:
        legend = []
        numbers = {role: number for number, role in enumerate(models, 1)}
        for role, offset in label_offsets(xs, ys, width=0.05, height=0.05, row=9).items():
            ax.annotate(str(numbers[role]), (xs[role], ys[role]), textcoords="offset points", xytext=offset, fontsize=7, color=colour[role])
        for role, number in numbers.items():
            legend.append(f"{number:>2}  {roles.label(role)}, {models[role]['file_mb']:.1f} MB")
        fig.text(0.64, 0.92, "\n".join(legend), fontsize=7.5, family="monospace", va="top")
        fig.subplots_adjust(left=0.08, right=0.6, bottom=0.13, top=0.9)
    else:
        for role, offset in label_offsets(xs, ys).items():
            text = f"{roles.label(role)}\n{models[role]['file_mb']:.1f} MB"
            ax.annotate(text, (xs[role], ys[role]), textcoords="offset points", xytext=offset, fontsize=8,
                        arrowprops={"arrowstyle": "-", "alpha": 0.4, "lw": 0.6})  # fmt: skip
    ax.set_xlabel(f"CPU latency, batch 1, p50 (ms, {result['settings']['threads']} thread)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{result['run']}: accuracy vs latency (filled, dashed: the frontier; size ~ file MB)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.margins(0.25 if not numbered else 0.1)
    if not numbered:
        fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


LABEL_HEIGHT = 24  # points: a two-line label at 8 pt, with a gap (about 0.15 of the data's height in this figure)


def label_offsets(
    xs: dict[str, float], ys: dict[str, float], width: float = 0.22, height: float = 0.15, row: int = LABEL_HEIGHT
) -> dict[str, tuple[int, int]]:
    """Label offsets (points) that keep labels of nearby markers apart: a marker whose label would land on an
    earlier one's (within `width` and `height` of the plot's range) gets its label moved down a row."""
    span_x = (max(xs.values()) - min(xs.values())) or 1.0
    span_y = (max(ys.values()) - min(ys.values())) or 1.0
    placed: list[tuple[float, float, int]] = []
    offsets = {}
    for role in sorted(xs, key=lambda r: (-ys[r], xs[r])):
        x, y = (xs[role] - min(xs.values())) / span_x, (ys[role] - min(ys.values())) / span_y
        down = 0
        while any(abs(x - px) < width and abs((y - down * height) - (py - prow * height)) < height for px, py, prow in placed):
            down += 1
        placed.append((x, y, down))
        offsets[role] = (6, 4 - down * row)
    return offsets


def quantize_lines(entry: Any, fp16: Any = None) -> list[str]:
    """What kdc quantize prints: each INT8 candidate, the one kept, the INT8 verdict, the FP16 file (Rich markup)."""
    q = entry.details["quantization"]
    m = q.get("machine")
    lines = [escape(f"INT8 candidates, timed in turn on {m['cpu']} ({', '.join(m['isa']) or 'no VNNI/AMX'}):")] if m else []
    lines += [f"  {c['format']:<30} accuracy {c['accuracy']:.2%}  p50 {c['p50_ms']:.2f} ms" for c in q["candidates"]]
    lines.append(
        f"Kept {q['chosen']}: {entry.onnx} ({entry.onnx_bytes / 1e6:.2f} MB), accuracy {entry.test_accuracy:.2%} "
        f"(FP32 {q['fp32_accuracy']:.2%}, p50 {q['fp32_p50_ms']:.2f} ms)"
    )
    style = "green" if q["verdict"]["faster"] else "bold yellow"
    lines.append(f"[{style}]{escape(q['verdict']['words'])}[/]")
    if fp16 is not None:
        f = fp16.details["fp16"]
        lines.append(
            f"FP16 for GPU targets: {fp16.onnx} ({fp16.onnx_bytes / 1e6:.2f} MB), accuracy {fp16.test_accuracy:.2%}, "
            f"top-1 agrees with FP32 on {f['top1_agreement']:.1%} of test images (checked on CPU; timed by kdc benchmark on CUDA)"
        )
    return lines


def prediction_output(output: dict[str, Any]) -> list[Any]:
    """What kdc predict prints: a table per classified image, then the score against class folders, if any."""
    shown: list[Any] = []
    for result in output["results"]:
        if "error" in result:
            continue
        table = Table(title=escape(result["file"]), title_justify="left")
        table.add_column("class")
        table.add_column("probability", justify="right")
        for p in result["predictions"]:
            table.add_row(escape(p["class"]), f"{p['probability']:.2%}")
        shown.append(table)
    if "scores" in output:
        scores = output["scores"]
        line = f"Scored against the class folders: {scores['correct']} of {scores['images']} correct ({scores['accuracy']:.1%})"
        if scores.get("sensitivity") is not None and scores.get("specificity") is not None:
            line += f", sensitivity {scores['sensitivity']:.3f}, specificity {scores['specificity']:.3f}"
        shown.append(line)
    return shown
