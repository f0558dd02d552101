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


def summary_table(manifest: Any) -> FittedTable:
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
        optional=("best ep", "Δ imgs", "train", "params"),
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


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "—"


def accuracy_rows(result: Any) -> list[list[str]]:
    """Per model file: accuracy on onnxruntime-cpu and size, with the change and ratio vs the teacher."""
    from kdcompress.deploy.benchmark import ratios_vs_teacher

    rows = []
    for role, model in result.models.items():
        ratios, is_teacher = ratios_vs_teacher(result, model.reference), role == roles.TEACHER
        rows.append(
            [
                roles.label(role),
                model.format,
                f"{model.reference.accuracy:.2%}",
                "—" if is_teacher else f"{ratios['accuracy_change_points']:+.1f}",
                format_count(model.parameters),
                f"{model.file_mb:.2f}",
                "—" if is_teacher else _x(ratios.get("smaller_x")),
                f"{model.macs / 1e6:.1f}",
            ]
        )
    return rows


def _pareto(marks: dict[str, bool] | None) -> str:
    """Which frontiers a point is on: "ms" (accuracy vs latency), "MB" (accuracy vs size)."""
    if not marks:
        return "—"
    return " + ".join(label for key, label in (("latency", "ms"), ("size", "MB")) if marks.get(key)) or "·"


def point_rows(result: Any) -> list[list[str]]:
    """Per point (file, target, precision): its own accuracy, agreement with FP32 on onnxruntime-cpu, latency,
    throughput, speed-up vs the teacher on the same target, frontier marks."""
    from kdcompress.deploy.benchmark import ratios_vs_teacher

    rows = []
    for role, model in result.models.items():
        for point in model.points:
            ratios = ratios_vs_teacher(result, point)
            rows.append(
                [
                    roles.label(role),
                    point.target,
                    point.precision,
                    f"{point.accuracy:.2%}",
                    f"{point.agreement:.1%}",
                    f"{point.batch1['p50_ms']:.2f}",
                    f"{point.batch1['p99_ms']:.2f}",
                    f"{point.images_per_s:.0f}",
                    "—" if role == roles.TEACHER else _x(ratios.get("faster_x")),
                    _pareto(point.pareto),
                    *_footprint(point.footprint),
                ]
            )
    return rows


def _footprint(measured: dict[str, float] | None) -> list[str]:
    """load ms, first inference ms, RAM MB of a point ('—' where not measured: --quick, a CUDA point)."""
    if not measured:
        return ["—"] * 3
    return [f"{measured['load_ms']:.0f}", f"{measured['first_ms']:.1f}", f"{measured['peak_mb']:.0f}"]


ACCURACY_HEADERS = ["model", "format", "test acc", "Δ pts vs teacher", "params", "MB", "x smaller", "MMACs/img"]
POINT_HEADERS = ["model", "target", "precision", "test acc", "agrees", "p50 ms", "p99 ms", "img/s", "x faster", "frontier",
                 "load ms", "1st ms", "RAM MB"]  # fmt: skip


def benchmark_context(result: Any) -> list[str]:
    """Lines that say where and how the numbers were measured, and what to doubt."""
    m, s = result.machine, result.settings
    runtimes = ", ".join(f"{name} {version}" for name, version in m.get("runtimes", {}).items())
    used = [name for name, why in result.targets.items() if not why]
    lines = [
        f"CPU: {m['cpu']}, {m['cores']} cores, {', '.join(m['isa']) or 'no VNNI/AMX/bf16'}; {s['threads']} thread(s); "
        f"latency at batch 1, throughput at batch {s['throughput_batch']}; {runtimes}",
        f"targets: {', '.join(used)}" + "".join(f"; {name} not used: {why}" for name, why in result.targets.items() if why),
        "agrees: share of test images whose top-1 class is the FP32 file's on onnxruntime-cpu; every accuracy is the "
        "point's own, from its own predictions",
    ]
    if any(p.footprint for p in result.points()):
        lines.append(
            "load ms: session creation (OpenVINO: read and compile); 1st ms: the first inference at batch 1; RAM MB: the "
            "peak resident memory the loaded model added; each point in a process of its own, after the timings"
        )
    if m["busy"]:
        lines.append(
            f"WARNING: the machine was busy (other processes used {_share(m['cpu_busy_fraction'])} of the CPU before "
            f"and {_share(m['cpu_busy_fraction_after'])} after timing; load average {m['load_average_1m']} on "
            f"{m['cores']} cores): latencies are inflated, rerun on an idle machine"
        )
    lines += [f"note: {note}" for note in result.notes]
    for role, model in result.models.items():
        if not model.agrees_with_manifest:
            lines.append(
                f"WARNING: {role}: the ONNX file gets {model.reference.correct} test images right, compress recorded "
                f"{model.recorded_correct}"
            )
    lines.append(
        "frontier: the points no other beats on both accuracy and latency (ms) or accuracy and file size (MB); "
        "· on neither"
    )
    lines += verdict_lines(result.comparisons, result.attribution)
    for role, verdict in result.int8_verdicts.items():
        whose = f"{roles.label(role)}: "
        lines.append(("" if verdict["faster"] else "WARNING: ") + whose + verdict["words"] + " (onnxruntime-cpu, as timed above)")
    from kdcompress.deploy.profile import profile_words

    for role, profiles in result.profiles.items():  # profiled apart from the timings, after them
        for profile in profiles:
            lines += profile_words(roles.label(role), profile)
    agreeing = [r for r, model in result.models.items() if model.agrees_with_manifest]
    if agreeing:
        lines.append(f"Accuracy from the ONNX files agrees with what compress recorded for: {', '.join(agreeing)}")
    return lines


class FittedTable:
    """A table that fits the width it is printed at without cutting a number: when its columns' widest cells do not
    fit, the optional columns (named in `optional`, least needed first) are left out, and the text of the first column
    folds. `kdc benchmark --wide` (optional=()) keeps every column."""

    def __init__(self, title: str, headers: list[str], rows: list[list[Any]], caption: str | None = None,
                 optional: tuple[str, ...] = (), narrow: "FittedTable | None" = None) -> None:  # fmt: skip
        self.title, self.headers, self.rows, self.caption, self.optional = title, headers, rows, caption, optional
        self.narrow = narrow  # the shorter table shown instead where even the required columns do not fit

    def need(self, width: int) -> int:
        """Characters the columns shown at this width take at least."""
        return sum(self._need(i) + 3 for i in self.columns_for(width)) + 1

    def _need(self, index: int) -> int:
        cells = [str(row[index]) for row in self.rows]
        longest_word = max((len(w) for w in self.headers[index].split()), default=1)
        return max([longest_word, *(len(c) for c in cells)]) if index else max(longest_word, 12)

    def fitted(self, width: int) -> "FittedTable":
        """This table, or its narrow form where this one cannot fit the width."""
        return self.narrow.fitted(width) if self.narrow is not None and self.need(width) > width else self

    def columns_for(self, width: int) -> list[int]:
        """The indices of the columns shown at this width."""
        shown = list(range(len(self.headers)))
        for name in self.optional:
            if sum(self._need(i) + 3 for i in shown) + 1 <= width:
                break
            if name in self.headers:
                shown.remove(self.headers.index(name))
        return shown

    def table(self, width: int) -> Table:
        shown = self.columns_for(width)
        left_out = [self.headers[i] for i in range(len(self.headers)) if i not in shown]
        caption = self.caption
        if left_out:
            caption = ((caption + "\n") if caption else "") + f"(left out at {width} columns: {', '.join(left_out)}; --wide, or the JSON, has them)"
        table = Table(title=Text(self.title), caption=None if caption is None else Text(caption))
        for i in shown:
            first = i == 0
            table.add_column(Text(self.headers[i]), justify="left" if first else "right", no_wrap=not first,
                             overflow="fold" if first else "ellipsis",
                             min_width=None if first else max(len(str(r[i])) for r in self.rows) if self.rows else None)  # fmt: skip
        for row in self.rows:
            table.add_row(*(row[i] if isinstance(row[i], Text) else Text(str(row[i])) for i in shown))
        return table

    def __rich_console__(self, console: Any, options: Any) -> Any:
        yield self.fitted(options.max_width).table(options.max_width)


def build_table(
    title: str, headers: list[str], rows: list[list[Any]], caption: str | None = None, optional: tuple[str, ...] = ()
) -> FittedTable:
    """First column left-aligned (its text folds), the figures right-aligned and never cut; optional columns are left
    out where the terminal is too narrow for them all.

    Every string is shown as it is, never read as Rich markup: class names come from folder names, and
    `[link=...]` in one must not become a live hyperlink. Styled cells are passed as rich Text.
    """
    return FittedTable(title, headers, rows, caption, optional)


def _share(value: float | None) -> str:
    return "?" if value is None else f"{value:.0%}"


ACCURACY_OPTIONAL = ("MMACs/img", "params", "format", "x smaller")  # left out first where the terminal is narrow
POINT_OPTIONAL = ("p99 ms", "1st ms", "load ms", "agrees", "img/s", "frontier", "RAM MB", "precision")


def benchmark_tables(result: Any, wide: bool = False) -> list[FittedTable]:
    """What a person reads first: accuracy and size, then every point's speed, then per-class figures."""
    head = f"kdc benchmark: {result.run} ({result.dataset}, {result.test_images} test images)"
    s = result.settings
    tables = [
        build_table(f"{head}\naccuracy and size (onnxruntime-cpu on the test split)", ACCURACY_HEADERS, accuracy_rows(result),
                    optional=() if wide else ACCURACY_OPTIONAL),  # fmt: skip
        build_table(
            f"every point (file x target x precision): batch 1 latency, throughput at batch {s['throughput_batch']}, "
            f"{s['threads']} thread(s)",
            POINT_HEADERS,
            point_rows(result),
            optional=() if wide else POINT_OPTIONAL,
        ),
    ]
    names = list(result.models)
    per_class = {r: result.models[r].reference.metrics for r in names}
    if len(names) > WIDE_MODELS:  # several students: a row per model, F1 alone, so the table still fits a terminal
        rows = [[roles.label(r)] + [f"{per_class[r]['per_class'][c]['f1']:.2f}" for c in result.classes] for r in names]
        tables.append(build_table("per class: F1", ["model"] + list(result.classes), rows))
        return tables
    rows = []
    for name in result.classes:
        rows.append([name] + [_precision_recall_f1(per_class[r]["per_class"][name]) for r in names])
    if len(result.classes) == 2:
        for key, label in (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("roc_auc", "ROC-AUC")):
            rows.append([label] + [_fraction(per_class[r].get(key)) for r in names])
    f1_rows = [[roles.label(r)] + [f"{per_class[r]['per_class'][c]['f1']:.2f}" for c in result.classes] for r in names]
    narrow = build_table("per class: F1", ["model"] + list(result.classes), f1_rows)
    table = build_table("per class: precision / recall / F1", ["class"] + [roles.label(r) for r in names], rows)
    table.narrow = None if wide else narrow
    tables.append(table)
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
    """matplotlib.pyplot on the file-only Agg backend (no display needed), imported on first use.

    matplotlib keeps its font cache and config under HOME (~/.cache/matplotlib, ~/.config/matplotlib); unless the user
    points MPLCONFIGDIR somewhere, kdc gives it a temporary folder of its own, removed at exit, so that nothing is
    written under HOME (building the font cache there costs about 0.2 s a command)."""
    import os
    import sys

    if "matplotlib" not in sys.modules and not os.environ.get("MPLCONFIGDIR", "").strip():
        import atexit
        import shutil
        import tempfile

        folder = tempfile.mkdtemp(prefix="kdc-matplotlib-")
        atexit.register(shutil.rmtree, folder, True)
        os.environ["MPLCONFIGDIR"] = folder
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def benchmark_markdown(result: Any) -> str:
    """The same figures as a Markdown report, with the command that produced them and, for the recommended point,
    the lines of Python that load and run it."""
    from kdcompress.deploy.targets import TARGETS

    lines = [f"# kdc benchmark: {result.run}", "", f"Command: `{result.command}`", ""]
    chosen = result.recommendation
    if chosen:
        lines += [f"**{chosen['words']}**", ""]
        if chosen.get("target"):
            snippet = TARGETS[chosen["target"]].snippet(chosen["file"], result.settings["threads"], chosen["precision"])
            lines += [f"Run it on {chosen['target']} (C, H, W: the run's channels and image size):", "", "```python", snippet, "```", ""]
    lines += [f"- {line}" for line in benchmark_context(result)]
    for headers, rows in ((ACCURACY_HEADERS, accuracy_rows(result)), (POINT_HEADERS, point_rows(result))):
        lines += ["", *markdown_table(headers, rows)]
    for role, profiles in result.profiles.items():
        for profile in profiles:
            shares = ", ".join(f"{precision} {share:.0%}" for precision, share in profile["by_precision"].items())
            lines += ["", f"## Where {roles.label(role)}'s time goes ({profile['target']} profiler, {profile['runs']} runs at batch 1)",
                      "", f"{profile['kernels_ms']:.3f} ms in kernels per image; by precision: {shares}.", ""]  # fmt: skip
            rows = [[layer["name"], layer["op"], layer["precision"], f"{layer['ms']:.3f}", f"{layer['share']:.0%}"] for layer in profile["layers"]]
            lines += markdown_table(["layer", "operator", "ran in", "ms", "share"], rows)
            if profile["float_compute"] and "int8" in profile["by_precision"]:
                lines += ["", f"Compute layers that stayed in float: {', '.join(profile['float_compute'])}."]
    lines += ["", "## Confusion matrices on onnxruntime-cpu (rows: true class, columns: predicted)", ""]
    for role, model in result.models.items():
        lines += [f"**{roles.label(role)}**", "", "| | " + " | ".join(result.classes) + " |"]
        lines += ["|" + " --- |" * (len(result.classes) + 1)]
        for name, row in zip(result.classes, model.reference.metrics["confusion_matrix"]):
            lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
        lines.append("")
    return "\n".join(lines)


MARKERS = {"onnxruntime-cpu": "o", "openvino-cpu": "s", "onnxruntime-cuda": "^"}  # one marker shape per target


def benchmark_plot(result: Any, path: Any) -> None:
    """Accuracy vs latency (log axis), one numbered marker per point, a shape per target, a colour per student; the
    latency frontier dashed through its points, the recommended point ringed; the labels listed beside the plot. PNG."""
    plt = pyplot()
    points = [(role, p) for role, model in result.models.items() for p in model.points]
    fig, ax = plt.subplots(figsize=(11.5, 4.8 if len(points) <= 24 else 6.4), dpi=120)
    students = list(dict.fromkeys(roles.student_of(r) for r in result.models if not roles.is_teacher(r)))
    xs = {p.key: p.p50_ms for _, p in points}
    ys = {p.key: 100 * p.accuracy for _, p in points}
    legend = []
    for number, (role, p) in enumerate(points, 1):
        colour = "C0" if roles.is_teacher(role) else f"C{1 + students.index(roles.student_of(role)) % 9}"
        on = p.pareto.get("latency", False)
        ax.scatter([xs[p.key]], [ys[p.key]], s=30 + 10 * result.models[role].file_mb, marker=MARKERS.get(p.target, "D"),
                   facecolors=colour if on else "none", edgecolors=colour, zorder=3)  # fmt: skip
        ax.annotate(str(number), (xs[p.key], ys[p.key]), textcoords="offset points", xytext=(5, 3), fontsize=7, color=colour)
        legend.append(f"{number:>2}  {roles.label(role)}, {p.target.replace('onnxruntime', 'ort')} {p.precision}")
    front = sorted((p.key for _, p in points if p.pareto.get("latency")), key=lambda k: xs[k])
    if len(front) > 1:
        ax.plot([xs[k] for k in front], [ys[k] for k in front], color="C0", alpha=0.5, linestyle="--", zorder=2, label="frontier (ms)")
    chosen = (result.recommendation or {}).get("point")
    if chosen in xs:
        ax.scatter([xs[chosen]], [ys[chosen]], s=260, facecolors="none", edgecolors="green", linewidths=2, zorder=4, label="shipped")
    budget = (result.recommendation or {}).get("budget", {})
    if budget.get("max_ms"):
        ax.axvline(budget["max_ms"], color="tab:red", linestyle=":", lw=1, label=f"budget {budget['max_ms']:g} ms")
    for target, marker in MARKERS.items():
        if any(p.target == target for _, p in points):
            ax.scatter([], [], marker=marker, facecolors="none", edgecolors="grey", label=target)
    ax.set_xscale("log")
    ax.set_xlabel(f"latency, batch 1, p50 (ms, log scale, {result.settings['threads']} thread)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{result.run}: accuracy vs latency (filled: on the frontier; size ~ file MB)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    fig.text(0.6, 0.92, "\n".join(legend[:48]), fontsize=6 if len(legend) > 24 else 7, family="monospace", va="top")
    fig.subplots_adjust(left=0.07, right=0.58, bottom=0.12, top=0.9)
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
    where = {"validation_set": "validation", "calibration_set": "calibration images"}.get(q.get("chosen_on", ""), "test")
    lines += [f"  {c['format']:<30} {where} accuracy {c.get('choice_accuracy', c.get('accuracy', 0)):.2%}  p50 {c['p50_ms']:.2f} ms" for c in q["candidates"]]
    lines.append(
        f"Kept {q['chosen']} (chosen on {where}): {entry.onnx} ({entry.onnx_bytes / 1e6:.2f} MB), test accuracy "
        f"{entry.test_accuracy:.2%} (FP32 {q['fp32_accuracy']:.2%}, p50 {q['fp32_p50_ms']:.2f} ms)"
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


def prediction_output(output: dict[str, Any]) -> list[str]:
    """What kdc predict prints: which run and model, one line per classified image, then a summary (plain text)."""
    model = f"{output.get('model_name', '')} ({output['model']})" if output.get("model_name") else output["model"]
    lines = [
        f"run {output['run']} ({output.get('dataset', '?')}: {', '.join(output['classes'][:6])}"
        f"{', ...' if len(output['classes']) > 6 else ''}); model {model}, chosen by {output.get('chosen_by', '--model')}; "
        f"{output.get('runtime', 'onnxruntime-cpu')} at {output.get('precision', 'native')} precision"
    ]
    counts: dict[str, int] = {}
    for result in output["results"]:
        if "error" in result:
            continue
        top = result["predictions"]
        counts[top[0]["class"]] = counts.get(top[0]["class"], 0) + 1
        shown = ", ".join(f"{p['class']} {p['probability']:.1%}" for p in top)
        label = f" (folder says {result['label']})" if "label" in result else ""
        lines.append(f"{result['file']}: {shown}{label}")
    classified = sum(counts.values())
    if classified:
        spread = ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        lines.append(f"{classified} image(s) classified: {spread}")
    if "scores" in output:
        scores = output["scores"]
        line = f"Scored against the class folders: {scores['correct']} of {scores['images']} correct ({scores['accuracy']:.1%})"
        if scores.get("sensitivity") is not None and scores.get("specificity") is not None:
            line += f", sensitivity {scores['sensitivity']:.3f}, specificity {scores['specificity']:.3f}"
        lines.append(line)
    return lines + [f"warning: {w}" for w in output.get("warnings", [])]
