"""Run a .tflite artifact in the LiteRT interpreter, float in and float out whatever its IO."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def interpreter_runtime(artifact: Path, nhwc_input: bool):
    """A function NCHW float32 -> float32 outputs; int8 IO is (de)quantized with the tensors'
    own scale and zero point."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(artifact))
    interpreter.allocate_tensors()
    (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()

    def run(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if nhwc_input:
            x = x.transpose(0, 2, 3, 1)
        if list(x.shape) != [int(d) for d in source["shape"]]:
            raise ValueError(f"the artifact takes {list(source['shape'])}, got {list(x.shape)}")
        interpreter.set_tensor(source["index"], quantize(x, source))
        interpreter.invoke()
        return dequantize(interpreter.get_tensor(target["index"]), target)

    return run


def quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float to the input tensor's own type, with its own scale and zero point."""
    import numpy as np

    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    import numpy as np

    if np.dtype(detail["dtype"]).kind == "f":
        return y.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return (y.astype(np.float32) - zero_point) * scale
