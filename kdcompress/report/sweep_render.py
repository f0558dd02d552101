"""What a person reads from a sweep: the table, its Markdown twin, a T x alpha heatmap and an objectives chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from rich.text import Text

from kdcompress.core.stats import unlabeled_words
from kdcompress.report.table import build_table, markdown_table, pyplot

SWEEP_HEADERS = ["student", "test acc (mean ± std)", "Δ vs baseline", "95% interval", "seeds +/-", "verdict", "vs label smoothing"]
AUC_HEADER = "ROC-AUC (mean ± std)"  # after the accuracy, for two-class data
VERDICT_STYLE = {
    "better": Text("more than noise: better", style="green"),
    "worse": Text("more than noise: worse", style="red"),
    "noise": Text("within noise"),
}
PLAIN = {"better": "more than noise: better", "worse": "more than noise: worse", "noise": "within noise"}
SHORT = {"better": "better", "worse": "worse", "noise": "noise"}


def _pct(mean: float, std: float) -> str:
    return f"{mean * 100:.1f} ± {std * 100:.1f}"


def _with_auc(results: dict[str, Any]) -> bool:
    """Whether the sweep holds ROC-AUCs (two classes): every row then has one."""
    return "roc_auc_mean" in results["baseline"]


def sweep_headers(results: dict[str, Any]) -> list[str]:
    return [*SWEEP_HEADERS[:2], AUC_HEADER, *SWEEP_HEADERS[2:]] if _with_auc(results) else SWEEP_HEADERS


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a[k] == b[k] for k in ("temperature", "alpha", "beta")) and _loss(a) == _loss(b)


def _loss(cell: dict[str, Any]) -> str:
    return cell.get("kd_loss", "kl")  # sweeps made before --kd-loss distilled with KL


def cell_name(cell: dict[str, Any], greek: bool = True) -> str:
    """'T 4, α 0.5, β 0.3' (KL), or with the loss after it: 'T 4, α 0.5, β 0.3, dist'."""
    a, b = ("α", "β") if greek else ("alpha", "beta")
    loss = "" if _loss(cell) == "kl" else f", {_loss(cell)}"
    return f"T {cell['temperature']:g}, {a} {cell['alpha']:g}, {b} {cell['beta']:g}{loss}"


def sweep_rows(results: dict[str, Any], rich: bool = True) -> list[list[str]]:
    """The baseline, the label-smoothing controls, then one row per grid point, best mean change first.

    The cell chosen on validation is marked "(val)", the best one on test "(test)". Two-class sweeps add each
    row's ROC-AUC after its accuracy.
    """
    base = results["baseline"]
    seeds = len(results["grid"]["seeds"])
    style = VERDICT_STYLE if rich else PLAIN
    auc = _with_auc(results)

    def score(row: dict[str, Any]) -> list[str]:
        return [_pct(row["mean"], row["std"]), *([f"{row['roc_auc_mean']:.3f} ± {row['roc_auc_std']:.3f}"] if auc else [])]

    def changes(row: dict[str, Any]) -> list[str]:
        return [
            *score(row),
            f"{row['delta']:+.1f} ± {row['delta_std']:.1f}",
            f"[{row['ci_low']:+.1f}, {row['ci_high']:+.1f}]",
            f"{row['better_seeds']}/{row['worse_seeds']} of {seeds}",
            style[row["verdict"]],
        ]

    rows = [["baseline", *score(base), "", "", "", "", ""]]
    for control in results.get("controls", []):
        smoothing = (control.get("matched") or {}).get("smoothing", 0.0)
        where = f"T {control['temperature']:g}, α {control['alpha']:g}"
        rows.append([f"label smoothing {smoothing:.2f} ({where})", *changes(control), "—"])
    for cell in sorted(results["cells"], key=lambda c: -c["delta"]):
        marks = [m for m, key in (("val", "chosen"), ("test", "best_on_test")) if key in results and _same(cell, results[key])]
        name = cell_name(cell) + "".join(f" ({m})" for m in marks)
        versus = cell.get("vs_control")
        rows.append([name, *changes(cell), f"{versus['delta']:+.1f}, {SHORT[versus['verdict']]}" if versus else "—"])
    return rows


def choice_lines(results: dict[str, Any]) -> list[str]:
    """The cell chosen on validation with its test result and verdicts, then the best cell on test, labelled as such."""
    from kdcompress.core.stats import attribution

    if "chosen" not in results:
        return []
    lines = []
    for key, label in (("chosen", "chosen on validation (what to use)"), ("best_on_test", "best on test (chosen on test: optimistic)")):
        cell = results[key]
        if key == "best_on_test" and _same(cell, results["chosen"]):
            lines.append("best on test: the same cell")
            continue
        where = cell_name(cell, greek=False)
        versus = cell.get("vs_control")
        text = f"{label}: {where}, test {_pct(cell['mean'], cell['std'])}%: {cell['words']}"
        lines.append(text + (f"; vs label smoothing: {versus['words']}" if versus else ""))
        if key == "chosen" and versus:
            lines.append(f"so, for the cell chosen on validation: {attribution({'student_vs_baseline': cell, 'student_vs_control': versus})}")
    return lines


def sweep_context(results: dict[str, Any]) -> list[str]:
    """The lines that say what was compared and how noise was judged."""
    s, t, cost = results["settings"], results["teacher"], results["cost"]
    counts = results["dataset"]["counts"]
    teacher_auc = f", ROC-AUC {t['roc_auc']:.3f}" if "roc_auc" in t else ""
    warning = []
    if t["test_accuracy"] < results["baseline"]["mean"]:
        warning = [
            f"WARNING: the teacher ({t['test_accuracy']:.1%}) scores below the baseline students "
            f"({results['baseline']['mean']:.1%} on average): distillation can mostly pass on its mistakes"
        ]
    return warning + choice_lines(results) + [
        f"dataset {results['dataset']['name']}: {counts['train']} train / {counts['test']} test images at {s['image_size']} px; "
        f"{s['epochs']} epochs per student; seeds {', '.join(map(str, results['grid']['seeds']))}",
        f"teacher {t['architecture']}: test accuracy {t['test_accuracy']:.1%}{teacher_auc} (one teacher for the whole sweep); "
        f"students {s['student']}, each seed's distilled students start from that seed's baseline weights",
        "Δ: distilled minus baseline, accuracy points, mean ± std over seeds (paired by seed); 95% interval: paired "
        "bootstrap over test images; 'more than noise' needs the interval to exclude 0 and every seed to agree; "
        "label smoothing: the same student with CE and label smoothing of alpha x the teacher's mass off the true "
        "class at T (one control per T and alpha); vs label smoothing: distilled minus that control",
        f"cost: a distilled student took {cost['distilled_per_baseline']:.2f}x a baseline training "
        f"({cost['distilled_seconds_mean']:.0f} s vs {cost['baseline_seconds_mean']:.0f} s); the teacher's outputs for "
        f"every batch took {cost['teacher_output_seconds']:.0f} s in all, once per seed",
    ] + ([
        f"Not the same data: the distilled students also learnt the images without labels of {unlabeled_words(s['unlabeled'])} "
        "through the teacher's outputs (--unlabeled), which the baselines and the controls never saw; their epochs had more steps"
    ] if s.get("unlabeled") else [])  # fmt: skip


def sweep_table(results: dict[str, Any], student: str | None = None) -> Any:
    """The sweep as a Rich table with its context as caption (student: named in the title, for a sweep of several)."""
    title = f"kdc sweep: {results['dataset']['name']}, {len(results['cells'])} grid points x {len(results['grid']['seeds'])} seeds"
    title += f", student {student}" if student else ""
    return build_table(title, sweep_headers(results), sweep_rows(results), caption="\n".join(sweep_context(results)),
                       optional=("seeds +/-", "95% interval", AUC_HEADER))  # fmt: skip


def sweep_markdown(results: dict[str, Any], command: str) -> str:
    """The same table in Markdown, with the command that made it."""
    lines = [f"# kdc sweep: {results['dataset']['name']}", "", f"Command: `{command}`", ""]
    lines += [f"- {line}" for line in sweep_context(results)]
    lines += ["", *markdown_table(sweep_headers(results), sweep_rows(results, rich=False))]
    lines += ["", "Per grid point, in words:", ""]
    for cell in results["cells"]:
        lines.append(f"- {cell_name(cell, greek=False)}: {cell['words']}")
    return "\n".join(lines) + "\n"


def sweep_plots(results: dict[str, Any]) -> dict[str, Callable[[Path], None]]:
    """The writers of heatmap.png (change vs baseline over T x alpha, one panel per beta and KD loss) and
    objectives.png, for core.files.write_together (each draws its figure into the path it is given)."""
    return {"heatmap.png": lambda path: _heatmap(results, path), "objectives.png": lambda path: _objectives_chart(results, path)}


def _heatmap(results: dict[str, Any], path: Path) -> None:
    """Distilled minus baseline per (T, alpha), a panel per (beta, KD loss)."""
    import numpy as np

    plt = pyplot()
    grid = results["grid"]
    cells = {(c["temperature"], c["alpha"], c["beta"], _loss(c)): c for c in results["cells"]}
    panels = [(beta, loss) for loss in grid.get("kd_loss", ["kl"]) for beta in grid["beta"]]
    limit = max(1.0, max(abs(c["delta"]) for c in results["cells"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 1, 3.4), dpi=120, squeeze=False)
    for k, (ax, (beta, loss)) in enumerate(zip(axes[0], panels)):
        values = np.array([[cells[(t, a, beta, loss)]["delta"] for a in grid["alpha"]] for t in grid["T"]])
        image = ax.imshow(values, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        for i, t in enumerate(grid["T"]):
            for j, a in enumerate(grid["alpha"]):
                cell = cells[(t, a, beta, loss)]
                mark = {"better": " +", "worse": " -", "noise": ""}[cell["verdict"]]
                ax.text(j, i, f"{cell['delta']:+.1f}{mark}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(grid["alpha"])), [f"{a:g}" for a in grid["alpha"]])
        ax.set_yticks(range(len(grid["T"])), [f"{t:g}" for t in grid["T"]])
        ax.set_xlabel("alpha")
        if k == 0:
            ax.set_ylabel("T")
        ax.set_title(f"{loss}, " + ("logits only (beta 0)" if beta == 0 else f"logits + features (beta {beta:g})"), fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), label="Δ test accuracy vs baseline (pts)")
    fig.suptitle(f"{results['dataset']['name']}: distilled minus baseline, mean of {len(grid['seeds'])} seeds (+/-: more than noise)", fontsize=9)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def _objectives_chart(results: dict[str, Any], path: Path) -> None:
    """Mean ± std test accuracy per (T, alpha): no distillation / logits only / logits + features."""
    import numpy as np

    plt = pyplot()
    grid, base = results["grid"], results["baseline"]
    cells = {(c["temperature"], c["alpha"], c["beta"], _loss(c)): c for c in results["cells"]}
    pairs = [(t, a) for t in grid["T"] for a in grid["alpha"]]
    bars = [(beta, loss) for loss in grid.get("kd_loss", ["kl"]) for beta in grid["beta"]]
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(pairs) + 2), 3.8), dpi=120)
    ax.axhspan(100 * (base["mean"] - base["std"]), 100 * (base["mean"] + base["std"]), color="grey", alpha=0.25)
    ax.axhline(100 * base["mean"], color="black", lw=1, label=f"no distillation (baseline) {100 * base['mean']:.1f}%")
    x = np.arange(len(pairs))
    for k, (beta, loss) in enumerate(bars):
        means = [100 * cells[(t, a, beta, loss)]["mean"] for t, a in pairs]
        stds = [100 * cells[(t, a, beta, loss)]["std"] for t, a in pairs]
        label = f"{loss}, " + ("logits only" if beta == 0 else f"logits + features (beta {beta:g})")
        ax.bar(x + (k - (len(bars) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=label)
    ax.axhline(100 * results["teacher"]["test_accuracy"], color="tab:red", ls="--", lw=1, label="teacher")
    ax.set_xticks(x, [f"T {t:g}\nα {a:g}" for t, a in pairs], fontsize=8)
    levels = [base["mean"], results["teacher"]["test_accuracy"], *(c["mean"] for c in results["cells"])]
    ax.set_ylim(max(0, 100 * min(levels) - 5), min(100, 100 * max(levels) + 4))
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
