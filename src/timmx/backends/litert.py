"""LiteRT (.tflite) through litert-torch, fp32 to full int8, verified in the LiteRT interpreter."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from timmx.backends import register
from timmx.backends._calibrating import (
    CalibratedOptions,
    CalibratingBackend,
    per_channel_field,
    require_mode,
)
from timmx.backends.base import FP32, INT8, ExportContext, Runtime, Tolerance
from timmx.contract import ExportJob
from timmx.errors import ExportFailedError, InvalidInputError

# Tolerances fit for each mode (relative to max |reference|). Measured on resnet18,
# mobilenetv3_small_100 and vit_tiny (random weights, randomised norms): fp16 < 1e-3, dynamic
# int8 < 3%, int8 < 4% of the output's scale. The int8 modes also need the same top-1 class on
# 80% of the verification inputs: held-out calibration samples, or 16 seeded ones (see INT8).
TOLERANCES: dict[str, Tolerance] = {
    "fp32": FP32,
    "fp16": Tolerance(atol=1e-2, rtol=1e-2, min_top1=0.9),
    "dynamic-int8": replace(INT8, rtol=0.1),
    "int8": INT8,
}


class LiteRTOptions(CalibratedOptions):
    mode: Literal["fp32", "fp16", "dynamic-int8", "int8"] = Field(
        "fp32",
        description="Precision: fp32; fp16 weights; dynamic-int8 (int8 weights, activations "
        "quantized at run time); int8 (weights and activations, needs calibration).",
    )
    nhwc_input: bool = Field(
        False, description="Take channels-last (N, H, W, C) input instead of (N, C, H, W)."
    )
    int8_io: bool = Field(
        False,
        description="With --mode int8: int8 model inputs and outputs (quantized with the "
        "tensors' own scale and zero point) instead of float32.",
    )
    per_channel: bool = per_channel_field()


@register
class LiteRTBackend(CalibratingBackend):
    name = "litert"
    help = "LiteRT / TFLite flatbuffer (.tflite), fp32 to full int8, verified in LiteRT."
    suffix = ".tflite"
    noisy_loggers = ("absl",)
    # litert-torch's progress bars (read at each call, unlike tqdm's own variables).
    quiet_environment: ClassVar[dict[str, str]] = {"LITERT_TORCH_SHOW_PROGRESS": "n"}
    requires = ("torch", "timm", "litert-torch", "ai-edge-litert")
    supported = ("ai-edge-litert>=2.2", "litert-torch>=0.9.4")  # the oldest tried or shipped
    Options = LiteRTOptions
    runtime_name = "ai-edge-litert interpreter"

    def check(self, job: ExportJob, options: LiteRTOptions) -> None:
        super().check(job, options)
        if options.int8_io:
            require_mode("--int8-io", options.mode, "int8", "has float inputs")
        pre = job.preprocess
        baked = [f for f, on in (("--normalize", pre.normalize), ("--softmax", pre.softmax)) if on]
        if options.int8_io and baked:
            raise InvalidInputError(
                f"--int8-io cannot be combined with {' and '.join(baked)}: baked-in pre/post-"
                "processing runs in float at the model's edges, so those cannot be int8; drop "
                "one (int8 inputs carry their own scale and zero point)"
            )
        if job.input.dynamic_batch:
            raise InvalidInputError(
                "litert artifacts have a fixed batch size (litert-torch cannot convert a "
                "dynamic batch here): drop --dynamic-batch and set --batch-size"
            )

    def tolerance(self, options: LiteRTOptions) -> Tolerance:
        return TOLERANCES[options.mode]

    def export(self, ctx: ExportContext, options: LiteRTOptions) -> list[Path]:
        from timmx.backends._litert import convert, flatbuffer

        model, example = ctx.model.cpu().eval(), ctx.example_input.cpu()
        batches = None
        if options.mode == "int8":  # validated before anything is converted
            batches = self.calibration_batches(ctx, options)
        if options.nhwc_input:
            from litert_torch import to_channel_last_io

            model = to_channel_last_io(model, args=[0]).eval()
            example = example.permute(0, 2, 3, 1).contiguous()
            batches = [b.permute(0, 2, 3, 1).contiguous() for b in batches or []] or None
        data = convert.convert(model, example, options.mode, batches, options.per_channel)
        if options.mode == "int8":
            data = flatbuffer.int8_io(data) if options.int8_io else flatbuffer.float_io(data)
        ctx.artifact.write_bytes(data)
        _check_precision(ctx.artifact, options)
        return [ctx.artifact]

    def load_runtime(self, artifact: Path, options: LiteRTOptions) -> Runtime:
        from timmx.backends._litert.runtime import interpreter_runtime

        return interpreter_runtime(artifact, options.nhwc_input)

    def inspect_artifact(self, artifact: Path, options: LiteRTOptions) -> dict[str, Any]:
        from timmx.backends._litert import flatbuffer

        facts = flatbuffer.describe(artifact)
        facts["mode"] = options.mode
        facts["layout"] = "NHWC" if options.nhwc_input else "NCHW"
        if options.mode in ("int8", "dynamic-int8"):
            facts["weight_scales"] = "per channel" if options.per_channel else "per tensor"
        return facts


def _check_precision(artifact: Path, options: LiteRTOptions) -> None:
    """A mode that silently fell back to float32 weights is a failed export, not a success."""
    from timmx.backends._litert import flatbuffer

    wanted = {"fp16": "float16", "dynamic-int8": "int8", "int8": "int8"}.get(options.mode)
    if wanted is None:
        return
    types = flatbuffer.describe(artifact)["constant_types"]
    if not types.get(wanted):
        raise ExportFailedError(
            f"litert-torch produced no {wanted} weights for --mode {options.mode} "
            f"(constants: {types or 'none'}): this model's ops may not be quantizable there"
        )
