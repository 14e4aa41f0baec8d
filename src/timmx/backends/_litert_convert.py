"""PyTorch to LiteRT flatbuffer bytes with litert-torch, in each precision mode.

fp32: plain conversion. fp16: float16 weights (float-cast recipe of ai-edge-quantizer, compute
stays float32). dynamic-int8: PT2E dynamic quantization (int8 weights per channel, activations
quantized at run time). int8: PT2E static quantization, activation ranges observed on the
calibration batches. `litert_torch.convert(module, args, quant_config=...)`; no TensorFlow.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from torch import nn

Mode = Literal["fp32", "fp16", "dynamic-int8", "int8"]
_PROGRESS = "LITERT_TORCH_SHOW_PROGRESS"


def convert(
    model: nn.Module,
    example: torch.Tensor,
    mode: Mode,
    calibration: list[torch.Tensor] | None = None,
) -> bytes:
    """The .tflite bytes of `model` traced on `example` (a fixed shape), quantized per `mode`."""
    import litert_torch

    with _quiet():
        if mode == "fp32":
            edge = litert_torch.convert(model, (example,))
        elif mode == "fp16":
            from litert_torch.generative.quantize import quant_recipes

            edge = litert_torch.convert(
                model, (example,), quant_config=quant_recipes.full_fp16_recipe()
            )
        else:
            module, quant_config = _pt2e(model, example, mode == "int8", calibration or [])
            edge = litert_torch.convert(module, (example,), quant_config=quant_config)
        return bytes(edge.model_content())


def _pt2e(model: nn.Module, example: torch.Tensor, static: bool, batches: list[torch.Tensor]):
    """Quantize with PT2E: export, insert observers, run the calibration batches, convert."""
    import torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    scheme = pt2e_quantizer.get_symmetric_quantization_config(
        is_per_channel=True, is_dynamic=not static
    )
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(scheme)
    graph = torch.export.export(model, (example,)).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for batch in batches if static else [example]:
            prepared(batch)
    quantized = convert_pt2e(prepared, fold_quantize=False)
    for module in quantized.modules():  # traced from an eval model; say so to the converter
        module.training = False
    return quantized, QuantConfig(pt2e_quantizer=quantizer)


@contextmanager
def _quiet() -> Iterator[None]:
    """litert-torch and ai-edge-quantizer print progress and sizes on stdout, where `--json`
    writes the report: keep them off it."""
    previous = os.environ.get(_PROGRESS)
    os.environ[_PROGRESS] = "n"
    try:
        with redirect_stdout(io.StringIO()):
            yield
    finally:
        if previous is None:
            os.environ.pop(_PROGRESS, None)
        else:
            os.environ[_PROGRESS] = previous
