"""TorchScript (.pt) by tracing or scripting, verified with torch.jit.load."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from timmx.backends import register
from timmx.backends._torch import TorchBackend, torch_runtime
from timmx.backends.base import BackendOptions, ExportContext, Runtime
from timmx.errors import ExportFailedError, first_line


class TorchScriptOptions(BackendOptions):
    method: Literal["trace", "script"] = Field(
        "trace", description="torch.jit.trace (any timm model) or torch.jit.script."
    )


@register
class TorchScriptBackend(TorchBackend):
    name = "torchscript"
    help = "TorchScript module (.pt), verified with torch.jit.load."
    suffix = ".pt"
    Options = TorchScriptOptions
    runtime_name = "torch.jit.load"

    def export(self, ctx: ExportContext, options: TorchScriptOptions) -> list[Path]:
        import torch

        if options.method == "trace":
            scripted = torch.jit.trace(ctx.model, ctx.example_input, check_trace=False)
        else:
            try:
                scripted = torch.jit.script(ctx.model)
            except Exception as exc:
                raise ExportFailedError(
                    f"{ctx.job.model.name} cannot be scripted ({first_line(exc, 120)}): "
                    "use --method trace"
                ) from exc
        scripted = torch.jit.freeze(scripted.eval())
        torch.jit.save(scripted, str(ctx.artifact))
        return [ctx.artifact]

    def load_runtime(self, artifact: Path, options: TorchScriptOptions) -> Runtime:
        import torch

        return torch_runtime(torch.jit.load(str(artifact), map_location="cpu"))
