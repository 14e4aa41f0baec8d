"""ExecuTorch program (.pte), XNNPACK-delegated by default, verified in the ExecuTorch runtime.

ExecuTorch's compiled parts link one exact torch release, so this backend usually runs
`--isolated` in its own image, beside images that pin another torch.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from timmx.backends import register
from timmx.backends._pt2 import (
    check_calibration,
    dynamic_batch_shapes,
    pt2e_quantize,
    require_batch_of_two,
)
from timmx.backends.base import (
    FP32,
    INT8,
    Backend,
    BackendOptions,
    ExportContext,
    Runtime,
    Tolerance,
)
from timmx.contract import ExportJob
from timmx.errors import InvalidInputError

_BOOKKEEPING = {"executorch_call_delegate", "getitem", "<built-in function getitem>"}


class ExecuTorchOptions(BackendOptions):
    delegate: Literal["xnnpack", "portable", "coreml"] = Field(
        "xnnpack",
        description="xnnpack (fast CPU kernels), portable (reference kernels, slow), or coreml "
        "(Apple devices; cannot run here, so numerics are not checked).",
    )
    mode: Literal["fp32", "int8"] = Field(
        "fp32", description="int8: PT2E static quantization calibrated like the litert backend."
    )


@register
class ExecuTorchBackend(Backend):
    name = "executorch"
    help = "ExecuTorch program (.pte), XNNPACK by default, verified in the ExecuTorch runtime."
    suffix = ".pte"
    toolchain = "executorch"
    requires = ("torch", "timm", "executorch")
    install_hint = "pip install executorch (it needs its own exact torch release)"
    Options = ExecuTorchOptions
    runtime_name = "executorch.runtime"
    uses_calibration = True

    def check(self, job: ExportJob, options: ExecuTorchOptions) -> None:
        require_batch_of_two(job, self.name)
        if options.mode == "int8" and options.delegate != "xnnpack":
            raise InvalidInputError("--mode int8 runs on the xnnpack delegate: drop --delegate")
        check_calibration(job, options.mode, calibrated_modes=("int8",))

    def tolerance(self, options: ExecuTorchOptions) -> Tolerance:
        return INT8 if options.mode == "int8" else FP32

    def export(self, ctx: ExportContext, options: ExecuTorchOptions) -> list[Path]:
        import torch

        model, example = ctx.model.cpu(), ctx.example_input.cpu()
        dynamic_shapes = dynamic_batch_shapes(ctx.job)
        if options.mode == "int8":
            model = _quantize(ctx, model, example, dynamic_shapes)
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)
        edge = _lower(program, options.delegate)
        ctx.details.update(
            delegation_summary(edge.exported_program().graph_module, options.delegate)
        )
        ctx.artifact.write_bytes(edge.to_executorch().buffer)
        return [ctx.artifact]

    def load_runtime(self, artifact: Path, options: ExecuTorchOptions) -> Runtime | None:
        if options.delegate == "coreml":
            return None
        import numpy as np
        import torch
        from executorch.runtime import Runtime as ExecuTorchRuntime

        method = ExecuTorchRuntime.get().load_program(str(artifact)).load_method("forward")

        def run(x: np.ndarray) -> np.ndarray:
            return method.execute([torch.from_numpy(x)])[0].float().numpy()

        return run

    def inspect_artifact(self, artifact: Path, options: ExecuTorchOptions) -> dict[str, Any]:
        if options.delegate == "coreml":
            return {"note": "the Core ML delegate runs only on Apple devices: numerics not checked"}
        return {}


def _lower(program, delegate: str):
    from executorch.exir import to_edge_transform_and_lower

    partitioners = []
    if delegate == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        partitioners.append(XnnpackPartitioner())
    elif delegate == "coreml":
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        partitioners.append(CoreMLPartitioner())
    return to_edge_transform_and_lower(program, partitioner=partitioners)


def delegation_summary(graph_module, delegate: str) -> dict[str, Any]:
    """How much of the graph the delegate took, and which ops it left to portable kernels."""
    calls = Counter(
        getattr(node.target, "__name__", str(node.target))
        for node in graph_module.graph.nodes
        if node.op == "call_function"
    )
    delegated = calls.pop("executorch_call_delegate", 0)
    left = {op: n for op, n in sorted(calls.items()) if op not in _BOOKKEEPING}
    return {"delegate": delegate, "delegated_subgraphs": delegated, "non_delegated_ops": left}


def _quantize(ctx: ExportContext, model, example, dynamic_shapes):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True)
    )
    return pt2e_quantize(model, example, quantizer, ctx.calibration_batches(), dynamic_shapes)
