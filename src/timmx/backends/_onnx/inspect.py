"""What a saved ONNX artifact holds, for the report: inputs and outputs, the types of its
stored tensors, its quantized ops and how its int8 weights are scaled. Reads the graph only
(external data stays on disk)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from timmx.errors import ExportFailedError

if TYPE_CHECKING:
    import onnx

# Ops that quantize, dequantize or compute on integers (QLinear* are counted too).
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QGemm",
    }
)
# Where each integer op takes its weight's zero point (one per channel: per-channel scales).
_WEIGHT_ZERO_POINT = {"ConvInteger": 3, "MatMulInteger": 3}
_INTEGER = ("int8", "uint8")


def describe(path: Path) -> dict[str, Any]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    stored = {init.name: init for init in graph.initializer}
    ops = Counter(node.op_type for node in graph.node)
    constants = [init.data_type for init in graph.initializer]
    constants += [
        attr.t.data_type
        for node in graph.node
        if node.op_type == "Constant"
        for attr in node.attribute
        if attr.name == "value"
    ]
    facts: dict[str, Any] = {
        "inputs": [_io(v) for v in graph.input if v.name not in stored],
        "outputs": [_io(v) for v in graph.output],
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "quantized_ops": {
            op: n
            for op, n in sorted(ops.items())
            if op in QUANTIZED_OPS or op.startswith("QLinear")
        },
        "constant_types": dict(sorted(Counter(_dtype(t) for t in constants).items())),
    }
    scales = _weight_scales(graph, stored)
    if scales:
        facts["weight_scales"] = scales
    return facts


def check_precision(path: Path, mode: str) -> None:
    """A mode whose artifact holds no float16 (or int8) weights is a failed export."""
    wanted = {"fp16": ("float16",), "dynamic-int8": _INTEGER, "int8": _INTEGER}.get(mode)
    if wanted is None:
        return
    types = describe(path)["constant_types"]
    if not any(types.get(t) for t in wanted):
        raise ExportFailedError(
            f"onnxruntime produced no {' or '.join(wanted)} weights for --mode {mode} "
            f"(stored tensors: {types or 'none'}): this model's ops may not convert there; "
            "try another --mode"
        )


def _weight_scales(graph: onnx.GraphProto, stored: dict[str, Any]) -> dict[str, int]:
    """How many int8 weights have a scale per channel and how many one per tensor: the scale
    of each DequantizeLinear of a stored integer tensor (QDQ); for each ConvInteger and
    MatMulInteger (dynamic quantization), the weight's scale that onnxruntime stores beside it
    (`W_quantized`, `W_scale`), else its zero point."""
    found: Counter[str] = Counter()
    for node in graph.node:
        if node.op_type == "DequantizeLinear":
            weight, scale = node.input[0], node.input[1]
            if weight in stored and _dtype(stored[weight].data_type) in _INTEGER:
                found[_kind(stored.get(scale))] += 1
        elif node.op_type in _WEIGHT_ZERO_POINT and node.input[1] in stored:
            weight = node.input[1]
            scale = stored.get(weight.removesuffix("_quantized") + "_scale")
            at = _WEIGHT_ZERO_POINT[node.op_type]
            if scale is None and len(node.input) > at:
                scale = stored.get(node.input[at])
            found[_kind(scale)] += 1
    return {k: found[k] for k in ("per_channel", "per_tensor") if found[k]}


def _kind(tensor: Any) -> str:
    size = 1
    for dim in getattr(tensor, "dims", []):
        size *= dim
    return "per_channel" if size > 1 else "per_tensor"


def _io(value: onnx.ValueInfoProto) -> dict[str, Any]:
    tensor = value.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]
    return {"name": value.name, "shape": shape, "dtype": _dtype(tensor.elem_type)}


def _dtype(data_type: int) -> str:
    """numpy's name for an ONNX tensor type (float32, float16, int8...)."""
    import onnx

    try:
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).name
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(data_type).lower()
