"""torch.export and PT2E helpers shared by the backends that capture with torch.export.

The batch rule and the dynamic `Dim` (torch-export, executorch, onnx, coreml) and the PT2E
static/dynamic quantize step.
torch is imported inside the functions: backend modules stay importable without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from timmx.contract import ExportJob
from timmx.errors import InvalidInputError

if TYPE_CHECKING:
    import torch
    from torch import nn

MAX_DYNAMIC_BATCH = 4096


def require_batch_of_two(job: ExportJob, backend: str) -> None:
    """torch.export specialises a size-1 dimension, so a dynamic batch needs an example of 2."""
    if job.input.dynamic_batch and job.input.batch_size < 2:
        raise InvalidInputError(
            f"{backend} with --dynamic-batch needs an example batch of at least 2 "
            "(torch.export specialises a batch of 1): add --batch-size 2"
        )


def batch_dim(upper: int | None = None) -> Any:
    """torch.export's symbolic batch dimension, 1 to `upper` (4096 by default)."""
    import torch

    return torch.export.Dim("batch", min=1, max=upper or MAX_DYNAMIC_BATCH)


def dynamic_batch_shapes(job: ExportJob) -> tuple[dict[int, Any], ...] | None:
    """torch.export's dynamic_shapes for the one image input, or None for a fixed batch."""
    return ({0: batch_dim()},) if job.input.dynamic_batch else None


def pt2e_quantize(
    model: nn.Module,
    example: torch.Tensor,
    quantizer: Any,
    batches: list[torch.Tensor],
    dynamic_shapes: Any = None,
    fold_quantize: bool = True,
) -> Any:
    """PT2E: capture with torch.export, insert the quantizer's observers, run `batches` through
    them (static ranges; dynamic schemes need one pass), convert. Returns the quantized module."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    captured = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes).module()
    prepared = prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        for batch in batches:
            prepared(batch)
    quantized = convert_pt2e(prepared, fold_quantize=fold_quantize)
    for module in quantized.modules():  # captured from an eval model; say so to the converters
        module.training = False
    return quantized
