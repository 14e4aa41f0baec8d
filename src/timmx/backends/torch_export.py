"""torch.export ExportedProgram (.pt2), verified with torch.export.load."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from timmx.backends import register
from timmx.backends.base import Backend, BackendOptions, ExportContext, Runtime
from timmx.contract import ExportJob
from timmx.errors import InvalidInputError


class TorchExportOptions(BackendOptions):
    strict: bool = Field(False, description="Trace with torch.export's strict (TorchDynamo) mode.")


@register
class TorchExportBackend(Backend):
    name = "torch-export"
    help = "torch.export ExportedProgram (.pt2), verified with torch.export.load."
    suffix = ".pt2"
    toolchain = "torch"
    requires = ("torch", "timm")
    install_hint = "pip install 'timmx[torch]'"
    Options = TorchExportOptions
    runtime_name = "torch.export.load"

    def check(self, job: ExportJob, options: TorchExportOptions) -> None:
        if job.input.dynamic_batch and job.input.batch_size < 2:
            raise InvalidInputError(
                "torch-export with --dynamic-batch needs an example batch of at least 2 "
                "(torch.export specialises a batch of 1): add --batch-size 2"
            )

    def export(self, ctx: ExportContext, options: TorchExportOptions) -> list[Path]:
        import torch

        dynamic_shapes = None
        if ctx.job.input.dynamic_batch:
            dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},)
        program = torch.export.export(
            ctx.model, (ctx.example_input,), dynamic_shapes=dynamic_shapes, strict=options.strict
        )
        torch.export.save(program, ctx.artifact)
        return [ctx.artifact]

    def load_runtime(self, artifact: Path, options: TorchExportOptions) -> Runtime:
        import numpy as np
        import torch

        module = torch.export.load(artifact).module()
        device = next(iter(module.buffers()), None)
        device = device.device if device is not None else torch.device("cpu")

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(x).to(device)).float().cpu().numpy()

        return run
