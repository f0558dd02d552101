"""ONNX graph arithmetic shared by the deploy commands: parameters, file size, multiply-accumulates, node order."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np


def onnx_size(path: Path) -> dict[str, Any]:
    """Parameters (initializers, each distinct tensor once), file size and multiply-accumulates per image."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    # Quantization scales and zero points are bookkeeping, not weights; int64 tensors are shapes and axes.
    side = {n.input[i] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for i in (1, 2) if i < len(n.input)}
    seen: set[str] = set()
    parameters = 0
    for tensor in model.graph.initializer:
        if tensor.name in side or tensor.data_type == onnx.TensorProto.INT64:
            continue
        array = numpy_helper.to_array(tensor)
        digest = hashlib.sha1(array.tobytes() + str(array.shape).encode()).hexdigest()
        if array.size <= 1 or digest in seen:  # the same tensor stored twice counts once
            continue
        seen.add(digest)
        parameters += int(array.size)
    return {"parameters": parameters, "file_mb": path.stat().st_size / 1e6, "macs": count_macs(model)}


def count_macs(model: Any) -> int:
    """Multiply-accumulates of Conv, Gemm and MatMul nodes for one image (batch axis fixed to 1)."""
    import onnx
    from onnx import shape_inference

    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = 1
    del model.graph.value_info[:]
    sort_nodes(model.graph)  # shape inference reads nodes in order (FP16 files written before sort_nodes were not)
    inferred = shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        shapes[value.name] = [d.dim_value for d in value.type.tensor_type.shape.dim]
    for tensor in inferred.graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    # In QDQ models weights reach Conv through DequantizeLinear: follow it back to the stored tensor.
    producers = {out: node for node in inferred.graph.node for out in node.output}

    def shape(name: str) -> list[int]:
        node = producers.get(name)
        if name not in shapes and node is not None and node.op_type == "DequantizeLinear":
            return shape(node.input[0])
        return shapes.get(name, [])

    macs = 0
    for node in inferred.graph.node:
        if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
            weight = shape(node.input[3] if node.op_type == "QLinearConv" else node.input[1])
            out = shape(node.output[0])
            if weight and out:
                macs += int(np.prod(out[1:])) * int(np.prod(weight[1:]))
        elif node.op_type in ("Gemm", "MatMul", "MatMulInteger"):
            a, out = shape(node.input[0]), shape(node.output[0])
            if a and out:
                macs += int(np.prod(out)) * a[-1]
    return macs


def sort_nodes(graph: Any) -> None:
    """Reorder an ONNX graph's nodes (in place) so that each comes after the nodes that produce its inputs, as the
    format asks; nodes whose inputs never become ready keep their order at the end."""
    ready = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        runnable = [node for node in pending if all(name in ready for name in node.input)]
        if not runnable:
            break
        for node in runnable:
            ready.update(node.output)
        ordered += runnable
        taken = {id(node) for node in runnable}
        pending = [node for node in pending if id(node) not in taken]
    del graph.node[:]
    graph.node.extend(ordered + pending)
