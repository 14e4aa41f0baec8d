"""PyTorch to LiteRT flatbuffer bytes with litert-torch, in each precision mode.

fp32: plain conversion. fp16: float16 weights (float-cast recipe of ai-edge-quantizer, compute
stays float32). dynamic-int8: PT2E dynamic quantization (int8 weights per channel, activations
quantized at run time). int8: PT2E static quantization, activation ranges observed on the
calibration batches. `litert_torch.convert(module, args, quant_config=...)`; no TensorFlow.
The runner keeps the converters' progress output quiet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from torch import nn

Mode = Literal["fp32", "fp16", "dynamic-int8", "int8"]


def convert(
    model: nn.Module,
    example: torch.Tensor,
    mode: Mode,
    calibration: list[torch.Tensor] | None = None,
    per_channel: bool = True,
) -> bytes:
    """The .tflite bytes of `model` traced on `example` (a fixed shape), quantized per `mode`
    (the int8 modes' weights per channel, or per tensor)."""
    import litert_torch

    if mode == "fp32":
        edge = litert_torch.convert(model, (example,))
    elif mode == "fp16":
        from litert_torch.generative.quantize import quant_recipes

        edge = litert_torch.convert(
            model, (example,), quant_config=quant_recipes.full_fp16_recipe()
        )
    else:  # PT2E with litert-torch's quantizer: static ranges from `calibration`, or dynamic
        from litert_torch.quantize import pt2e_quantizer
        from litert_torch.quantize.quant_config import QuantConfig

        from timmx.backends._pt2 import pt2e_quantize

        static = mode == "int8"
        scheme = pt2e_quantizer.get_symmetric_quantization_config(
            is_per_channel=per_channel, is_dynamic=not static
        )
        quantizer = pt2e_quantizer.PT2EQuantizer().set_global(scheme)
        batches = (calibration or []) if static else [example]
        module = pt2e_quantize(model, example, quantizer, batches, fold_quantize=False)
        quant_config = QuantConfig(pt2e_quantizer=quantizer)
        edge = litert_torch.convert(module, (example,), quant_config=quant_config)
    return bytes(edge.model_content())
