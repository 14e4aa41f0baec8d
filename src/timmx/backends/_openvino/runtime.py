"""Run and describe a saved IR: the CPU plugin at a given inference precision, the IR's facts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from timmx.backends._openvino.convert import import_openvino

if TYPE_CHECKING:
    import numpy as np

HINT = "INFERENCE_PRECISION_HINT"
VERIFIED_HINT = "f32"
# How to load an IR so that it computes as verified, for the report and the warnings.
LOAD_F32 = 'core.compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})'


def default_hint() -> str:
    """The CPU plugin's own inference precision here (f32; bf16 on AVX512-BF16/AMX x86; f16 on
    ARM): what an IR computes in when loaded without a hint."""
    ov = import_openvino()
    return ov.Core().get_property("CPU", HINT).get_type_name()


def cpu_runtime(artifact: Path, hint: str | None = VERIFIED_HINT):
    """A function float32 NCHW -> the IR's first output, compiled for the CPU at `hint` (None:
    the plugin's default)."""
    import numpy as np

    ov = import_openvino()
    config = {HINT: hint} if hint else {}
    compiled = ov.Core().compile_model(str(artifact), "CPU", config)
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(x: np.ndarray) -> np.ndarray:
        result = request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return np.array(result[output])  # a copy: the request reuses its output buffer

    return run


def describe(artifact: Path) -> dict[str, Any]:
    """Inputs, outputs, op counts and constants by element type of the saved IR."""
    ov = import_openvino()
    model = ov.Core().read_model(str(artifact))
    ops = Counter(op.get_type_name() for op in model.get_ops())
    constants = Counter(
        op.get_output_element_type(0).get_type_name()
        for op in model.get_ops()
        if op.get_type_name() == "Constant"
    )
    return {
        "inputs": [_port(p) for p in model.inputs],
        "outputs": [_port(p) for p in model.outputs],
        "ops": dict(sorted(ops.items())),
        "constant_types": dict(sorted(constants.items())),
        "fake_quantize": ops.get("FakeQuantize", 0),
        "fake_convert": ops.get("FakeConvert", 0),
    }


def _port(port: Any) -> dict[str, Any]:
    shape = port.get_partial_shape()
    return {
        "name": port.get_any_name(),
        "shape": [d.get_length() if d.is_static else -1 for d in shape],
        "dtype": port.get_element_type().get_type_name(),
    }
