"""Open an artifact in its own runtime with a set number of threads.

The backends' `load_runtime` (what verification runs) is used as it is, except where the
runtime takes its thread count when it is opened: onnxruntime, OpenVINO and LiteRT are opened
here the same way, with `threads` added. Each runtime takes NCHW float32 and returns float32
scores; int8 or channels-last inputs are converted inside, as verification converts them.
"""

from __future__ import annotations

import platform
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timmx.backends import get_backend
from timmx.backends.base import Runtime
from timmx.errors import InvalidInputError


@dataclass(frozen=True)
class Opened:
    run: Runtime
    name: str  # what runs it, as the report names it
    threads: int  # the threads it really uses
    representative: bool  # False: a reference evaluator, its speed says nothing


def open_runtime(backend_name: str, artifact: Path, raw: dict[str, Any], threads: int) -> Opened:
    backend = get_backend(backend_name)
    options = backend.parse_options(raw)
    opener = _OPENERS.get(backend_name)
    if opener is not None:
        return Opened(opener(artifact, raw, threads), backend.runtime_name, threads, True)
    with torch_threads(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # loaders' deprecation notices (torch.jit.load)
        run = backend.load_runtime(artifact, options)
    if run is None:
        raise InvalidInputError(
            f"{artifact}: the {backend_name} artifact has no runtime on this platform "
            f"({platform.system()}) to bench it in"
        )
    representative = not (backend_name == "coreml" and platform.system() != "Darwin")
    used = backend.runtime_threads or threads
    return Opened(_in_torch_threads(run, threads), backend.runtime_name, used, representative)


@contextmanager
def torch_threads(threads: int):
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _in_torch_threads(run: Runtime, threads: int) -> Runtime:
    import torch

    def call(x):
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return run(x)

    return call


def _onnx(artifact: Path, raw: dict[str, Any], threads: int) -> Runtime:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(artifact), options, providers=["CPUExecutionProvider"])
    source = session.get_inputs()[0]
    dtype = np.float16 if source.type == "tensor(float16)" else np.float32
    name = source.name

    def run(x: np.ndarray) -> np.ndarray:
        if x.dtype != dtype:
            x = x.astype(dtype)
        return np.asarray(session.run(None, {name: x})[0], np.float32)

    return run


def _openvino(artifact: Path, raw: dict[str, Any], threads: int) -> Runtime:
    import numpy as np

    from timmx.backends._openvino.convert import import_openvino
    from timmx.backends._openvino.runtime import HINT, VERIFIED_HINT

    ov = import_openvino()
    config = {HINT: VERIFIED_HINT, "INFERENCE_NUM_THREADS": threads}
    compiled = ov.Core().compile_model(str(artifact), "CPU", config)
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(x: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})[output])

    return run


def _litert(artifact: Path, raw: dict[str, Any], threads: int) -> Runtime:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from timmx.backends._litert.runtime import dequantize, quantize

    interpreter = Interpreter(model_path=str(artifact), num_threads=threads)
    interpreter.allocate_tensors()
    (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()
    nhwc = bool(raw.get("nhwc_input"))
    shape = [[int(d) for d in source["shape"]]]  # the input's current shape

    def run(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if nhwc:
            x = x.transpose(0, 2, 3, 1)
        if list(x.shape) != shape[0]:  # another batch (a dynamic-batch artifact)
            interpreter.resize_tensor_input(source["index"], list(x.shape))
            interpreter.allocate_tensors()
            shape[0] = list(x.shape)
        interpreter.set_tensor(source["index"], quantize(x, source))
        interpreter.invoke()
        return dequantize(interpreter.get_tensor(target["index"]), target)

    return run


_OPENERS: dict[str, Callable[[Path, dict[str, Any], int], Runtime]] = {
    "onnx": _onnx,
    "openvino": _openvino,
    "litert": _litert,
}
