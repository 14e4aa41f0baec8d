"""PyTorch eager: the job's own model and checkpoint, rebuilt from the report as export builds
it (with the same baked-in normalisation and softmax), run on the same images."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from timmx.contract import ExportJob
from timmx.errors import CheckpointError, TimmxError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from timmx.modeling import PreparedModel


def identity(job: ExportJob, workspace: Path) -> str:
    """Jobs with the same identity have the same eager model and the same inputs."""
    checkpoint = str(workspace / job.model.checkpoint) if job.model.checkpoint else None
    return "\n".join(
        [
            job.model.model_dump_json(exclude={"checkpoint"}),
            str(checkpoint),
            job.preprocess.model_dump_json(),
            str(job.input.size),
        ]
    )


def rebuild(job: ExportJob, workspace: Path, artifact: Path) -> PreparedModel:
    from timmx.modeling import prepare

    if job.model.checkpoint and not (workspace / job.model.checkpoint).is_file():
        raise CheckpointError(
            f"{artifact}: its checkpoint {workspace / job.model.checkpoint} is gone: eager "
            "(the reference) is the job's own model and checkpoint; put it back to bench"
        )
    # On the CPU, where the bench's images are: an export made with --device cuda included.
    single = job.model_copy(
        update={"input": job.input.model_copy(update={"batch_size": 1}), "device": "cpu"}
    )
    try:
        return prepare(single, workspace)
    except TimmxError as exc:
        raise type(exc)(f"{artifact}: cannot rebuild its model: {exc.message}") from None


def logits(module: torch.nn.Module, x: torch.Tensor, batch: int = 64) -> np.ndarray:
    import numpy as np
    import torch

    outputs = []
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            outputs.append(module(x[start : start + batch]).float().cpu().numpy())
    return np.concatenate(outputs)
