"""PyTorch to OpenVINO IR: convert, quantize with NNCF, save; with telemetry and logs kept off."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def import_openvino() -> Any:
    """openvino, imported with its telemetry off (see `telemetry_off`)."""
    with telemetry_off():
        import openvino

    return openvino


@contextmanager
def telemetry_off() -> Iterator[None]:
    """Around every call that may send usage data: OpenVINO's converter and NNCF send it unless
    a consent file in ~/intel says no or the environment is CI. Their one shared telemetry
    object reads CI when it is made (at openvino's import) and again when the converter
    re-initialises it (each convert_model); NNCF reads NNCF_CI at its import. Afterwards that
    object, however made (a caller may have imported openvino first), is left declining."""
    try:
        with _environment(CI="true", NNCF_CI="1"):
            yield
    finally:
        try:
            from openvino_telemetry import Telemetry

            Telemetry().consent = False  # the one instance, made by openvino's import
        except Exception:  # no telemetry package (a stub then), or another version's API
            pass


def convert(model: torch.nn.Module, example: torch.Tensor, dynamic_batch: bool) -> Any:
    """The ov.Model of `model` (traced on `example`), its input named "input" and its first
    output "output"; the batch axis -1 (any size) with `dynamic_batch`."""
    import torch

    ov = import_openvino()
    batch = -1 if dynamic_batch else int(example.shape[0])
    with torch.no_grad(), telemetry_off():
        ov_model = ov.convert_model(
            model, example_input=example, input=[[batch, *example.shape[1:]]]
        )
    ov_model.inputs[0].get_tensor().set_names({"input"})
    ov_model.outputs[0].get_tensor().set_names({"output"})
    return ov_model


def quantize(ov_model: Any, batches: list[torch.Tensor]) -> tuple[Any, str]:
    """Post-training int8 quantization (weights and activations) with NNCF's defaults,
    calibrated on every one of `batches`; NNCF's transformer settings (attention and norms
    left in float where they lose most, SmoothQuant) for a model with attention. Returns the
    quantized model and the model type used."""
    import_openvino()
    with telemetry_off():
        import nncf

    data = [b.detach().cpu().numpy() for b in batches]
    model_type = "transformer" if has_attention(ov_model) else "default"
    kwargs = {"model_type": nncf.ModelType.TRANSFORMER} if model_type == "transformer" else {}
    with telemetry_off(), _nncf_quiet():
        quantized = nncf.quantize(ov_model, nncf.Dataset(data), subset_size=len(data), **kwargs)
    return quantized, model_type


def has_attention(ov_model: Any) -> bool:
    """An attention op, or a MatMul of two activations (queries by keys, weights by values):
    attention, where a convolutional network's MatMuls all take a constant weight."""

    def constant(port: Any) -> bool:
        node = port.get_node()
        while node.get_type_name() in ("Convert", "Reshape", "Transpose") and node.inputs():
            node = node.input_value(0).get_node()
        return node.get_type_name() == "Constant"

    return any(
        op.get_type_name() == "ScaledDotProductAttention"
        or (op.get_type_name() == "MatMul" and not any(constant(v) for v in op.input_values()))
        for op in ov_model.get_ops()
    )


def save(ov_model: Any, artifact: Path, name: str, compress_to_fp16: bool) -> Path:
    """Write NAME.xml and NAME.bin; return the .bin. The same model gives the same bytes:
    OpenVINO names a model and its unnamed ops from counters global to the process (Model34,
    Constant_187592, and names built on them: Multiply_5452/fq_weights_1), so those names are
    renumbered in the graph's own order."""
    ov = import_openvino()
    ov_model.set_friendly_name(name)
    numbers: dict[str, str] = {}
    for op in ov_model.get_ordered_ops():
        parts = op.get_friendly_name().split("/")
        for i, part in enumerate(parts):
            generated = _GENERATED.fullmatch(part)
            if generated:
                parts[i] = numbers.setdefault(part, f"{generated[1]}_{len(numbers)}")
        op.set_friendly_name("/".join(parts))
    ov.save_model(ov_model, str(artifact), compress_to_fp16=compress_to_fp16)
    return artifact.with_suffix(".bin")


# A name OpenVINO made up: an op type and a process-wide instance number.
_GENERATED = re.compile(r"([A-Z][A-Za-z0-9]*)_(\d+)")


@contextmanager
def _nncf_quiet() -> Iterator[None]:
    """NNCF logs through its own handler, bound at import to the stdout of that moment (not the
    one the runner redirects): silenced while it works, its levels restored afterwards. Its
    progress bars write to the current stdout, which the runner captures."""
    logger = logging.getLogger("nncf")
    level = logger.level
    handlers = [(h, h.level) for h in logger.handlers]
    logger.setLevel(logging.CRITICAL)
    for handler, _ in handlers:
        handler.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
        for handler, saved in handlers:
            handler.setLevel(saved)


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
