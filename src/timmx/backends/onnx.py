"""ONNX through torch.onnx (the dynamo exporter by default), slimmed, verified in onnxruntime;
float32, or float16 / int8 with onnxruntime's own tools (see _onnx/quantize.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from timmx.backends import register
from timmx.backends._calibrating import (
    CalibratedOptions,
    CalibratingBackend,
    int8_advice,
    per_channel_field,
    require_mode,
)
from timmx.backends._pt2 import dynamic_batch_shapes
from timmx.backends.base import FP16, FP32, INT8, ExportContext, Runtime, Tolerance
from timmx.contract import ExportJob
from timmx.errors import ExportFailedError, InvalidInputError, first_line

# Protobuf cannot hold a single file over 2 GB; bigger models keep weights in a side file.
_EXTERNAL_DATA_BYTES = 1_800_000_000
# How much of the float32 weights' size each mode keeps (for the side-file decision).
_WEIGHT_FRACTION = {"fp32": 1.0, "fp16": 0.5, "dynamic-int8": 0.25, "int8": 0.25}

# Tolerances fit for each mode (relative to max |reference|). Measured at 64x64 on resnet18,
# mobilenetv3_small_100, efficientnet_b0 and vit_tiny (random weights, randomised norms), max
# error over the output's scale on 64 inputs: fp16 (float16 weights and activations) 0.05-0.12%,
# top-1 100%; dynamic int8 2.7-8.7% (efficientnet_b0 the most), top-1 95-100%; int8 on held-out
# samples, calibrated on N(0, 1) or (with --normalize) on pixels in [0, 1]: 2.4-9.7%, top-1
# 95-100% (on the report's own 12 held-out samples: 1.9-10.4%). The int8 modes also need the
# same top-1 class on 80% of the verification inputs: held-out calibration samples, or 16
# seeded ones (see INT8).
TOLERANCES: dict[str, Tolerance] = {
    "fp32": FP32,
    "fp16": FP16,
    "dynamic-int8": replace(INT8, rtol=0.1),
    "int8": INT8,
}


class OnnxOptions(CalibratedOptions):
    opset: int = Field(18, ge=7, le=23, description="ONNX opset version.")
    exporter: Literal["dynamo", "torchscript"] = Field(
        "dynamo", description="torch.onnx exporter: dynamo (torch.export based) or torchscript."
    )
    slim: bool = Field(True, description="Simplify the graph with onnxslim.")
    external_data: bool | None = Field(
        None,
        description="Weights in a side file NAME.onnx.data (--external-data) or inside the "
        ".onnx (--no-external-data, up to protobuf's 2 GB); default: a side file over 1.8 GB.",
    )
    check: bool = Field(True, description="Run the ONNX checker on the saved model.")
    mode: Literal["fp32", "fp16", "dynamic-int8", "int8"] = Field(
        "fp32",
        description="Precision: fp32; fp16 (float16 weights and activations); dynamic-int8 (int8 "
        "weights, activations quantized at run time: small, but slow for convolutions on CPU); "
        "int8 (static QDQ, needs calibration).",
    )
    fp16_io: bool = Field(
        False,
        description="With --mode fp16: float16 model inputs and outputs instead of float32.",
    )
    per_channel: bool = per_channel_field(
        " dynamic-int8 scales convolutions per tensor either way (onnxruntime's dynamic "
        "quantization); the report counts each kind."
    )


@register
class OnnxBackend(CalibratingBackend):
    name = "onnx"
    help = "ONNX model (.onnx), fp32 to int8, verified in onnxruntime."
    suffix = ".onnx"
    noisy_loggers = ("torch.onnx", "onnxscript")
    requires = ("torch", "timm", "onnx", "onnxscript", "onnxslim", "onnxruntime")
    # the oldest tried or shipped
    supported = ("onnxruntime>=1.19", "onnx>=1.23", "onnxscript>=0.7", "onnxslim>=0.1.98")
    Options = OnnxOptions
    runtime_name = "onnxruntime"

    def side_files(self, artifact_name: str) -> tuple[str, ...]:
        return (artifact_name + ".data",)  # external weights (--external-data, over 2 GB)

    def check(self, job: ExportJob, options: OnnxOptions) -> None:
        super().check(job, options)
        if options.fp16_io:
            require_mode("--fp16-io", options.mode, "fp16", "has no float16 inputs")
        if options.mode in ("int8", "dynamic-int8") and options.opset < 11:
            raise InvalidInputError(
                f"--mode {options.mode} needs --opset 11 or later (onnxruntime's quantized ops), "
                f"got --opset {options.opset}: raise --opset"
            )
        if options.mode == "int8" and options.per_channel and options.opset < 13:
            raise InvalidInputError(
                f"--mode int8 scales weights per channel with DequantizeLinear's axis, which "
                f"needs --opset 13 or later (got {options.opset}): raise --opset, or add "
                "--no-per-channel"
            )

    def tolerance(self, options: OnnxOptions) -> Tolerance:
        return TOLERANCES[options.mode]

    def nonfinite_fix(self, options: OnnxOptions) -> str | None:
        if options.mode == "fp16":
            return "the model overflows float16 (values past 65504): use --mode fp32 or int8"
        return None

    def verification_advice(self, options: OnnxOptions) -> str | None:
        if options.mode not in ("int8", "dynamic-int8"):
            return None
        return int8_advice(
            "--mode fp16 (half the size, no calibration) or OpenVINO's default export "
            "(timmx export openvino MODEL)"
        )

    def export(self, ctx: ExportContext, options: OnnxOptions) -> list[Path]:
        import onnx
        import torch

        batches = None
        if options.mode == "int8":  # validated before anything is exported
            batches = self.calibration_batches(ctx, options)
        model, x = ctx.model.cpu(), ctx.example_input.cpu()
        dynamic = ctx.job.input.dynamic_batch
        kwargs: dict = {"opset_version": options.opset, "input_names": ["input"]}
        kwargs["output_names"] = ["output"]
        if options.exporter == "dynamo":
            if dynamic:
                # torch.export specialises a size-1 dimension: trace with a batch of 2.
                x = x.repeat(2, 1, 1, 1) if x.shape[0] == 1 else x
                kwargs["dynamic_shapes"] = dynamic_batch_shapes(ctx.job)
            program = torch.onnx.export(
                model, (x,), dynamo=True, optimize=True, verbose=False, **kwargs
            )
            proto = program.model_proto
        else:
            if dynamic:
                kwargs["dynamic_axes"] = {"input": {0: "batch"}, "output": {0: "batch"}}
            buffer = _export_legacy(model, x, kwargs)
            proto = onnx.load_from_string(buffer)

        if options.slim:
            import onnxslim

            proto = onnxslim.slim(proto)
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        if options.mode != "fp32":
            from timmx.backends._onnx import quantize

            proto, facts = quantize.convert(
                proto,
                options.mode,
                ctx.artifact.parent,
                batches=batches,
                per_channel=options.per_channel,
                fp16_io=options.fp16_io,
                large=size > _EXTERNAL_DATA_BYTES,
            )
            ctx.details.update(facts)
            size = int(size * _WEIGHT_FRACTION[options.mode])
        external = options.external_data
        if external is False and size > _EXTERNAL_DATA_BYTES:
            raise InvalidInputError(
                f"{ctx.job.model.name} has {size / 1e9:.1f} GB of weights, more than one ONNX "
                "file holds (protobuf's 2 GB): drop --no-external-data"
            )
        files = [ctx.artifact]
        if external or (external is None and size > _EXTERNAL_DATA_BYTES):
            data = ctx.artifact.with_name(ctx.artifact.name + ".data")
            onnx.save_model(proto, ctx.artifact, save_as_external_data=True, location=data.name)
            files.append(data)
        else:
            onnx.save_model(proto, ctx.artifact)
        if options.check:
            _check(ctx.artifact)
        if options.mode != "fp32":
            from timmx.backends._onnx.inspect import check_precision

            check_precision(ctx.artifact, options.mode)
        return files

    def load_runtime(self, artifact: Path, options: OnnxOptions) -> Runtime:
        import numpy as np
        import onnxruntime as ort

        session_options = ort.SessionOptions()
        session_options.log_severity_level = 3
        session = ort.InferenceSession(
            str(artifact), session_options, providers=["CPUExecutionProvider"]
        )
        source = session.get_inputs()[0]
        # --fp16-io: the model takes and returns float16; compared in float32.
        dtype = np.float16 if source.type == "tensor(float16)" else np.float32

        def run(x: np.ndarray) -> np.ndarray:
            return np.asarray(session.run(None, {source.name: x.astype(dtype)})[0], np.float32)

        return run

    def inspect_artifact(self, artifact: Path, options: OnnxOptions) -> dict[str, Any]:
        from timmx.backends._onnx.inspect import describe

        return {"mode": options.mode, **describe(artifact)}


def _check(artifact: Path) -> None:
    """onnx.checker on the saved file (by path, so that external data is read too)."""
    import onnx

    try:
        onnx.checker.check_model(str(artifact), full_check=False)
    except onnx.checker.ValidationError as exc:
        raise ExportFailedError(
            f"the ONNX checker refused the exported model ({first_line(exc, 160)}): "
            "--no-check skips the checker"
        ) from None


def _export_legacy(model, x, kwargs) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, dynamo=False, **kwargs)
    return buffer.getvalue()
