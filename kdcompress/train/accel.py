"""How training uses the device: which device, which arithmetic, and whether the networks are compiled.

On CUDA: bfloat16 autocast (float16 with loss scaling where bfloat16 is missing, or when asked),
cuDNN autotuning for the fixed batch shapes where it pays (`autotune`), fused AdamW, and how each step
runs (`--compile`): eager, `torch.compile` of each network's `forward_features` (on: measured no faster on one H200,
benchmarks/results/train-throughput-cuda-compile.json), or one CUDA graph of the step's forward and backward
(graph: `loop.TrainStep`), which removes the per-kernel launch cost that bounds small images.
On CPU everything stays float32, channels_last and eager, so the same seed gives the same numbers. bfloat16
autocast was measured on a CPU with AMX and avx512_bf16 (2-core Intel Xeon, torch 2.14.1): training ran at
0.54-0.71x float32's speed, and contiguous tensors at 0.38-1.03x channels_last (benchmarks/cpu_precision.py,
benchmarks/results/cpu-precision.json), so neither is used.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import torch

from kdcompress.core.errors import KdcError
from kdcompress.train.config import COMPILE_CHOICES, DEVICES, one_of

PRECISIONS = ("auto", "bfloat16", "float16", "float32")
# How a step runs: "eager", "compile" (torch.compile of forward_features) or "graph" (a CUDA graph of forward and
# backward). The graph measured fastest for both roles at 32 and 224 px on an H200 and torch.compile no faster
# than eager (benchmarks/README.md, "How fast is training on a GPU?"; records train-throughput-cuda*.json), so
# --compile auto picks the graph on CUDA with one process (AUTO_CUDA); the CPU always runs eager.
AUTO_CUDA = "graph"


def resolve_device(requested: str) -> str:
    """auto -> cuda when available, else cpu; cuda without a GPU is an error."""
    if requested not in DEVICES:
        raise KdcError(f"unknown device '{requested}': use {one_of(DEVICES)}")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise KdcError("--device cuda was asked for but torch sees no CUDA GPU: use --device cpu or auto")
    return requested


def resolve_precision(device: str, requested: str = "auto") -> str:
    """The arithmetic of training: float32 on CPU; on CUDA bfloat16 autocast where supported, else float16."""
    if requested not in PRECISIONS:
        raise KdcError(f"unknown precision '{requested}': use {', '.join(PRECISIONS)}")
    if device != "cuda":
        return "float32"
    if requested == "auto":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return requested


def describe_precision(device: str, requested: str = "auto") -> str:
    """The precision as the manifest states it."""
    precision = resolve_precision(device, requested)
    return {"bfloat16": "bfloat16 autocast", "float16": "float16 autocast with loss scaling"}.get(precision, precision)


def autocast(device: str, precision: str, cache: bool = True) -> Any:
    """Mixed-precision context for a forward pass (a no-op in float32); cache=False inside a CUDA graph capture."""
    if device != "cuda" or precision == "float32":
        return torch.autocast("cpu", enabled=False)
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float16
    return torch.autocast("cuda", dtype=dtype, cache_enabled=cache)


def grad_scaler(device: str, precision: str) -> Any:
    """Loss scaling, needed by float16 only (bfloat16 has float32's range)."""
    return torch.amp.GradScaler("cuda", enabled=device == "cuda" and precision == "float16")


def create_optimizer(parameters: list[Any], lr: float, weight_decay: float) -> Any:
    """AdamW with its fused kernel: one pass over each parameter's state instead of a dozen elementwise operations.

    On CUDA one launch for all parameters. On CPU (fused since torch 2.4), whole training steps interleaved in one
    process (benchmarks/optimizer_cpu.py, 2-core Intel Xeon, batch 128): ResNet18 at 16 px 1.27x, ResNet34 at 16 px
    1.26x, ResNet18 at 32 px 1.13x, EfficientNet-B3 at 32 px 1.00x. Separate processes on that machine varied by
    more than these gains, so they misled the first comparison. It rounds differently from the per-tensor step in
    the last bit (3e-8 after six steps); the same seed still gives the same numbers.
    """
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=True)


def step_mode(choice: str, device: str, processes: int = 1) -> str:
    """How training steps run for --compile choice: "eager", "compile" or "graph".

    auto: AUTO_CUDA on CUDA with one process, eager otherwise. graph needs CUDA and one process (a DDP step
    holds collectives that this capture does not handle), and is refused elsewhere before any training.
    """
    if choice not in COMPILE_CHOICES:
        raise KdcError(f"unknown --compile '{choice}': use {one_of(COMPILE_CHOICES)}")
    if choice == "graph" and device != "cuda":
        raise KdcError("--compile graph captures CUDA graphs and needs --device cuda: use --compile auto or off here")
    if choice == "graph" and processes > 1:
        raise KdcError("--compile graph trains in one process: with several, use --compile auto, on or off")
    if choice == "auto":
        return AUTO_CUDA if device == "cuda" and processes == 1 else "eager"
    return {"on": "compile", "off": "eager"}.get(choice, choice)


AUTOTUNE_ENV = "KDC_CUDNN_AUTOTUNE"  # on | off | auto: overrides the rule of `autotune`
# Graphed runs shorter than this skip cuDNN's autotuning: its longer warm-up pays back only after about this many
# steps (benchmarks/results/train-throughput-cuda-autotune.json, read in benchmarks/README.md).
AUTOTUNE_MIN_GRAPH_STEPS = 6400


def autotune(mode: str, steps: int) -> bool:
    """Whether a run of `steps` steps in this mode (and its validation passes) lets cuDNN time its algorithms.

    Eager and compiled steps always do; graphed runs from AUTOTUNE_MIN_GRAPH_STEPS steps on. The timing is a
    one-off cost per shape: EfficientNet-B3's depthwise convolutions come in many shapes. The environment
    variable KDC_CUDNN_AUTOTUNE=on|off overrides the rule (what benchmarks/train_throughput.py --autotune sets).
    """
    value = os.environ.get(AUTOTUNE_ENV, "auto")
    if value not in ("auto", "on", "off"):
        raise KdcError(f"{AUTOTUNE_ENV}={value!r} is not understood: use on, off or auto")
    if value != "auto":
        return value == "on"
    return mode != "graph" or steps >= AUTOTUNE_MIN_GRAPH_STEPS


@contextmanager
def cudnn_autotune(device: str, enabled: bool = True) -> Iterator[None]:
    """cuDNN autotuning on or off for the duration on CUDA (training shapes are fixed: the ragged batch is dropped)."""
    if device != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


@contextmanager
def compiled(networks: list[Any], enabled: bool) -> Iterator[None]:
    """Compile each network's forward_features for the duration (timm's forward and the objectives call it).

    The compiled function shadows the method on the instance only, so the weights are shared, and it
    is removed afterwards: checkpoints, evaluation and the ONNX export see the plain network.
    """
    if not enabled:
        yield
        return
    for network in networks:
        network.forward_features = torch.compile(network.forward_features)
    try:
        yield
    finally:
        for network in networks:
            network.__dict__.pop("forward_features", None)


def eager(network: Any) -> Any:
    """A context in which network runs its plain forward_features (evaluation inside a compiled training)."""
    if "forward_features" not in network.__dict__:
        return nullcontext()
    return _without_compiled(network)


@contextmanager
def _without_compiled(network: Any) -> Iterator[None]:
    compiled_forward = network.__dict__.pop("forward_features")
    try:
        yield
    finally:
        network.forward_features = compiled_forward
