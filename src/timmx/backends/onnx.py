"""ONNX through torch.onnx (the dynamo exporter by default), slimmed, verified in onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from timmx.backends import register
from timmx.backends._pt2 import dynamic_batch_shapes
from timmx.backends.base import Backend, BackendOptions, ExportContext, Runtime
from timmx.errors import ExportFailedError, InvalidInputError, first_line

# Protobuf cannot hold a single file over 2 GB; bigger models keep weights in a side file.
_EXTERNAL_DATA_BYTES = 1_800_000_000


class OnnxOptions(BackendOptions):
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


@register
class OnnxBackend(Backend):
    name = "onnx"
    help = "ONNX model (.onnx), verified in onnxruntime."
    suffix = ".onnx"
    toolchain = "onnx"
    requires = ("torch", "timm", "onnx", "onnxscript", "onnxslim", "onnxruntime")
    install_hint = "pip install 'timmx[onnx]'"
    Options = OnnxOptions
    runtime_name = "onnxruntime"

    def export(self, ctx: ExportContext, options: OnnxOptions) -> list[Path]:
        import onnx
        import torch

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
        return files

    def load_runtime(self, artifact: Path, options: OnnxOptions) -> Runtime:
        import numpy as np
        import onnxruntime as ort

        session_options = ort.SessionOptions()
        session_options.log_severity_level = 3
        session = ort.InferenceSession(
            str(artifact), session_options, providers=["CPUExecutionProvider"]
        )
        input_name = session.get_inputs()[0].name

        def run(x: np.ndarray) -> np.ndarray:
            return session.run(None, {input_name: x.astype(np.float32)})[0]

        return run


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
