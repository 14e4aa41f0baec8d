"""Run a saved Core ML model: Core ML itself on macOS, timmx's reference evaluator elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from timmx.backends.base import Runtime


def _probabilities_output(spec: Any) -> str | None:
    return spec.description.predictedProbabilitiesName or None


def to_pixels(spec: Any) -> Any:
    """How verification inputs become an image input's 0-255 pixels: the artifact records
    whether PyTorch's input was pixels in [0, 1] (--normalize) or normalised values."""
    meta = spec.description.metadata.userDefined
    if meta.get("timmx.normalize") == "true":
        return lambda x: x * 255.0
    mean = np.array([float(v) for v in meta["timm.mean"].split(",")]).reshape(1, -1, 1, 1)
    std = np.array([float(v) for v in meta["timm.std"].split(",")]).reshape(1, -1, 1, 1)
    return lambda x: (x * std + mean) * 255.0


def reference_runtime(artifact: Path, image: bool) -> tuple[Runtime | None, dict[str, int]]:
    """The saved ML program evaluated with numpy; (None, unsupported ops) when it cannot be."""
    from timmx.mil_reference import Evaluator, load_program

    program = load_program(artifact)
    evaluator = Evaluator(program)
    if evaluator.unsupported:
        return None, evaluator.unsupported
    evaluator.constants()  # decompress the weights once, now
    (input_name,) = evaluator.input_names
    output = _probabilities_output(program.spec) or program.main.outputs[0]
    prepare = to_pixels(program.spec) if image else (lambda x: x)

    def run(x: np.ndarray) -> np.ndarray:
        feed = np.asarray(prepare(x.astype(np.float64)), dtype=np.float32)
        return np.asarray(evaluator.run({input_name: feed})[output], dtype=np.float32)

    return run, {}


def core_ml_runtime(artifact: Path, image: bool, compute_units: str = "cpu") -> Runtime:
    """MLModel.predict on `compute_units` (macOS only): cpu, all, cpu-gpu or cpu-ne."""
    import coremltools as ct

    units = {
        "cpu": ct.ComputeUnit.CPU_ONLY,
        "all": ct.ComputeUnit.ALL,
        "cpu-gpu": ct.ComputeUnit.CPU_AND_GPU,
        "cpu-ne": ct.ComputeUnit.CPU_AND_NE,
    }[compute_units]
    model = ct.models.MLModel(str(artifact), compute_units=units)
    spec = model.get_spec()
    input_name = spec.description.input[0].name
    probabilities = _probabilities_output(spec)
    output = probabilities or spec.description.output[0].name
    labels = class_labels(artifact, spec) if probabilities else None
    prepare = to_pixels(spec) if image else None

    def one(x: np.ndarray) -> np.ndarray:
        if image:
            from PIL import Image

            pixels = np.clip(np.round(prepare(x)[0]), 0, 255).astype(np.uint8)
            hwc = pixels.transpose(1, 2, 0)  # (H, W, 3) uint8: RGB; (H, W): grayscale
            feed: Any = Image.fromarray(hwc[:, :, 0] if hwc.shape[-1] == 1 else hwc)
        else:
            feed = x.astype(np.float32)
        result = model.predict({input_name: feed})[output]
        if labels is not None:
            return np.array([[result[label] for label in labels]], dtype=np.float32)
        return np.asarray(result, dtype=np.float32)

    def run(x: np.ndarray) -> np.ndarray:
        if image or labels is not None:  # one image (or one classification) at a time
            return np.concatenate([one(x[i : i + 1]) for i in range(len(x))])
        return one(x)

    return run


def class_labels(artifact: Path, spec: Any) -> list[str]:
    """The classifier's labels in class order: a neural network's spec, an ML program's
    `classify` op."""
    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        labels = getattr(spec, kind).stringClassLabels.vector
        return list(labels)
    from timmx.mil_reference import load_program

    for op in load_program(artifact).main.operations:
        if op.type == "classify":
            (binding,) = op.inputs["classes"]
            return [str(np.asarray(v).reshape(-1)[0]) for v in binding.value]
    return []
