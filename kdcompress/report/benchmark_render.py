"""What `kdc benchmark` shows: its tables and context lines, benchmark.md and the accuracy-vs-latency plot."""
from __future__ import annotations

from typing import Any

from kdcompress.core import roles
from kdcompress.report.compress_render import verdict_lines
from kdcompress.report.table import FittedTable, build_table, format_count, markdown_table, pyplot


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
        lines.append(("" if verdict.faster else "WARNING: ") + whose + verdict.words + " (onnxruntime-cpu, as timed above)")
    from kdcompress.deploy.profile import profile_words

    for role, profiles in result.profiles.items():  # profiled apart from the timings, after them
        for profile in profiles:
            lines += profile_words(roles.label(role), profile)
    agreeing = [r for r, model in result.models.items() if model.agrees_with_manifest]
    if agreeing:
        lines.append(f"Accuracy from the ONNX files agrees with what compress recorded for: {', '.join(agreeing)}")
    return lines


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
