"""What the two backends that need torch alone share: their toolchain, and running the artifact
they load back as a torch module."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from timmx.backends.base import Backend, Runtime

if TYPE_CHECKING:
    import torch


class TorchBackend(Backend):
    """A backend whose artifact torch itself saves and loads (torch.export, TorchScript)."""

    toolchain = "torch"
    requires = ("torch", "timm")


def torch_runtime(module: Callable[[torch.Tensor], torch.Tensor], device: str = "cpu") -> Runtime:
    """Run a loaded module on numpy inputs, in float32, without autograd."""
    import numpy as np
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x).to(device)).float().cpu().numpy()

    return run
