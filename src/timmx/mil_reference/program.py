"""Read a saved ML program: its functions, operations, constants and weights, as plain data."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from timmx.mil_reference.dtypes import from_proto_name
from timmx.mil_reference.values import ValueDecoder, proto_type_name, tensor_shape


class MILFormatError(ValueError):
    """The file is not an ML program this package can read."""


@dataclass(frozen=True)
class TensorType:
    dtype: str  # MIL short name: fp32, fp16, int32, bool, string...
    shape: tuple[int | None, ...] | None  # None for a flexible dimension or an unknown rank


@dataclass(frozen=True)
class Binding:
    """An op input: the name of a variable, or a value written into the op itself."""

    name: str | None = None
    value: Any = None


@dataclass
class Operation:
    type: str
    inputs: dict[str, list[Binding]]
    attributes: dict[str, Any]
    outputs: list[tuple[str, TensorType | None]]  # None: not a tensor (a dict, a list...)
    nested_blocks: int = 0

    @property
    def name(self) -> str:
        name = self.attributes.get("name")
        if isinstance(name, np.ndarray) and name.size == 1:
            return str(name.reshape(-1)[0])
        return self.outputs[0][0] if self.outputs else self.type


@dataclass
class Function:
    name: str
    opset: str
    inputs: list[tuple[str, TensorType | None]]
    operations: list[Operation]
    outputs: list[str]


@dataclass
class Program:
    path: Path
    spec: Any  # the Model protobuf
    functions: dict[str, Function] = field(default_factory=dict)

    @property
    def main(self) -> Function:
        return self.functions["main"]


def load_program(path: str | Path) -> Program:
    """Load an `.mlpackage` folder (or an `.mlmodel` file) holding an ML program."""
    path = Path(path)
    spec_file = spec_path(path)
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(spec_file.read_bytes())
    except Exception as exc:
        raise MILFormatError(f"{spec_file.name} is not a Core ML model ({exc})") from None
    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        raise MILFormatError(f"the model is a {kind}, not an ML program")
    decoder = ValueDecoder(spec_file.parent)  # "@model_path" is the spec's folder
    program = Program(path=path, spec=spec)
    for name, function in spec.mlProgram.functions.items():
        program.functions[name] = _function(name, function, decoder)
    if "main" not in program.functions:
        raise MILFormatError("the ML program has no 'main' function")
    return program


def spec_path(path: Path) -> Path:
    """The model specification file of a package (or the file itself)."""
    if path.is_file():
        return path
    manifest = path / "Manifest.json"
    if not manifest.is_file():
        raise MILFormatError(f"{path} is neither a model file nor a model package")
    try:
        info = json.loads(manifest.read_text())
        root = info["itemInfoEntries"][info["rootModelIdentifier"]]["path"]
    except (ValueError, KeyError, TypeError) as exc:
        raise MILFormatError(f"{manifest} is not a model package manifest ({exc})") from None
    found = path / "Data" / root
    if not found.is_file():
        raise MILFormatError(f"the package's model file {root} is missing")
    return found


def _function(name: str, spec: Any, decoder: ValueDecoder) -> Function:
    opset = spec.opset
    if opset not in spec.block_specializations:
        raise MILFormatError(f"function {name} has no block for its opset {opset}")
    block = spec.block_specializations[opset]
    return Function(
        name=name,
        opset=opset,
        inputs=[(i.name, value_type(i.type)) for i in spec.inputs],
        operations=[_operation(op, decoder) for op in block.operations],
        outputs=list(block.outputs),
    )


def _operation(spec: Any, decoder: ValueDecoder) -> Operation:
    inputs = {}
    for key, argument in spec.inputs.items():
        bindings = []
        for arg in argument.arguments:
            if arg.WhichOneof("binding") == "name":
                bindings.append(Binding(name=arg.name))
            else:
                bindings.append(Binding(value=_decode(decoder, arg.value, spec, key)))
        inputs[key] = bindings
    attributes = {key: _decode(decoder, v, spec, key) for key, v in spec.attributes.items()}
    return Operation(
        type=spec.type,
        inputs=inputs,
        attributes=attributes,
        outputs=[(o.name, value_type(o.type)) for o in spec.outputs],
        nested_blocks=len(spec.blocks),
    )


def _decode(decoder: ValueDecoder, value: Any, op: Any, key: str) -> Any:
    try:
        return decoder.decode(value)
    except (ValueError, OSError) as exc:
        where = op.outputs[0].name if op.outputs else op.type
        raise MILFormatError(f"cannot read '{key}' of {op.type} {where}: {exc}") from None


def value_type(spec: Any) -> TensorType | None:
    if spec.WhichOneof("type") != "tensorType":
        return None
    dtype, _ = from_proto_name(proto_type_name(spec.tensorType.dataType))
    return TensorType(dtype=dtype, shape=tensor_shape(spec.tensorType))
