"""What `kdc benchmark` measured, as types: a point is (file, target, precision); benchmark.json is their versioned form."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from kdcompress.core.errors import KdcError
from kdcompress.core.values import is_fraction, is_number, is_whole
from kdcompress.deploy.frontier import Int8Verdict

# 3: per-layer profiles, each point's load, first inference and memory; 2: points keyed by target and precision (1: fixed cpu / gpu slots)
FORMAT = "kdcompress-benchmark/3"
READABLE = (FORMAT, "kdcompress-benchmark/2")  # what from_dict reads: a /2 file is a /3 one without profiles
UNITS = {
    "latency": "milliseconds per call, batch 1",
    "throughput": "images per second",
    "file_mb": "megabytes (1e6 bytes)",
    "macs": "multiply-accumulates per image",
    "accuracy": "fraction in [0, 1]",
    "footprint": "load_ms and first_ms: milliseconds; peak_mb: resident megabytes (1e6 bytes) the point added",
}


@dataclass
class PointResult:
    """One model file run by one target at one precision: its own accuracy, agreement and speed."""

    role: str  # the model of the run: teacher, baseline, student-ARCH, int8 ...
    file: str
    target: str  # targets.TARGETS key: onnxruntime-cpu, onnxruntime-cuda, openvino-cpu
    precision: str  # what the target ran it at, read back: native (onnxruntime: the file's own types), f32, bf16
    accuracy: float  # from this point's own predictions on the whole test split
    correct: int
    agreement: float  # share of test images whose top-1 class equals the FP32 file's on onnxruntime-cpu
    batch1: dict[str, float]  # p50_ms, p90_ms, p99_ms, mean_ms, runs (batch 1)
    images_per_s: float  # throughput at the benchmark's batch
    metrics: dict[str, Any] = field(default_factory=dict)  # per class, confusion matrix; two classes: sensitivity ...
    device_batch1: dict[str, float] | None = None  # CUDA: input and output left on the device
    pareto: dict[str, bool] = field(default_factory=dict)  # on the accuracy-latency (latency) / accuracy-size (size) frontier
    footprint: dict[str, float] | None = None  # load_ms, first_ms, peak_mb: deploy.footprint, in a child process (format 3)

    @property
    def key(self) -> str:
        """'student-int8.onnx @ openvino-cpu bf16': one point of the frontier."""
        return point_key(self.file, self.target, self.precision)

    @property
    def p50_ms(self) -> float:
        return float(self.batch1["p50_ms"])


def point_key(file: str, target: str, precision: str) -> str:
    return f"{file} @ {target} {precision}"


@dataclass
class ModelResult:
    """One model file of the run: its size and every point it was run at (the onnxruntime-cpu one first)."""

    role: str
    file: str
    format: str  # FP32, INT8, FP16
    source: str | None  # the FP32 model an INT8 / FP16 file was made from
    baseline: str | None  # the model it must beat to count as a gain (its own baseline; None: teacher, baseline)
    parameters: int
    file_mb: float
    macs: int
    recorded_correct: int | None  # what compress (or quantize) recorded for this file
    agrees_with_manifest: bool
    points: list[PointResult] = field(default_factory=list)

    @property
    def reference(self) -> PointResult:
        """The onnxruntime-cpu point: what the verdicts and the manifest check use."""
        return self.points[0]


@dataclass
class BenchmarkResult:
    """benchmark.json: the run, the machine, the targets used (and why others were not), models and points, verdicts,
    frontier and recommendation."""

    run: str
    run_dir: str
    dataset: str
    test_images: int
    classes: list[str]
    machine: dict[str, Any]
    settings: dict[str, Any]  # threads, throughput_batch, quick
    targets: dict[str, str | None]  # every target kdc knows -> None (used) or why it was not
    models: dict[str, ModelResult]
    comparisons: dict[str, Any] = field(default_factory=dict)
    attribution: Any = None
    int8_verdicts: dict[str, Int8Verdict] = field(default_factory=dict)  # role of an INT8 file -> vs its FP32 file
    notes: list[str] = field(default_factory=list)  # points that could not be run, and why
    recommendation: dict[str, Any] | None = None
    profiles: dict[str, Any] = field(default_factory=dict)  # role -> deploy.profile's per-layer profiles, one per runtime (format 3)
    command: str = ""
    saved: bool = False
    save_error: str | None = None
    units: dict[str, str] = field(default_factory=lambda: dict(UNITS))
    format: str = FORMAT

    def points(self) -> list[PointResult]:
        return [p for m in self.models.values() for p in m.points]

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "models"}
        data["models"] = {role: asdict(model) for role, model in self.models.items()}
        data["int8_verdicts"] = {role: verdict.to_dict() for role, verdict in self.int8_verdicts.items()}
        return {"format": data.pop("format"), **data}

    @classmethod
    def from_dict(cls, data: Any) -> "BenchmarkResult":
        """Read benchmark.json back; a KdcError for another format or a missing field."""
        if not isinstance(data, dict) or data.get("format") not in READABLE:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise KdcError(f"not a {FORMAT} benchmark result (format {found!r}): run kdc benchmark again")
        data = {**data, "format": FORMAT}  # read as the current format: an older one only lacks the later fields
        try:
            models = {
                role: ModelResult(**{**model, "points": [PointResult(**p) for p in model["points"]]})
                for role, model in data["models"].items()
            }
            verdicts = {role: Int8Verdict.from_dict(v) for role, v in data.get("int8_verdicts", {}).items()}
            known = {f.name for f in fields(cls)} - {"models", "int8_verdicts"}
            result = cls(models=models, int8_verdicts=verdicts, **{k: v for k, v in data.items() if k in known})
        except (KeyError, TypeError, AttributeError) as exc:
            raise KdcError(f"the benchmark result is incomplete ({exc}): run kdc benchmark again") from None
        result._check()
        return result

    def _check(self) -> None:
        """Every value a reader uses has its type, and every measured number is finite (NaN latencies, an accuracy
        that is text or above 1, a model name that is a list are refused): a KdcError naming the first that is not."""
        def need(ok: bool, what: str, value: Any) -> None:
            if not ok:
                shown = repr(value)
                raise KdcError(f"the benchmark result is damaged ({what} is {shown[:40]}): run kdc benchmark again")

        need(isinstance(self.run, str) and isinstance(self.dataset, str), "run", self.run)
        need(isinstance(self.classes, list) and all(isinstance(c, str) for c in self.classes), "classes", self.classes)
        need(is_whole(self.test_images) and self.test_images > 0, "test_images", self.test_images)
        for role, model in self.models.items():
            need(isinstance(role, str) and isinstance(model.file, str) and isinstance(model.format, str), "a model", role)
            need(is_number(model.file_mb) and model.file_mb >= 0, f"{role}: file_mb", model.file_mb)
            need(is_whole(model.parameters) and is_whole(model.macs), f"{role}: parameters", model.parameters)
            need(isinstance(model.points, list) and bool(model.points), f"{role}: points", model.points)
            for p in model.points:
                where = f"{role}: a point's"
                need(all(isinstance(v, str) for v in (p.role, p.file, p.target, p.precision)), f"{where} target", p.target)
                need(is_fraction(p.accuracy), f"{where} accuracy", p.accuracy)
                need(is_fraction(p.agreement), f"{where} agreement", p.agreement)
                need(is_whole(p.correct) and 0 <= p.correct <= self.test_images, f"{where} correct", p.correct)
                need(isinstance(p.batch1, dict) and all(is_number(v) and v >= 0 for v in p.batch1.values()), f"{where} batch1", p.batch1)
                need(is_number(p.images_per_s) and p.images_per_s >= 0, f"{where} images_per_s", p.images_per_s)
                need(p.footprint is None or (isinstance(p.footprint, dict) and all(is_number(v) and v >= 0 for v in p.footprint.values())),
                     f"{where} footprint", p.footprint)  # fmt: skip
        need(isinstance(self.profiles, dict), "profiles", self.profiles)
        for role, profiles in self.profiles.items():
            need(isinstance(profiles, list), f"{role}: its profiles", profiles)
            for profile in profiles:
                ok = isinstance(profile, dict) and is_number(profile.get("kernels_ms")) and isinstance(profile.get("by_precision"), dict)
                need(ok and isinstance(profile.get("layers"), list) and isinstance(profile.get("target"), str), f"{role}: its profile", profile)
        rec = self.recommendation
        need(rec is None or isinstance(rec, dict), "recommendation", rec)
        if rec is not None:
            need(rec.get("model") is None or isinstance(rec.get("model"), str), "recommendation.model", rec.get("model"))

