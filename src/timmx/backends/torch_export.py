"""torch.export ExportedProgram (.pt2), verified with torch.export.load."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from timmx.backends import register
from timmx.backends._pt2 import dynamic_batch_shapes, require_batch_of_two
from timmx.backends._torch import TorchBackend, torch_runtime
from timmx.backends.base import BackendOptions, ExportContext, Runtime
from timmx.contract import ExportJob


class TorchExportOptions(BackendOptions):
    strict: bool = Field(False, description="Trace with torch.export's strict (TorchDynamo) mode.")


@register
class TorchExportBackend(TorchBackend):
    name = "torch-export"
    help = "torch.export ExportedProgram (.pt2), verified with torch.export.load."
    suffix = ".pt2"
    Options = TorchExportOptions
    runtime_name = "torch.export.load"

    def check(self, job: ExportJob, options: TorchExportOptions) -> None:
        require_batch_of_two(job, self.name)

    def export(self, ctx: ExportContext, options: TorchExportOptions) -> list[Path]:
        import torch

        program = torch.export.export(
            ctx.model,
            (ctx.example_input,),
            dynamic_shapes=dynamic_batch_shapes(ctx.job),
            strict=options.strict,
        )
        torch.export.save(program, ctx.artifact)
        return [ctx.artifact]

    def load_runtime(self, artifact: Path, options: TorchExportOptions) -> Runtime:
        import torch

        module = torch.export.load(artifact).module()
        buffer = next(iter(module.buffers()), None)
        return torch_runtime(module, buffer.device if buffer is not None else "cpu")
