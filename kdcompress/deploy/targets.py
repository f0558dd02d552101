"""Where a model file runs: a target is a value (runtime, device), and TARGETS is the one table of those kdc knows.

Every runtime name and provider string lives here. Each target says whether it is usable on this
machine (and if not, why, in one line), which precisions it runs a file at, and loads a file with a
thread count into a `Loaded` model that runs batches of normalised images. Adding a runtime
(TensorRT, ExecuTorch) is one class and one row of TARGETS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kdcompress.core.errors import KdcError

NATIVE = "native"  # onnxruntime runs a file in the types it holds: FP32, FP16, or INT8 (QDQ)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # CPUs on which OpenVINO's default inference precision is bf16


@dataclass(frozen=True)
class Target:
    """A runtime on a device: onnxruntime-cpu, onnxruntime-cuda, openvino-cpu."""

    runtime: str
    device: str

    @property
    def name(self) -> str:
        return f"{self.runtime}-{self.device}"


@dataclass
class Loaded:
    """A model file loaded by a target at one precision: run(batch) gives logits; precision is what it really runs at."""

    target: Target
    precision: str  # NATIVE for onnxruntime; f32 / bf16 ... read back from OpenVINO's compiled model
    run: Callable[[np.ndarray], np.ndarray]  # float32 N x C x H x W -> logits N x classes
    caller: Callable[[np.ndarray], Callable[[], Any]]  # a sample -> a call that runs it once (what timing repeats)
    details: dict[str, Any] = field(default_factory=dict)


class OnnxruntimeCpu:
    """onnxruntime's CPUExecutionProvider: every file as it is (FP32, FP16, INT8 QDQ)."""

    target = Target("onnxruntime", "cpu")
    provider = "CPUExecutionProvider"
    install = "pip install onnxruntime"

    def problem(self) -> str | None:
        """Why this target cannot run here (None: it can)."""
        try:
            import onnxruntime as ort
        except ImportError:
            return f"onnxruntime is not installed ({self.install})"
        if self.provider not in ort.get_available_providers():
            return f"onnxruntime has no {self.provider} ({self.install})"
        return None

    def precisions(self, isa: list[str]) -> list[str]:
        return [NATIVE]

    def version(self) -> str | None:
        from importlib import metadata

        for package in ("onnxruntime", "onnxruntime-gpu"):
            try:
                return metadata.version(package)
            except metadata.PackageNotFoundError:
                continue
        return None

    def load(self, path: str | Path, threads: int | None = None, precision: str = NATIVE) -> Loaded:
        session = create_session(path, self.target.device, threads)
        return Loaded(self.target, NATIVE, lambda x: session.run(None, {session.get_inputs()[0].name: x})[0],
                      lambda sample: session_call(session, sample), {"provider": session.get_providers()[0], "session": session})  # fmt: skip

    def snippet(self, file: str, threads: int, precision: str) -> str:
        return (
            "import numpy as np, onnxruntime as ort\n"
            "options = ort.SessionOptions()\n"
            f"options.intra_op_num_threads = {threads}\n"
            f"session = ort.InferenceSession({file!r}, options, providers=[{self.provider!r}])\n"
            "x = np.zeros((1, C, H, W), np.float32)  # preprocessed as manifest.json's preprocessing says\n"
            "logits = session.run(None, {session.get_inputs()[0].name: x})[0]"
        )


class OnnxruntimeCuda(OnnxruntimeCpu):
    """onnxruntime's CUDAExecutionProvider (the onnxruntime-gpu build)."""

    target = Target("onnxruntime", "cuda")
    provider = "CUDAExecutionProvider"
    install = "pip install 'kdcompress[gpu]', onnxruntime-gpu for torch's CUDA major version"

    def load(self, path: str | Path, threads: int | None = None, precision: str = NATIVE) -> Loaded:
        loaded = super().load(path, threads, precision)
        session = loaded.details["session"]
        loaded.details["device_caller"] = lambda sample: device_call(session, sample)
        return loaded


class OpenvinoCpu:
    """OpenVINO on the CPU, reading the ONNX file itself: f32 forced, and its default precision where that is not
    f32 (bf16 on CPUs with avx512_bf16 or amx_bf16), read back from the compiled model. One compiled model per input
    shape (batch 1, the throughput batch, the accuracy batches), compiled on first use."""

    target = Target("openvino", "cpu")
    install = "pip install 'kdcompress[openvino]'"

    def problem(self) -> str | None:
        """Whether OpenVINO is installed is asked of the import system without importing it; only then is it imported
        (its telemetry is kept off by kdcompress/__init__.py) and a Core made, and anything either raises (a numpy
        ABI mismatch, a missing shared library) is one line: this target is skipped and the rest goes on."""
        if not _installed("openvino"):
            return f"OpenVINO is not installed ({self.install})"
        try:
            import openvino as ov

            ov.Core()
        except Exception as exc:  # ImportError, RuntimeError, AttributeError, OSError: a broken installation
            return f"OpenVINO is installed but cannot start ({type(exc).__name__}: {_first_line(exc)}); reinstall it ({self.install})"
        return None

    def precisions(self, isa: list[str]) -> list[str]:
        return ["f32", "default"] if any(flag in isa for flag in BF16_FLAGS) else ["f32"]

    def version(self) -> str | None:
        from importlib import metadata

        try:
            return metadata.version("openvino")
        except metadata.PackageNotFoundError:
            return None

    def load(self, path: str | Path, threads: int | None = None, precision: str = "f32") -> Loaded:
        import openvino as ov

        from kdcompress.deploy.manifest import model_source

        core = ov.Core()
        try:
            model = core.read_model(model_source(path))
        except Exception as exc:  # OpenVINO's conversion errors are RuntimeErrors of many lines
            raise KdcError(f"OpenVINO cannot read {Path(path).name} ({_first_line(exc)})") from None
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        if precision != "default":
            config["INFERENCE_PRECISION_HINT"] = precision
        compiled: dict[tuple[int, ...], Any] = {}

        def request(shape: tuple[int, ...]) -> Any:
            if shape not in compiled:
                sized = model.clone()
                sized.reshape(list(shape))
                try:
                    compiled[shape] = core.compile_model(sized, "CPU", config).create_infer_request()
                except Exception as exc:
                    raise KdcError(f"OpenVINO cannot compile {Path(path).name} for input {shape} ({_first_line(exc)})") from None
            return compiled[shape]

        def run(x: np.ndarray) -> np.ndarray:
            return np.asarray(request(tuple(x.shape)).infer({0: x})[0]).copy()

        def caller(sample: np.ndarray) -> Callable[[], Any]:
            infer = request(tuple(sample.shape))
            return lambda: infer.infer({0: sample})

        probe = request((1, *[int(d) for d in model.inputs[0].get_partial_shape()[1:].to_shape()]))
        used = _precision_name(probe.get_compiled_model().get_property("INFERENCE_PRECISION_HINT"))
        return Loaded(self.target, used, run, caller, {"requested": precision})

    def snippet(self, file: str, threads: int, precision: str) -> str:
        hint = "" if precision == "default" else f', "INFERENCE_PRECISION_HINT": "{precision}"'
        return (
            "import numpy as np, openvino as ov\n"
            "core = ov.Core()\n"
            f"model = core.read_model({file!r})\n"
            "model.reshape([1, C, H, W])\n"
            f'compiled = core.compile_model(model, "CPU", {{"INFERENCE_NUM_THREADS": {threads}, "PERFORMANCE_HINT": "LATENCY"{hint}}})\n'
            "x = np.zeros((1, C, H, W), np.float32)  # preprocessed as manifest.json's preprocessing says\n"
            "logits = compiled.create_infer_request().infer({0: x})[0]"
        )


def _installed(package: str) -> bool:
    """Whether a package can be imported, asked without importing it (a None in sys.modules: blocked, as a test does)."""
    import importlib.util
    import sys

    if package in sys.modules:
        return sys.modules[package] is not None
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def _precision_name(value: Any) -> str:
    """OpenVINO's element type (<Type: 'bfloat16'>) as a short name: f32, bf16, f16."""
    text = str(getattr(value, "get_type_name", lambda: value)())
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(text, text)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    failed = [line[3:].rstrip(":") for line in lines if line.startswith("-- ")]  # "-- AveragePool-20 with a message:"
    if failed:
        return "it cannot convert " + ", ".join(dict.fromkeys(f.replace(" with a message", "") for f in failed))
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return ((useful or lines or [type(exc).__name__])[0])[:160]


TARGETS: dict[str, Any] = {t.target.name: t for t in (OnnxruntimeCpu(), OnnxruntimeCuda(), OpenvinoCpu())}
REFERENCE = "onnxruntime-cpu"  # the target every other point's predictions are compared with (and that always runs)


def resolve_target(name: str) -> Any:
    """The target named (onnxruntime-cpu, onnxruntime-cuda, openvino-cpu); a one-line error for another name."""
    if name not in TARGETS:
        raise KdcError(f"unknown target '{name}': kdc knows {', '.join(TARGETS)}")
    return TARGETS[name]


def runtime_versions(used: list[str] | None = None) -> dict[str, str]:
    """The version of every runtime installed here (of the targets named in used), for the machine record."""
    versions = {}
    for name, runtime in TARGETS.items():
        version = runtime.version() if used is None or name in used else None
        if version:
            versions[runtime.target.runtime] = version
    return versions


def create_session(path: Any, device: str = "cpu", threads: int | None = None) -> Any:
    """An onnxruntime InferenceSession on CPU or CUDA; raises KdcError when CUDA is not really in use. path: a file, or
    a manifest.ModelFile, whose checked bytes are loaded (never the file again, which may have changed since)."""
    import onnxruntime as ort

    from kdcompress.deploy.manifest import ModelFile, model_source

    if not isinstance(path, ModelFile):
        path = Path(path)
        if not path.is_file():
            raise KdcError(f"ONNX model not found: {path}")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    providers = [OnnxruntimeCpu.provider]
    if device == "cuda":
        if hasattr(ort, "preload_dlls"):  # onnxruntime-gpu >= 1.21: find the CUDA/cuDNN libraries torch's wheels installed
            ort.preload_dlls()
        if OnnxruntimeCuda.provider not in ort.get_available_providers():
            raise KdcError(f"onnxruntime has no {OnnxruntimeCuda.provider} ({OnnxruntimeCuda.install})")
        providers = [OnnxruntimeCuda.provider]
    try:
        session = ort.InferenceSession(model_source(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise KdcError(f"onnxruntime cannot load {path}: {exc}") from None
    if device == "cuda" and session.get_providers()[0] != OnnxruntimeCuda.provider:
        raise KdcError(
            "onnxruntime fell back to CPU: the CUDA libraries it needs (CUDA, cuDNN) were not found; install "
            "onnxruntime-gpu built for your torch's CUDA major version (see the README)"
        )
    return session


def session_call(session: Any, sample: np.ndarray) -> Callable[[], Any]:
    """session.run on a host array: what a deployed model pays, copies to and from the device included."""
    feed = {session.get_inputs()[0].name: sample}
    return lambda: session.run(None, feed)


def device_call(session: Any, sample: np.ndarray) -> Callable[[], Any]:
    """A CUDA session's run with input and output left on the GPU (IO binding): the device-only time."""
    import onnxruntime as ort

    binding = session.io_binding()
    binding.bind_ortvalue_input(session.get_inputs()[0].name, ort.OrtValue.ortvalue_from_numpy(sample, "cuda", 0))
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda")
    return lambda: session.run_with_iobinding(binding)
