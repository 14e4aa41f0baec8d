"""Apple Core AI asset (.aimodel, a folder) through coreai-torch, verified in coreai.runtime.

coreai-torch converts a torch.export program on any platform. coreai-core ships its runtime
inside the package: off macOS (and on macOS before the Core AI framework) `AIModelAsset
.executable()` lowers the asset to ODIX and runs it on the CPU; on macOS 27+ the OS framework
runs the asset itself, here restricted to the CPU. Either way the saved asset is compared with
PyTorch. The asset is also read back (entrypoint, input and output names, dtypes and shapes)
and checked against what was exported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from timmx.backends import register
from timmx.backends._pt2 import dynamic_batch_shapes, require_batch_of_two
from timmx.backends.base import Backend, BackendOptions, ExportContext, Runtime
from timmx.contract import ExportJob

SUFFIX = ".aimodel"


@register
class CoreAIBackend(Backend):
    name = "coreai"
    help = "Apple Core AI asset (.aimodel), verified in coreai.runtime."
    suffix = SUFFIX
    folder_suffixes = (SUFFIX,)
    requires = ("torch", "timm", "coreai-torch")
    supported = ("coreai-torch>=0.4.3", "coreai-core>=1.0.0b3")  # the oldest tried or shipped
    Options = BackendOptions
    runtime_name = "coreai.runtime"

    def check(self, job: ExportJob, options: BackendOptions) -> None:
        require_batch_of_two(job, self.name)

    def export(self, ctx: ExportContext, options: BackendOptions) -> list[Path]:
        import torch

        from timmx.backends._coreai import asset
        from timmx.backends._coreai.convert import convert, import_coreai_torch

        coreai_torch, warning = import_coreai_torch()
        if warning:
            checked = " (this export is verified numerically)" if ctx.job.verify.enabled else ""
            ctx.warn(warning + checked)
        model, example = ctx.model.cpu(), ctx.example_input.cpu()
        program = torch.export.export(
            model, (example,), dynamic_shapes=dynamic_batch_shapes(ctx.job)
        )
        expected = asset.expected_io(program)
        converted = convert(coreai_torch, program, ctx.job.model.name)
        converted.save_asset(ctx.artifact, metadata=asset.metadata(ctx))
        asset.check_saved(ctx.artifact, expected)
        return [ctx.artifact]

    def load_runtime(self, artifact: Path, options: BackendOptions) -> Runtime:
        from timmx.backends._coreai.runtime import open_runtime

        return open_runtime(artifact)

    def inspect_artifact(self, artifact: Path, options: BackendOptions) -> dict[str, Any]:
        from timmx.backends._coreai.asset import describe
        from timmx.backends._coreai.runtime import describe_runtime

        details = describe(artifact)
        details["evaluator"], details["note"] = describe_runtime()
        return details
