"""What `kdc quantize` and `kdc predict` print: the INT8 verdict lines and one line per classified image."""
from __future__ import annotations

from typing import Any

from rich.markup import escape

from kdcompress.deploy.frontier import Int8Verdict


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
    verdict = Int8Verdict.from_dict(q["verdict"])
    style = "green" if verdict.faster else "bold yellow"
    lines.append(f"[{style}]{escape(verdict.words)}[/]")
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
