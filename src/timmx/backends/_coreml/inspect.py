"""Facts about a saved Core ML model, read back from disk: inputs, outputs, ops or layers,
weight storage and compression. `check_saved` compares them with what was asked for."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from timmx.backends._coreml.plan import OUTPUT, Plan
from timmx.errors import ExportFailedError

_LUT_OPS = ("constexpr_lut_to_dense", "constexpr_lut_to_sparse")
_DATA_KEYS = ("quantized_data", "data", "nonzero_data", "source_val")
DENSE_MIN = 2048  # smaller constants (biases, shapes) are left uncompressed by design


def read_spec(path: Path) -> Any:
    from coremltools.proto import Model_pb2

    from timmx.mil_reference.program import spec_path

    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path(path).read_bytes())
    return spec


def describe(path: Path) -> dict[str, Any]:
    spec = read_spec(path)
    kind = spec.WhichOneof("Type")
    desc = spec.description
    facts: dict[str, Any] = {
        "format": "mlprogram" if kind == "mlProgram" else "neuralnetwork",
        "model_type": kind,
        "specification_version": spec.specificationVersion,
        "inputs": [_feature(f) for f in desc.input],
        "outputs": [_feature(f) for f in desc.output],
    }
    if desc.predictedFeatureName:
        facts["classifier"] = {
            "label_output": desc.predictedFeatureName,
            "probabilities_output": desc.predictedProbabilitiesName,
        }
    if kind == "mlProgram":
        facts.update(_program_facts(spec))
    else:
        facts.update(_network_facts(getattr(spec, kind)))
    meta = desc.metadata
    facts["metadata"] = {
        **({"license": meta.license} if meta.license else {}),
        **({"description": meta.shortDescription} if meta.shortDescription else {}),
        **dict(sorted(meta.userDefined.items())),
    }
    return facts


def _feature(feature: Any) -> dict[str, Any]:
    from coremltools.proto import FeatureTypes_pb2 as F

    kind = feature.type.WhichOneof("Type")
    info: dict[str, Any] = {"name": feature.name, "type": kind.removesuffix("Type")}
    if kind == "multiArrayType":
        array = feature.type.multiArrayType
        info["dtype"] = F.ArrayFeatureType.ArrayDataType.Name(array.dataType)
        info["shape"] = list(array.shape)
        ranges = array.shapeRange.sizeRanges
        if ranges and any(r.lowerBound != r.upperBound for r in ranges):
            info["ranges"] = [[r.lowerBound, r.upperBound] for r in ranges]
    elif kind == "imageType":
        image = feature.type.imageType
        info["width"], info["height"] = image.width, image.height
        info["color"] = F.ImageFeatureType.ColorSpace.Name(image.colorSpace)
    return info


def _program_facts(spec: Any) -> dict[str, Any]:
    from coremltools.proto import MIL_pb2

    function = spec.mlProgram.functions["main"]
    ops = function.block_specializations[function.opset].operations
    counts = Counter(op.type for op in ops)
    dense: Counter[str] = Counter()
    compressed: Counter[str] = Counter()
    for op in ops:
        if op.type == "const":
            value = op.attributes["val"]
            if value.type.WhichOneof("type") == "tensorType" and _elements(value) >= DENSE_MIN:
                dense[_dtype_name(MIL_pb2, value)] += 1
        elif op.type.startswith("constexpr_"):
            compressed[f"{op.type}({_compressed_kind(MIL_pb2, op)})"] += 1
    return {
        "opset": function.opset,
        "op_count": sum(n for t, n in counts.items() if t != "const"),
        "ops": dict(sorted(counts.items(), key=lambda item: (-item[1], item[0]))),
        "weights": {
            "dense": dict(sorted(dense.items())),
            "compressed": dict(sorted(compressed.items())),
        },
    }


def _values(op: Any) -> dict[str, Any]:
    found = {k: v for k, v in op.attributes.items()}
    for key, argument in op.inputs.items():
        for arg in argument.arguments:
            if arg.WhichOneof("binding") == "value":
                found[key] = arg.value
    return found


def _compressed_kind(MIL_pb2: Any, op: Any) -> str:
    values = _values(op)
    if op.type in _LUT_OPS and "lut" in values:
        dims = [d.constant.size for d in values["lut"].type.tensorType.dimensions]
        palettes = dims[0] if len(dims) == 1 else dims[-2]
        return f"lut{int(math.log2(max(palettes, 1)))}"
    for key in _DATA_KEYS:
        if key in values:
            return _dtype_name(MIL_pb2, values[key])
    return "?"


def _dtype_name(MIL_pb2: Any, value: Any) -> str:
    from timmx.mil_reference.dtypes import from_proto_name

    return from_proto_name(MIL_pb2.DataType.Name(value.type.tensorType.dataType))[0]


def _elements(value: Any) -> int:
    dims = value.type.tensorType.dimensions
    return math.prod(d.constant.size for d in dims) if dims else 1


def _network_facts(network: Any) -> dict[str, Any]:
    layers = Counter(layer.WhichOneof("layer") for layer in network.layers)
    storage: Counter[str] = Counter()
    for layer in network.layers:
        for weights in _weight_params(layer):
            kind = _weight_kind(weights)
            if kind:
                storage[kind] += 1
    return {
        "layer_count": sum(layers.values()),
        "layers": dict(sorted(layers.items(), key=lambda item: (-item[1], item[0]))),
        "weights": dict(sorted(storage.items())),
    }


def _weight_params(message: Any):
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        items = [value] if hasattr(value, "ListFields") else value  # one message, or repeated
        for item in items:
            if field.message_type.name == "WeightParams":
                yield item
            else:
                yield from _weight_params(item)


def _weight_kind(weights: Any) -> str | None:
    bits = weights.quantization.numberOfBits if weights.HasField("quantization") else 8
    count = max(
        len(weights.floatValue), len(weights.float16Value) // 2, len(weights.rawValue) * 8 // bits
    )
    if count < DENSE_MIN:
        return None
    if weights.HasField("quantization"):
        q = weights.quantization
        style = "linear" if q.HasField("linearQuantization") else "lut"
        return f"int{q.numberOfBits}-{style}" if style == "linear" else f"lut{q.numberOfBits}"
    if weights.float16Value:
        return "fp16"
    return "fp32" if weights.floatValue else None


# ---- checks against the plan ----


def check_saved(path: Path, plan: Plan) -> dict[str, Any]:
    """Read the saved model back; raise ExportFailedError where it is not what was asked for."""
    try:
        facts = describe(path)
    except Exception as exc:
        raise ExportFailedError(f"the saved Core ML model cannot be read back: {exc}") from exc
    _check_inputs(facts, plan)
    _check_outputs(facts, plan)
    count = facts.get("op_count", facts.get("layer_count", 0))
    if not count:
        raise ExportFailedError("the saved Core ML model has no operations")
    missing = missing_compression(facts, plan.compression)
    if missing:
        raise ExportFailedError(missing)
    return facts


def _fail(what: str) -> None:
    raise ExportFailedError(f"the saved Core ML model {what}")


def _check_inputs(facts: dict[str, Any], plan: Plan) -> None:
    inputs = facts["inputs"]
    if [i["name"] for i in inputs] != [plan.input_name]:
        _fail(f"takes {[i['name'] for i in inputs]}, expected ['{plan.input_name}']")
    (info,) = inputs
    c, h, w = plan.input_size
    if plan.image is not None:
        color = "RGB" if c == 3 else "GRAYSCALE"
        if (info["type"], info.get("width"), info.get("height"), info.get("color")) != (
            "image",
            w,
            h,
            color,
        ):
            _fail(f"input is {info}, expected a {w}x{h} {color} image")
        return
    if info["type"] != "multiArray" or info.get("dtype") != "FLOAT32":
        _fail(f"input is {info}, expected a float32 multi-array")
    if info["shape"][1:] != [c, h, w] or info["shape"][0] != plan.batch:
        _fail(f"input shape is {info['shape']}, expected {[plan.batch, c, h, w]}")
    ranges = info.get("ranges")
    if plan.dynamic:
        upper = plan.upper_bound or -1
        if not ranges or ranges[0] != [1, upper]:
            _fail(f"input batch range is {ranges and ranges[0]}, expected [1, {upper}]")
    elif ranges:
        _fail(f"input has flexible sizes {ranges}, expected a fixed shape")


def _check_outputs(facts: dict[str, Any], plan: Plan) -> None:
    outputs = facts["outputs"]
    if plan.labels is not None:
        classifier = facts.get("classifier")
        types = {o["name"]: o["type"] for o in outputs}
        if not classifier or types.get(classifier["probabilities_output"]) != "dictionary":
            _fail(f"is not a classifier with class probabilities: outputs {outputs}")
        return
    if [o["name"] for o in outputs] != [OUTPUT]:
        _fail(f"returns {[o['name'] for o in outputs]}, expected ['{OUTPUT}']")
    (info,) = outputs
    if info["type"] != "multiArray" or info.get("dtype") not in (None, "FLOAT32"):
        _fail(f"output is {info}, expected a float32 multi-array")
    shape = info.get("shape") or []
    if shape and shape[-1] != plan.num_classes:
        _fail(f"output shape is {shape}, expected {plan.num_classes} classes last")


def missing_compression(facts: dict[str, Any], compression: str | None) -> str | None:
    """A one-line complaint if the requested compression is not in the model, else None."""
    if compression is None:
        return None
    weights = facts.get("weights", {})
    if facts["format"] == "mlprogram":
        kinds = {k.split("(")[-1].rstrip(")") for k in weights.get("compressed", {})}
        wanted = {"int8": "int8", "int4": "int4"}.get(compression)
        if wanted is None and compression.startswith("palettize"):
            wanted = "lut" + compression.removeprefix("palettize")
    else:
        kinds = set(weights)
        wanted = {"int8": "int8-linear", "fp16-weights": "fp16"}.get(compression)
        if compression == "fp16-weights" and "fp32" in kinds:
            return "--half was requested but the saved model still holds float32 weights"
    if wanted is None or wanted not in kinds:
        return (
            f"{compression} weights were requested but the saved model holds none "
            f"(weights found: {weights})"
        )
    return None
