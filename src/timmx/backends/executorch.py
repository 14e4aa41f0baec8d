"""ExecuTorch program (.pte), XNNPACK-delegated by default, verified in the ExecuTorch runtime.

ExecuTorch's compiled parts link one exact torch release, so this backend usually runs
`--isolated` in its own image, beside images that pin another torch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from timmx.backends import register
from timmx.backends._calibrating import (
    CalibratedOptions,
    CalibratingBackend,
    calibration_batches,
    per_channel_field,
)
from timmx.backends._pt2 import batch_dim, pt2e_quantize, require_batch_of_two
from timmx.backends.base import FP32, INT8, ExportContext, Runtime, Tolerance
from timmx.contract import ExportJob
from timmx.errors import BackendUnavailableError, InvalidInputError

_BOOKKEEPING = {"executorch_call_delegate", "getitem", "<built-in function getitem>"}
# Delegates that run only on Apple devices: converted here, numerics not checked.
APPLE_ONLY = ("coreml", "mlx")


class ExecuTorchOptions(CalibratedOptions):
    delegate: Literal["xnnpack", "portable", "coreml", "mlx"] = Field(
        "xnnpack",
        description="xnnpack (fast CPU kernels), portable (reference kernels, slow), coreml "
        "(Apple Neural Engine/GPU/CPU) or mlx (Apple GPU, fp32, static batch); coreml and mlx "
        "run only on Apple devices, so their numerics are not checked.",
    )
    mode: Literal["fp32", "dynamic-int8", "int8"] = Field(
        "fp32",
        description="dynamic-int8: int8 weights, activations quantized at run time (xnnpack, "
        "no calibration); int8: PT2E static quantization calibrated like the litert backend "
        "(xnnpack or coreml).",
    )
    compute_precision: Literal["float16", "float32"] | None = Field(
        None, description="--delegate coreml: compute precision (Core ML's default float16)."
    )
    per_channel: bool = per_channel_field()
    batch_upper_bound: int | None = Field(
        None,
        ge=1,
        description="Largest batch a --dynamic-batch program accepts (ExecuTorch plans memory "
        "for it; verified there); default: torch.export's bound.",
    )


@register
class ExecuTorchBackend(CalibratingBackend):
    name = "executorch"
    help = "ExecuTorch program (.pte), XNNPACK by default, verified in the ExecuTorch runtime."
    suffix = ".pte"
    requires = ("torch", "timm", "executorch")
    supported = ("executorch>=1.5",)  # the oldest tried or shipped
    install_hint = "pip install executorch (it needs its own exact torch release)"
    Options = ExecuTorchOptions
    runtime_name = "executorch.runtime"

    def check(self, job: ExportJob, options: ExecuTorchOptions) -> None:
        require_batch_of_two(job, self.name)
        check_delegate(job, options)
        super().check(job, options)
        upper = options.batch_upper_bound
        if upper is not None:
            if not job.input.dynamic_batch:
                raise InvalidInputError("--batch-upper-bound needs --dynamic-batch")
            if upper < job.input.batch_size:
                raise InvalidInputError(
                    f"--batch-upper-bound {upper} is below --batch-size {job.input.batch_size}"
                )

    def tolerance(self, options: ExecuTorchOptions) -> Tolerance:
        return FP32 if options.mode == "fp32" else INT8

    def verify_batch_sizes(self, job: ExportJob) -> list[int]:
        sizes = super().verify_batch_sizes(job)
        upper = job.options.get("batch_upper_bound")
        return [*sizes, upper] if upper and upper not in sizes else sizes

    def export(self, ctx: ExportContext, options: ExecuTorchOptions) -> list[Path]:
        import torch

        model, example = ctx.model.cpu(), ctx.example_input.cpu()
        dynamic_shapes = None
        if ctx.job.input.dynamic_batch:
            dynamic_shapes = ({0: batch_dim(options.batch_upper_bound)},)
        if options.mode != "fp32":
            model = _quantize(ctx, options, model, example, dynamic_shapes)
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)
        with keep_batch_range(program, dynamic_shapes is not None):
            edge = _lower(program, options)
            ctx.details.update(
                delegation_summary(edge.exported_program().graph_module, options.delegate)
            )
            buffer = edge.to_executorch().buffer
        ctx.artifact.write_bytes(buffer)
        return [ctx.artifact]

    def may_lack_runtime(self, options: ExecuTorchOptions) -> bool:
        return options.delegate in APPLE_ONLY

    def load_runtime(self, artifact: Path, options: ExecuTorchOptions) -> Runtime | None:
        if options.delegate in APPLE_ONLY:
            return None
        import numpy as np
        import torch
        from executorch.runtime import Runtime as ExecuTorchRuntime

        method = ExecuTorchRuntime.get().load_program(str(artifact)).load_method("forward")

        def run(x: np.ndarray) -> np.ndarray:
            return method.execute([torch.from_numpy(x)])[0].float().numpy()

        return run

    def inspect_artifact(self, artifact: Path, options: ExecuTorchOptions) -> dict[str, Any]:
        if options.delegate in APPLE_ONLY:
            return {
                "note": f"the {_DELEGATE_NAMES[options.delegate]} delegate runs only on Apple "
                "devices: the program was converted and saved, its numerics were not checked"
            }
        return {}


_DELEGATE_NAMES = {"coreml": "Core ML", "mlx": "MLX"}


def check_delegate(job: ExportJob, options: ExecuTorchOptions) -> None:
    """What each delegate takes: refused before any model is built."""
    delegate, mode = options.delegate, options.mode
    if mode == "int8" and delegate not in ("xnnpack", "coreml"):
        raise InvalidInputError(
            f"--mode int8 quantizes for the xnnpack or coreml delegate, not {delegate}: "
            "use --delegate xnnpack or coreml"
        )
    if mode == "dynamic-int8":
        if delegate != "xnnpack":
            raise InvalidInputError(
                f"--mode dynamic-int8 runs on the xnnpack delegate, not {delegate}: "
                "drop --delegate, or use --mode int8 (coreml) or fp32"
            )
        if job.input.dynamic_batch:
            raise InvalidInputError(
                "--mode dynamic-int8 fixes the batch size (its activation quantization "
                "specialises it): drop --dynamic-batch, or use --mode int8 or fp32"
            )
    if delegate == "mlx":
        if mode != "fp32":
            raise InvalidInputError(
                "--delegate mlx takes --mode fp32 only (its quantization covers linear and "
                "embedding layers, not convolutions): drop --mode"
            )
        if job.input.dynamic_batch:
            raise InvalidInputError(
                "--delegate mlx fixes the batch size (it specialises reshapes to the export's "
                "batch): drop --dynamic-batch"
            )
    if options.compute_precision is not None and delegate != "coreml":
        raise InvalidInputError(
            "--compute-precision sets the Core ML delegate's precision: add --delegate coreml "
            "or drop it"
        )


def _lower(program, options: ExecuTorchOptions):
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    partitioners = []
    if options.delegate == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        partitioners.append(XnnpackPartitioner())
    elif options.delegate == "coreml":
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        specs = _coreml_compile_specs(options)
        partitioners.append(
            CoreMLPartitioner(compile_specs=specs) if specs else CoreMLPartitioner()
        )
    elif options.delegate == "mlx":
        try:
            from executorch.backends.mlx import MLXPartitioner
        except ImportError:  # its serializer is generated at build time, on macOS only
            raise BackendUnavailableError(
                "--delegate mlx needs executorch's MLX serializer, which its Linux wheels do not "
                "ship: export for MLX on macOS (pip install executorch there), or use --delegate "
                "xnnpack or coreml"
            ) from None
        partitioners.append(MLXPartitioner())
    config = EdgeCompileConfig(_check_ir_validity=False) if options.mode != "fp32" else None
    return to_edge_transform_and_lower(program, partitioner=partitioners, compile_config=config)


def _coreml_compile_specs(options: ExecuTorchOptions) -> list[Any] | None:
    """The Core ML delegate's settings: compute precision; iOS17 for a quantized program."""
    if options.compute_precision is None and options.mode != "int8":
        return None
    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import CoreMLBackend

    kwargs: dict[str, Any] = {}
    if options.compute_precision is not None:
        kwargs["compute_precision"] = (
            ct.precision.FLOAT32 if options.compute_precision == "float32" else ct.precision.FLOAT16
        )
    if options.mode == "int8":
        kwargs["minimum_deployment_target"] = ct.target.iOS17
    return CoreMLBackend.generate_compile_specs(**kwargs)


@contextmanager
def keep_batch_range(program: Any, dynamic: bool) -> Iterator[None]:
    """Keep the batch range [1, upper bound] intact through ExecuTorch's lowering (upstream
    timmx's fix): its passes re-trace convolutions whose heuristics guard on the batch, which
    narrows the range the memory plan is made for. Touches torch's ShapeEnv; where that is not
    there, a no-op (verification at the upper bound still catches a narrowed range)."""
    if not dynamic:
        yield
        return
    import torch

    batch = next(
        (
            node.meta["val"].shape[0]
            for node in program.graph.nodes
            if node.op == "placeholder"
            and isinstance(node.meta.get("val"), torch.Tensor)
            and node.meta["val"].dim()
            and isinstance(node.meta["val"].shape[0], torch.SymInt)
        ),
        None,
    )
    try:
        from torch.utils._sympy.value_ranges import ValueRanges

        shape_env = batch.node.shape_env
        upper = shape_env.var_to_range[batch.node.expr].upper
        shape_env.var_to_range[batch.node.expr] = ValueRanges(1, upper)
        guards = shape_env.suppress_guards()
    except (AttributeError, ImportError, KeyError):
        guards = nullcontext()
    with guards:
        yield


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


def _quantize(ctx: ExportContext, options: ExecuTorchOptions, model, example, dynamic_shapes):
    """PT2E: static int8 calibrated on the calibration batches (XNNPACK's or Core ML's
    quantizer), or dynamic int8 (XNNPACK, one pass over the example)."""
    if options.mode == "dynamic-int8":
        quantizer = _xnnpack_quantizer(options.per_channel, dynamic=True)
        return pt2e_quantize(model, example, quantizer, [example])
    if options.delegate == "coreml":
        quantizer = _coreml_quantizer(options.per_channel)
    else:
        quantizer = _xnnpack_quantizer(options.per_channel, dynamic=False)
    batches = calibration_batches(ctx, options.calibration_mean, options.calibration_std)
    return pt2e_quantize(model, example, quantizer, batches, dynamic_shapes)


def _xnnpack_quantizer(per_channel: bool, dynamic: bool):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=dynamic)
    return XNNPACKQuantizer().set_global(config)


def _coreml_quantizer(per_channel: bool):
    """Core ML's PT2E quantizer: int8 weights, uint8 activations (upstream timmx's settings)."""
    from coremltools.optimize.torch.quantization import LinearQuantizerConfig
    from executorch.backends.apple.coreml.quantizer import CoreMLQuantizer

    config = LinearQuantizerConfig.from_dict(
        {
            "global_config": {
                "weight_dtype": "qint8",
                "activation_dtype": "quint8",
                "weight_per_channel": per_channel,
            }
        }
    )
    return CoreMLQuantizer(config)
