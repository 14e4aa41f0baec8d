"""A float32 ONNX model in another precision, with onnxruntime's own tools.

fp16: `onnxruntime.transformers.float16.convert_float_to_float16`: weights and activations in
float16; inputs and outputs stay float32 (a Cast at each edge) unless `fp16_io`.
dynamic-int8: `quantize_dynamic`: int8 weights, activations quantized at run time
(DynamicQuantizeLinear, ConvInteger, MatMulInteger). onnxruntime's ConvInteger is slow on CPU:
resnet18 at 224 ran 5-6x slower than in float32 (benchmarks/results/quantized.md).
int8: `quantize_static` in QDQ format: int8 weights, 8-bit activations whose ranges (min/max)
are observed on the calibration batches. The ops in `FLOAT_OPS` stay float32, and so do the
model's outputs (see `float_outputs`). Activations are uint8 (asymmetric), weights int8:
onnxruntime's advice for x86 CPUs; the same grid as asymmetric int8 activations, and about 3x
faster there (resnet18 at 224, one thread, AVX512-VNNI: 7.6 ms against 21.9 ms with int8
activations, 24.5 ms in float32).

Both int8 modes run `quant_pre_process` first (symbolic shape inference, onnxruntime's basic
graph optimisations); where it fails on a graph, they quantize without it. onnxruntime's tools
write temporary models: they go to a scratch folder inside `scratch` (the export's staging
folder, writable in a container where the workspace is not), removed afterwards.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from timmx.errors import first_line

if TYPE_CHECKING:
    import onnx
    import torch

Mode = Literal["fp16", "dynamic-int8", "int8"]

# Left float32 by --mode int8. Measured at 64x64 on held-out noise (max error over the output's
# scale, float outputs either way): quantizing every op onnxruntime can (its default) costs
# vit_tiny 22% (residual Adds, the Muls of GELU, Softmax and LayerNorm in int8), against 4%
# without these; resnet18 4.4 vs 4.8%, mobilenetv3_small_100 2.5 vs 2.4%, efficientnet_b0 13.6
# vs 9.3%.
FLOAT_OPS = frozenset({"Add", "Mul", "Softmax", "LayerNormalization"})


def convert(
    proto: onnx.ModelProto,
    mode: Mode,
    scratch: Path,
    *,
    batches: list[torch.Tensor] | None = None,
    per_channel: bool = True,
    fp16_io: bool = False,
    large: bool = False,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """`proto` in `mode`, and facts for the report. `large`: the weights need a side file
    (protobuf holds 2 GB), so the tools read and write models by path."""
    if mode == "fp16":
        return _fp16(proto, keep_io=not fp16_io, scratch=scratch, large=large), {}
    return _int8(proto, mode, scratch, batches or [], per_channel, large)


def _fp16(proto: onnx.ModelProto, keep_io: bool, scratch: Path, large: bool) -> onnx.ModelProto:
    float16 = _float16_module()
    if not large:
        model = float16.convert_float_to_float16(proto, keep_io_types=keep_io)
    else:
        with _scratch(scratch) as folder:  # shape inference by path: over 2 GB, no proto bytes
            source = folder / "model.onnx"
            _save(proto, source, external=True)
            model = float16.convert_float_to_float16(str(source), keep_io_types=keep_io)
    topological_sort(model.graph)  # the converter appends the Casts it adds at the inputs
    return model


def _int8(
    proto: onnx.ModelProto,
    mode: Mode,
    scratch: Path,
    batches: list[torch.Tensor],
    per_channel: bool,
    large: bool,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    import onnx

    with _scratch(scratch) as folder:
        from onnxruntime.quantization import (
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )

        source = folder / "model.onnx"
        _save(proto, source, external=large)
        prepared, facts = _pre_process(source, folder / "prepared.onnx", large)
        target = folder / "quantized.onnx"
        common: dict[str, Any] = {
            "per_channel": per_channel,
            "weight_type": QuantType.QInt8,
            "use_external_data_format": large,
        }
        if mode == "dynamic-int8":
            quantize_dynamic(prepared, target, **common)
        else:
            quantize_static(
                prepared,
                target,
                _reader(proto.graph.input[0].name, batches),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                op_types_to_quantize=_static_op_types(),
                **common,
            )
        model = onnx.load(str(target))
    if mode == "int8":
        facts["float_outputs"] = float_outputs(model)
    return model, facts


def _static_op_types() -> list[str]:
    """Every op onnxruntime's static QDQ quantization handles, less FLOAT_OPS."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - FLOAT_OPS)


def _pre_process(source: Path, target: Path, large: bool) -> tuple[Path, dict[str, Any]]:
    """onnxruntime's recommended preparation; the unprepared model where it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(
            str(source),
            str(target),
            save_as_external_data=large,
            all_tensors_to_one_file=True,
            external_data_location=target.name + ".data" if large else None,
        )
    except Exception as exc:  # any failure there: quantization works without it, less tuned
        return source, {"quant_pre_process": f"failed ({first_line(exc, 120)}): skipped"}
    return target, {"quant_pre_process": "applied"}


def _reader(input_name: str, batches: list[torch.Tensor]):
    """The calibration batches as onnxruntime's CalibrationDataReader takes them."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._feeds, None)
            if batch is None:
                return None
            return {input_name: batch.cpu().numpy().astype(np.float32)}

    return Reader()


def float_outputs(model: onnx.ModelProto) -> int:
    """Drop the QuantizeLinear/DequantizeLinear pair on the way to each graph output (directly,
    or through float ops of one input such as a baked-in Softmax); returns how many. Static
    quantization would clip the logits to the range seen in calibration: on a sample past that
    range, vit_tiny's error was 15% of the output's scale with the pair, 5% without."""
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    uses: Counter[str] = Counter(name for node in graph.node for name in node.input)
    uses.update(out.name for out in graph.output)
    dropped: list[Any] = []
    for output in graph.output:
        consumer, name = None, output.name  # `consumer` reads `name` (None: the graph output)
        node = producer.get(name)
        while node is not None and node.op_type != "DequantizeLinear":
            live = [i for i in node.input if i and i not in initializers]
            if len(live) != 1 or node.op_type == "QuantizeLinear":
                break
            consumer, name = node, live[0]
            node = producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or uses[name] != 1:
            continue
        quantize = producer.get(node.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear" or uses[node.input[0]] != 1:
            continue
        source = quantize.input[0]
        if source not in producer:  # a graph input: nothing to rewire to
            continue
        if consumer is not None:
            consumer.input[list(consumer.input).index(name)] = source
        else:
            _rename(graph, source, output.name)
        dropped += [node, quantize]
    for node in dropped:
        graph.node.remove(node)
    _drop_unused(graph)
    return len(dropped) // 2


def topological_sort(graph: onnx.GraphProto) -> None:
    """Order `graph`'s nodes so that each comes after the producers of its inputs (the ONNX
    checker's rule): of the nodes ready at each step, the earliest in the current order, so an
    order that already holds is kept."""
    import heapq

    import onnx

    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    waiting = [{producer[name] for name in node.input if name in producer} for node in nodes]
    users: dict[int, list[int]] = {}
    for i, needs in enumerate(waiting):
        for j in needs:
            users.setdefault(j, []).append(i)
    ready = [i for i, needs in enumerate(waiting) if not needs]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for user in users.get(i, []):
            waiting[user].discard(i)
            if not waiting[user]:
                heapq.heappush(ready, user)
    if len(order) < len(nodes):  # a cycle: leave the graph for the checker to refuse
        return
    copies = []
    for i in order:
        copy = onnx.NodeProto()
        copy.CopyFrom(nodes[i])
        copies.append(copy)
    del graph.node[:]
    graph.node.extend(copies)


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for field in (node.input, node.output):
            for i, name in enumerate(field):
                if name == old:
                    field[i] = new
    for info in list(graph.value_info):
        if info.name in (old, new):
            graph.value_info.remove(info)


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Initializers and value infos no node or output refers to any more."""
    used = {name for node in graph.node for name in node.input}
    used |= {name for node in graph.node for name in node.output}
    used |= {out.name for out in graph.output}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    for info in [v for v in graph.value_info if v.name not in used]:
        graph.value_info.remove(info)


def _float16_module():
    """onnxruntime.transformers.float16. That package appends its own folder to sys.path (its
    modules import each other by top-level names, also later, while converting): appended
    last, it shadows nothing already importable."""
    from onnxruntime.transformers import float16

    return float16


def _save(proto: onnx.ModelProto, path: Path, external: bool) -> None:
    import onnx

    if external:
        onnx.save_model(proto, path, save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save_model(proto, path)


@contextmanager
def _scratch(parent: Path) -> Iterator[Path]:
    """A private folder in `parent`, and Python's temporary folder while inside (onnxruntime's
    tools make their own TemporaryDirectory); removed on the way out."""
    folder = Path(tempfile.mkdtemp(prefix=".onnx-quantize-", dir=parent))
    previous = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(folder, ignore_errors=True)
