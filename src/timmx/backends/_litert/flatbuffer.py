"""The input and output types of a quantized .tflite model, and what is inside one.

litert-torch's static (PT2E) conversion folds the boundary quantize/dequantize ops into the model
signature, so its inputs and outputs come out int8. `float_io` puts a QUANTIZE op in front of
each int8 input and a DEQUANTIZE op after each int8 output (float32 in, float32 out, int8
inside); `int8_io` does the opposite with LiteRT's own model-interface tool. Both edit the
flatbuffer with the tools that ship in ai-edge-litert; no TensorFlow is needed.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from timmx.errors import ExportFailedError

_INT8 = 9  # schema TensorType.INT8, as LiteRT's modify_model_interface takes it


def float_io(data: bytes) -> bytes:
    """Float32 inputs and outputs around an int8 model; unchanged where they are float."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    model = fbu.read_model_from_bytearray(bytearray(data))
    graph = model.subgraphs[0]
    renamed: dict[int, int] = {}
    for position, index in enumerate(list(graph.inputs)):
        if graph.tensors[index].type == fb.TensorType.INT8:
            twin = _float_twin(model, graph, index)
            graph.operators.insert(0, _op(model, fb.BuiltinOperator.QUANTIZE, twin, index))
            graph.inputs[position] = renamed[index] = twin
    for position, index in enumerate(list(graph.outputs)):
        if graph.tensors[index].type == fb.TensorType.INT8:
            twin = _float_twin(model, graph, index)
            graph.operators.append(_op(model, fb.BuiltinOperator.DEQUANTIZE, index, twin))
            graph.outputs[position] = renamed[index] = twin
    if not renamed:
        return data
    for signature in model.signatureDefs or []:
        for entry in [*(signature.inputs or []), *(signature.outputs or [])]:
            entry.tensorIndex = renamed.get(entry.tensorIndex, entry.tensorIndex)
    return bytes(fbu.convert_object_to_bytearray(model))


def int8_io(data: bytes) -> bytes:
    """Int8 inputs and outputs: drop the boundary QUANTIZE/DEQUANTIZE ops of a float-IO model."""
    from ai_edge_litert import _pywrap_modify_model_interface as interface

    if _all_int8(data):
        return data
    with tempfile.TemporaryDirectory(prefix="timmx-litert-") as folder:
        source, target = Path(folder, "in.tflite"), Path(folder, "out.tflite")
        source.write_bytes(data)
        status = interface.modify_model_interface(str(source), str(target), _INT8, _INT8)
        result = target.read_bytes() if status == 0 and target.exists() else None
    if result is None or not _all_int8(result):
        raise ExportFailedError(
            "--int8-io: the model's first or last op does not run in int8 (baked-in "
            "--normalize or --softmax stay float), so its inputs and outputs cannot be int8: "
            "drop --int8-io or those flags"
        )
    return result


def describe(path: Path) -> dict[str, Any]:
    """Inputs, outputs (with quantization), op counts and tensor types, for the report."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    interpreter = Interpreter(model_path=str(path))
    model = fbu.read_model_from_bytearray(bytearray(path.read_bytes()))
    ops = Counter(
        fbu.opcode_to_name(model, op.opcodeIndex) or "CUSTOM"
        for graph in model.subgraphs
        for op in graph.operators
    )
    types = Counter(
        fbu.type_to_name(tensor.type).lower()
        for graph in model.subgraphs
        for tensor in graph.tensors
        if tensor.buffer and model.buffers[tensor.buffer].data is not None
    )

    def io(detail: dict) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": detail["name"],
            "shape": [int(d) for d in detail["shape"]],
            "dtype": np.dtype(detail["dtype"]).name,
        }
        scale, zero_point = detail["quantization"]
        if scale:
            entry.update(scale=float(scale), zero_point=int(zero_point))
        return entry

    return {
        "inputs": [io(d) for d in interpreter.get_input_details()],
        "outputs": [io(d) for d in interpreter.get_output_details()],
        "ops": dict(sorted(ops.items())),
        "constant_types": dict(sorted(types.items())),
    }


def _all_int8(data: bytes) -> bool:
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    graph = fbu.read_model_from_bytearray(bytearray(data)).subgraphs[0]
    boundary = [*graph.inputs, *graph.outputs]
    return all(graph.tensors[i].type == fb.TensorType.INT8 for i in boundary)


def _float_twin(model, graph, index: int) -> int:
    """A float32 tensor shaped like `index` that takes over its name; returns its index."""
    from ai_edge_litert import schema_py_generated as fb

    source = graph.tensors[index]
    twin = fb.TensorT()
    twin.shape = list(source.shape)
    if source.shapeSignature is not None:
        twin.shapeSignature = list(source.shapeSignature)
    twin.type = fb.TensorType.FLOAT32
    twin.name = source.name
    name = source.name.decode() if isinstance(source.name, bytes) else str(source.name)
    source.name = f"{name}_int8"
    model.buffers.append(fb.BufferT())  # an empty buffer: a tensor computed at run time
    twin.buffer = len(model.buffers) - 1
    graph.tensors.append(twin)
    return len(graph.tensors) - 1


def _op(model, builtin: int, source: int, target: int):
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    found = [
        i
        for i, code in enumerate(model.operatorCodes)
        if fbu.get_builtin_code_from_operator_code(code) == builtin
    ]
    if not found:
        code = fb.OperatorCodeT()
        code.builtinCode = builtin
        code.deprecatedBuiltinCode = min(builtin, 127)  # 127: the code that says "extended"
        model.operatorCodes.append(code)
        found = [len(model.operatorCodes) - 1]
    op = fb.OperatorT()
    op.opcodeIndex = found[0]
    op.inputs = [source]
    op.outputs = [target]
    return op
