"""MNN (.mnn) through MNN's converter from the ONNX backend's export, verified in MNN's own
runtime (the `MNN` Python module, its Module API on the CPU).

The intermediate .onnx is the onnx backend's fp32 export (torch.onnx, slimmed), written in the
private staging folder and removed with it. `--mode fp16` stores the weights as float16 (the
converter's --fp16) and `--mode int8` quantizes the convolution and matmul weights to 8 bits
(its --weightQuantBits 8); both compute in float32 on the CPU (weights are expanded at load), so
neither needs calibration data.

The converter runs in a child process, as `_tools.mnnconvert` (the C++ converter the wheel's
`mnnconvert` script wraps): it prints to the native stdout, which a child keeps off timmx's own
(and its output goes into the error when it fails); and the wheel's script also imports
`MNN.tools.utils.log`, which `pip install`s a logging SDK and sends each conversion's details
to Alibaba Cloud, which an export must not do. MNN's runtime prints from C++ too ("The device
supports: ..." on import, shape errors while running): those go to a temporary file, kept for
the error, never to the terminal or to a `--json` report on stdout.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from timmx.backends import get_backend, register
from timmx.backends.base import (
    FP16,
    FP32,
    INT8,
    Backend,
    BackendOptions,
    ExportContext,
    Runtime,
    Tolerance,
)
from timmx.errors import ExportFailedError
from timmx.quiet import debug_output

# Weight-only int8: measured at 32x64 on resnet18, test_resnet (random weights) 1.3% of the
# output's scale, top-1 100%; as onnx's dynamic-int8 (int8 weights), within 10% and top-1 80%.
TOLERANCES: dict[str, Tolerance] = {"fp32": FP32, "fp16": FP16, "int8": replace(INT8, rtol=0.1)}
_CONVERTER_FLAGS = {"fp32": [], "fp16": ["--fp16"], "int8": ["--weightQuantBits", "8"]}
# LSTMs (sequencer2d) as MNN's own LSTM op: its default (a While loop) crashes the converter on
# them (signal 11); the op ran sequencer2d_s within 1.3e-6 of the output's scale. Its weights are
# left float by --weightQuantBits.
_COMMON_FLAGS = ["--bizCode", "timmx", "--useOriginRNNImpl"]
# The converter's own C++ entry point (the wheel's top-level `_tools` extension), without the
# Python wrapper's telemetry; it returns True even when it wrote nothing, so the file is checked.
_CONVERT = "import sys, _tools; _tools.mnnconvert(sys.argv)"
# The backends to suggest when MNN cannot take a model: both ran VOLO (ONNX Col2Im, which MNN
# lacks); LiteRT could not (its interpreter refused a scatter).
_WORKING = ("onnx", "openvino")


class MnnOptions(BackendOptions):
    mode: Literal["fp32", "fp16", "int8"] = Field(
        "fp32",
        description="Weights: fp32; fp16 (float16 weights, half the size); int8 (8-bit weights, "
        "MNN's weight quantization: a quarter of the size, no calibration). All compute in "
        "float32 on the CPU.",
    )
    opset: int = Field(18, ge=13, le=23, description="ONNX opset of the intermediate model.")


@register
class MnnBackend(Backend):
    name = "mnn"
    help = "MNN model (.mnn) via MNN's converter from ONNX, fp32 to int8 weights, verified in MNN."
    suffix = ".mnn"
    noisy_loggers = ("torch.onnx", "onnxscript")
    requires = ("torch", "timm", "onnx", "onnxscript", "onnxslim", "mnn")
    supported = ("mnn>=3.6.1",)  # the oldest tried or shipped
    Options = MnnOptions
    runtime_name = "mnn"
    runtime_threads = 1

    def tolerance(self, options: MnnOptions) -> Tolerance:
        return TOLERANCES[options.mode]

    def export(self, ctx: ExportContext, options: MnnOptions) -> list[Path]:
        from timmx.backends.onnx import OnnxOptions

        scratch = ctx.artifact.parent / "mnn-onnx"  # staging is private and removed afterwards
        scratch.mkdir()
        onnx_file = scratch / "model.onnx"
        onnx = get_backend("onnx")
        onnx.export(replace(ctx, artifact=onnx_file), OnnxOptions(opset=options.opset))
        command = [
            sys.executable, "-c", _CONVERT, "-f", "ONNX", "--modelFile", str(onnx_file),
            "--MNNModel", str(ctx.artifact), *_COMMON_FLAGS, *_CONVERTER_FLAGS[options.mode],
        ]  # fmt: skip
        run = subprocess.run(command, capture_output=True, text=True, cwd=scratch)
        output = (run.stdout + run.stderr).splitlines()
        if not ctx.artifact.is_file() or "Converted Success!" not in output:
            ctx.artifact.unlink(missing_ok=True)
            crashed = -run.returncode if run.returncode < 0 else None
            raise ExportFailedError(
                f"MNN's converter cannot take {ctx.job.model.name}: {_reason(output, crashed)}; "
                f"export it with another backend ({', '.join(_WORKING)})"
            )
        ctx.details["converter"] = [_STAMP.sub("", ln) for ln in output if _worth_keeping(ln)][-8:]
        return [ctx.artifact]

    def load_runtime(self, artifact: Path, options: MnnOptions) -> Runtime:
        import numpy as np

        with native_output() as said:
            import MNN.expr as F
            import MNN.nn as nn

            module = nn.load_module_from_file(
                str(artifact), ["input"], ["output"], precision_mode=F.PrecisionMode.High,
                thread_num=1,
            )  # fmt: skip
        if module is None:
            raise ExportFailedError(f"MNN could not load {artifact}: {_reason(said())}")

        def run(x: np.ndarray) -> np.ndarray:
            x = np.ascontiguousarray(x, dtype=np.float32)
            with native_output() as said:
                outputs = module.forward([F.const(x, list(x.shape), F.NCHW)])
                values = np.array(F.convert(outputs[0], F.NCHW).read()) if outputs else None
            if values is None or values.size == 0:
                raise ExportFailedError(
                    f"MNN failed to run {artifact} on {tuple(x.shape)}: {_reason(said())}"
                )
            return values.astype(np.float32).reshape(x.shape[0], -1)

        return run

    def inspect_artifact(self, artifact: Path, options: MnnOptions) -> dict[str, Any]:
        with native_output():
            import MNN.nn as nn

            module = nn.load_module_from_file(str(artifact), ["input"], ["output"])
            info = module.get_info() if module is not None else {}
        return {
            "mode": options.mode,
            "mnn_version": info.get("version"),
            "bytes": artifact.stat().st_size,
        }


_STAMP = re.compile(r"^\[[\d:]+\] :\d+: ")  # the converter's "[01:48:50] :220: " prefix


def _worth_keeping(line: str) -> bool:
    return bool(line.strip()) and not line.startswith("The device supports")


def _reason(output: list[str], signal: int | None = None) -> str:
    """What the converter or the runtime said about its failure: the ops it does not support
    ("These Op Not Support: ONNX::Col2Im") before its other complaints, before its last words."""
    lines = [_STAMP.sub("", ln.strip()) for ln in output if _worth_keeping(ln)]
    for words in (("not support",), ("error", "fail")):
        found = [ln for ln in lines if any(w in ln.lower() for w in words)]
        if found:
            return found[-1][:200]
    last = (lines or ["no output"])[-1][:160]
    return f"it crashed (signal {signal}) after: {last}" if signal else last


@contextlib.contextmanager
def native_output() -> Iterator[Any]:
    """MNN's C++ code prints to file descriptors 1 and 2, past sys.stdout (and a `--json`
    report goes to stdout): send both to a temporary file meanwhile; yields a function that
    returns its lines. Shown on stderr afterwards only with --debug (or TIMMX_DEBUG)."""
    import ctypes

    try:  # C's stdio buffers what MNN prints: flushed before each descriptor is put back
        flush = ctypes.CDLL(None).fflush
    except (OSError, AttributeError):  # no C library to name (Windows): nothing buffered here
        flush = lambda _: None  # noqa: E731
    with tempfile.TemporaryFile(mode="w+b") as log:
        saved = [os.dup(1), os.dup(2)]
        lines: list[str] = []
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            flush(None)
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield lambda: lines
        finally:
            flush(None)  # into the file, not to stdout later
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            log.seek(0)
            lines[:] = log.read().decode(errors="replace").splitlines()
            if lines and debug_output():
                print("\n".join(lines), file=sys.stderr)
