"""PyTorch module -> coremltools MLModel: the module to convert, its source, inputs, outputs."""

from __future__ import annotations

from typing import Any

from torch import nn

from timmx.backends._coreml.plan import OUTPUT, Plan
from timmx.backends._pt2 import batch_dim
from timmx.errors import ExportFailedError, first_line


class ImageInputModel(nn.Module):
    """The model behind an image input: Core ML has already applied scale and bias, so only a
    per-channel factor (when the std differs across channels) and the softmax remain."""

    def __init__(self, model: nn.Module, correction: tuple[float, ...] | None, softmax: bool):
        super().__init__()
        import torch

        self.model = model
        self.corrected = correction is not None
        factor = torch.tensor(correction or (1.0,)).view(1, -1, 1, 1)
        self.register_buffer("correction", factor, persistent=False)
        self.softmax = softmax

    def forward(self, x):
        if self.corrected:
            x = x * self.correction
        x = self.model(x)
        return x.softmax(dim=-1) if self.softmax else x


def module_to_convert(model: nn.Module, timm_model: nn.Module, plan: Plan) -> nn.Module:
    """What coremltools converts: the export's model, or with an image input the timm model
    alone (Core ML's scale and bias replace the baked-in normalisation)."""
    if plan.image is None:
        return model.cpu().eval()
    return ImageInputModel(timm_model.cpu(), plan.image.correction, plan.softmax).eval()


def source_program(module: nn.Module, example, plan: Plan, source: str) -> Any:
    import torch

    example = example.cpu()
    if plan.image is not None:  # the module sees scaled and biased pixels
        example = example * 255.0 * plan.image.scale + _column(plan.image.bias)
    with torch.no_grad():
        if source == "trace":
            return torch.jit.trace(module, example, check_trace=False)
        dynamic_shapes = None
        if plan.dynamic:
            # torch.export specialises a batch of 1: export with 2, keep the range dynamic.
            example = example.repeat(2, 1, 1, 1) if example.shape[0] == 1 else example
            dynamic_shapes = ({0: batch_dim(plan.upper_bound)},)
        program = torch.export.export(module, (example,), dynamic_shapes=dynamic_shapes)
        return program.run_decompositions({})  # coremltools takes the ATEN dialect only


def _column(values: tuple[float, ...]):
    import torch

    return torch.tensor(values).view(1, -1, 1, 1)


def convert(ct: Any, program: Any, plan: Plan, source: str, hint: bool = True) -> Any:
    import numpy as np

    shape: Any = (plan.batch, *plan.input_size)
    if plan.dynamic:
        batch = ct.RangeDim(lower_bound=1, upper_bound=plan.upper_bound or -1, default=plan.batch)
        shape = ct.Shape((batch, *plan.input_size))
    if plan.image is not None:
        gray = plan.input_size[0] == 1
        inputs = [
            ct.ImageType(
                name=plan.input_name,
                shape=shape,
                scale=plan.image.scale,
                bias=plan.image.bias[0] if gray else list(plan.image.bias),
                color_layout=ct.colorlayout.GRAYSCALE if gray else ct.colorlayout.RGB,
            )
        ]
    else:
        inputs = [ct.TensorType(name=plan.input_name, shape=shape, dtype=np.float32)]
    kwargs: dict[str, Any] = {
        "inputs": inputs,
        "convert_to": "mlprogram" if plan.mlprogram else "neuralnetwork",
    }
    if plan.labels is not None:
        kwargs["classifier_config"] = ct.ClassifierConfig(plan.labels)
    else:
        kwargs["outputs"] = [ct.TensorType(name=OUTPUT, dtype=np.float32)]
    if plan.target is not None:
        kwargs["minimum_deployment_target"] = getattr(ct.target, plan.target)
    if plan.precision is not None:
        kwargs["compute_precision"] = getattr(ct.precision, plan.precision.upper())
    try:
        mlmodel = ct.convert(program, source="pytorch", **kwargs)
    except Exception as exc:
        raise ExportFailedError(
            f"coremltools could not convert {plan.model_name} from its {SOURCE_NAMES[source]} "
            f"({first_line(exc)}){_hint(exc, source) if hint else ''}"
        ) from exc
    return _name_probabilities(ct, mlmodel) if plan.labels is not None else mlmodel


PROBABILITIES = "classLabel_probs"  # what coremltools names them in an ML program


def _name_probabilities(ct: Any, mlmodel: Any) -> Any:
    """A neural-network classifier's scores keep their internal name (var_326...): rename."""
    spec = mlmodel.get_spec()
    current = spec.description.predictedProbabilitiesName
    if spec.WhichOneof("Type") == "mlProgram" or current in ("", PROBABILITIES):
        return mlmodel
    ct.utils.rename_feature(spec, current, PROBABILITIES)
    return ct.models.MLModel(spec)


SOURCE_NAMES = {"trace": "TorchScript trace", "torch-export": "torch.export program"}


def _hint(exc: Exception, source: str) -> str:
    if source == "trace" and "0-dimensional arrays" in str(exc):
        # coremltools 9.0 casts traced sizes with int(array), which numpy >= 2.4 refuses
        return ": coremltools' TorchScript frontend fails on this numpy; use --source torch-export"
    return f": try --source {'torch-export' if source == 'trace' else 'trace'}"
