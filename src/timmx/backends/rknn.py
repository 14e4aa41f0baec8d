"""RKNN (.rknn) for Rockchip NPUs through rknn-toolkit2 from an ONNX export, verified in the
toolkit's simulator on x86; the NPU itself is not run.

rknn-toolkit2 pins torch<=2.4, numpy<=1.26.4, onnx<=1.18 and protobuf<=4.25.4, so the backend
runs only in its own image, on torch 2.4. The intermediate .onnx comes from torch.onnx's
TorchScript exporter (torch 2.4 has the dynamo exporter the onnx backend uses only as a preview),
written in the private staging folder and removed with it. `--mode fp16` is the toolkit's
float16 build; `--mode int8` its w8a8 quantization, calibrated on the shared calibration data
written as NCHW .npy files (the toolkit checks them against the ONNX input) listed in a
dataset file; its simulator, though, takes NHWC unless told (`data_format`), so timmx's NCHW
inputs are passed as such.

The simulator runs only a model built in the same session: the toolkit refuses to simulate a
saved .rknn (load_rknn), so the session that exported the artifact is kept, by the artifact's
sha256, for its verification. The toolkit prints from Python and C++: the C++ side goes to a
temporary file (mnn.native_output), never to timmx's stdout; a failed step's error is its
exception's last error line.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from timmx.backends import register
from timmx.backends._calibrating import CalibratedOptions, CalibratingBackend, per_channel_field
from timmx.backends.base import FP16, INT8, ExportContext, Runtime, Tolerance
from timmx.contract import ExportJob
from timmx.errors import ExportFailedError, InvalidInputError

# The target platforms rknn-toolkit2 2.5.0 accepts: RKNN.config's documented list, and rk3588s,
# which its config accepts too (tried in its image; rk3528, rv1126, rk1808 are refused).
PLATFORMS = (
    "rv1103", "rv1103b", "rv1106", "rv1106b", "rv1126b", "rk2118", "rk3562", "rk3566",
    "rk3568", "rk3576", "rk3588", "rk3588s",
)  # fmt: skip
TargetPlatform = Literal[PLATFORMS]  # a tuple subscript: Literal["rv1103", "rv1103b", ...]
TOLERANCES: dict[str, Tolerance] = {"fp16": FP16, "int8": INT8}

# Toolkit sessions that built an artifact, by the artifact's sha256: the only ones its simulator
# runs (see the module's docstring).
_SESSIONS: dict[str, Any] = {}


class RknnOptions(CalibratedOptions):
    target_platform: TargetPlatform | None = Field(
        None,
        description="Rockchip chip the model is compiled for (required): "
        + ", ".join(PLATFORMS)
        + ".",
    )
    mode: Literal["fp16", "int8"] = Field(
        "fp16",
        description="fp16 (the NPU's float16) or int8 (w8a8, calibrated on the calibration data).",
    )
    per_channel: bool = per_channel_field(" (RKNN's quantized_method channel or layer)")
    opset: int = Field(17, ge=12, le=19, description="ONNX opset of the intermediate model.")


@register
class RknnBackend(CalibratingBackend):
    name = "rknn"
    help = "RKNN model (.rknn) for Rockchip NPUs via rknn-toolkit2, verified in its simulator."
    suffix = ".rknn"
    noisy_loggers = ("torch.onnx",)
    requires = ("torch", "timm", "rknn-toolkit2", "onnx")
    supported = ("rknn-toolkit2>=2.3.2",)  # the oldest tried (2.2.0 needs torch<=2.1)
    isolated_only = (
        "rknn-toolkit2 2.5.0 needs torch<=2.4.0, numpy<=1.26.4, onnx<=1.18.0 and protobuf<=4.25.4"
    )
    install_hint = "it runs in its Docker image: add --isolated"
    Options = RknnOptions
    runtime_name = "rknn-toolkit2 simulator"

    def check(self, job: ExportJob, options: RknnOptions) -> None:
        if options.target_platform is None:
            raise InvalidInputError(
                f"rknn needs --target-platform, the chip to compile for: one of "
                f"{', '.join(PLATFORMS)}"
            )
        if job.input.dynamic_batch:
            raise InvalidInputError(
                "rknn compiles one input shape: drop --dynamic-batch (set --batch-size)"
            )
        super().check(job, options)

    def tolerance(self, options: RknnOptions) -> Tolerance:
        return TOLERANCES[options.mode]

    def export(self, ctx: ExportContext, options: RknnOptions) -> list[Path]:
        import numpy as np

        batches = self.calibration_batches(ctx, options) if options.mode == "int8" else None
        scratch = ctx.artifact.parent / "rknn-onnx"  # staging is private and removed afterwards
        scratch.mkdir()
        onnx_file = scratch / "model.onnx"
        _export_onnx(ctx, onnx_file, options.opset)
        dataset = None
        if batches is not None:
            lines = []
            for i, batch in enumerate(batches):
                path = scratch / f"calibration-{i}.npy"
                np.save(path, batch.cpu().numpy().astype(np.float32))  # NCHW, as the ONNX
                lines.append(str(path))
            dataset = scratch / "dataset.txt"
            dataset.write_text("\n".join(lines) + "\n")
            ctx.details["calibration_batches"] = len(batches)
        method = "channel" if options.per_channel else "layer"
        with _toolkit_output():
            try:
                rknn = _build(onnx_file, ctx.artifact, options, method, dataset)
            except _StepFailed as failed:
                rknn = None
                step = str(failed)
        if rknn is None:
            ctx.artifact.unlink(missing_ok=True)
            raise ExportFailedError(
                f"rknn-toolkit2 cannot take {ctx.job.model.name}: {step}; export it with another "
                "backend (onnx, litert)"
            )
        for stale in _SESSIONS.values():  # an export is verified before the next one starts:
            stale.release()  # a warm worker keeps only the latest session
        _SESSIONS.clear()
        _SESSIONS[_sha256(ctx.artifact)] = rknn
        ctx.details["target_platform"] = options.target_platform
        return [ctx.artifact]

    def may_lack_runtime(self, options: RknnOptions) -> bool:
        return True  # a .rknn not built in this process: the simulator cannot run it

    def load_runtime(self, artifact: Path, options: RknnOptions) -> Runtime | None:
        rknn = _SESSIONS.get(_sha256(artifact))
        return None if rknn is None else _runner(rknn, artifact)

    def inspect_artifact(self, artifact: Path, options: RknnOptions) -> dict[str, Any]:
        platform = options.target_platform
        if _sha256(artifact) in _SESSIONS:
            note = (
                "verified in rknn-toolkit2's simulator, on the build session that wrote the "
                f".rknn (the toolkit simulates no saved .rknn): the {platform} NPU itself was "
                "not run"
            )
        else:
            note = (
                "rknn-toolkit2 simulates only a model built in the same session, not a saved "
                f".rknn: numerics not checked, and the {platform} NPU itself was not run"
            )
        return {
            "mode": options.mode,
            "target_platform": platform,
            "bytes": artifact.stat().st_size,
            "note": note,
        }


def _export_onnx(ctx: ExportContext, path: Path, opset: int) -> None:
    """torch.onnx's TorchScript exporter (torch 2.4 has no dynamo=False flag to name)."""
    import inspect

    import torch

    kwargs: dict[str, Any] = {
        "opset_version": opset,
        "input_names": ["input"],
        "output_names": ["output"],
    }
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    with torch.no_grad():
        torch.onnx.export(ctx.model.cpu(), (ctx.example_input.cpu(),), str(path), **kwargs)


class _StepFailed(Exception):
    """A toolkit call that returned an error code or raised: its name."""


def _build(onnx: Path, out: Path, options: RknnOptions, method: str, dataset: Path | None) -> Any:
    """The toolkit's build of `onnx` into `out`, its simulator started on it; the session."""
    from rknn.api import RKNN

    rknn = RKNN(verbose=False)
    steps = [
        ("config", lambda: rknn.config(
            target_platform=options.target_platform, quantized_dtype="w8a8",
            quantized_method=method, float_dtype="float16",
        )),
        ("load_onnx", lambda: rknn.load_onnx(model=str(onnx))),
        ("build", lambda: rknn.build(
            do_quantization=options.mode == "int8",
            dataset=str(dataset) if dataset else None,
        )),
        ("export_rknn", lambda: rknn.export_rknn(str(out))),
        ("init_runtime", lambda: rknn.init_runtime()),
    ]  # fmt: skip
    for name, step in steps:
        try:
            said = "it returned an error" if step() != 0 else None
        except Exception as exc:  # the toolkit raises ValueError with its log's traceback
            said = _last_words(str(exc)) or type(exc).__name__
        if said is not None:
            rknn.release()
            raise _StepFailed(f"{name} failed: {said}")
    return rknn


def _runner(rknn: Any, artifact: Path) -> Runtime:
    import numpy as np

    def run(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        with _toolkit_output() as said:
            try:  # timmx's inputs are NCHW; the toolkit's default is NHWC
                outputs, why = rknn.inference(inputs=[x], data_format=["nchw"]), None
            except Exception as exc:  # the toolkit raises ValueError with its log's traceback
                outputs, why = None, _last_words(str(exc))
        if not outputs:
            raise ExportFailedError(
                f"the rknn simulator failed to run {artifact.name} on {tuple(x.shape)}: "
                f"{why or _last_words(chr(10).join(said())) or 'no reason given'}"
            )
        return np.asarray(outputs[0], np.float32).reshape(x.shape[0], -1)

    return run


def _last_words(text: str) -> str:
    """The toolkit's last error line in `text` (its exceptions carry its log's traceback)."""
    lines = [_COLOR.sub("", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("File ", "Traceback", "During "))]
    errors = [ln for ln in lines if ln.startswith("E ") or "Error:" in ln]
    return (errors or lines or [""])[-1].removeprefix("E ")[:200]


_COLOR = re.compile(r"\x1b\[[0-9;]*m")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def _toolkit_output() -> Iterator[Any]:
    """mnn.native_output, with Python's own streams flushed inside it: the toolkit logs through
    Python (and tqdm) as well as from C++."""
    from timmx.backends.mnn import native_output

    with native_output() as said:
        try:
            yield said
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
