"""Everything the conversion needs, resolved once from the job, the options and the model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from timmx.backends._coreml.targets import (
    COMPRESSION_MIN,
    PER_BLOCK_MIN,
    name_for,
)
from timmx.errors import InvalidInputError

if TYPE_CHECKING:
    from timmx.backends.base import ExportContext

IMAGE_INPUT, TENSOR_INPUT, OUTPUT = "image", "input", "output"


@dataclass(frozen=True)
class ImageInput:
    """Core ML scales pixels (0-255) by one number and adds a bias per channel; a per-channel
    std that differs across channels leaves a per-channel factor for the graph to apply."""

    scale: float
    bias: tuple[float, ...]
    correction: tuple[float, ...] | None  # multiply channel c by this after scale and bias


@dataclass(frozen=True)
class Plan:
    model_name: str
    mlprogram: bool
    input_name: str
    input_size: tuple[int, int, int]
    batch: int
    dynamic: bool
    upper_bound: int | None
    target: str | None  # None: coremltools' default for the model type
    precision: str | None  # mlprogram compute precision; None for neuralnetwork
    compression: str | None  # int8, int4, palettize<N>, fp16-weights
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalize: bool
    softmax: bool
    num_classes: int
    image: ImageInput | None
    labels: list[str] | None
    license: str | None


def compression_of(options: Any) -> str | None:
    if options.int8:
        return "int8"
    if options.int4_linear:
        return "int4"
    if options.int4:  # upstream timmx's --int4: 4-bit k-means palettization
        return "palettize4"
    if options.palettize is not None:
        return f"palettize{options.palettize}"
    if options.half:
        return "fp16-weights"
    return None


def resolve_target(options: Any, ctx: ExportContext) -> str | None:
    """The requested target, or the oldest one the compression needs (check() refused a
    requested target that is too old)."""
    if options.minimum_deployment_target is not None:
        return options.minimum_deployment_target
    if options.convert_to != "mlprogram":
        return None
    if options.int4_linear:
        ctx.warn(
            "--int4-linear (per-block) needs iOS18: the minimum deployment target was raised to "
            "iOS18 (--minimum-deployment-target macOS15 etc. for other platforms)"
        )
        return name_for(PER_BLOCK_MIN)
    if options.int8 or options.int4 or options.palettize is not None:
        return name_for(COMPRESSION_MIN)
    return None


def make_plan(ctx: ExportContext, options: Any) -> Plan:

    job, summary = ctx.job, ctx.summary
    mean, std = summary.mean, summary.std  # the baked-in ones with --normalize, else the model's
    size = summary.input_size
    image = _image_input(mean, std, size[0]) if options.image_input else None
    labels = read_labels(ctx.workspace / options.labels) if options.labels else None
    num_classes = summary.num_classes
    if labels is not None and len(labels) != num_classes:
        raise InvalidInputError(
            f"--labels {options.labels} has {len(labels)} labels but the model has "
            f"{num_classes} classes: give one label per line, in class order"
        )
    if labels is not None and not job.preprocess.softmax:
        ctx.warn(
            "--labels without --softmax: the classifier's scores are logits, not probabilities "
            "(add --softmax for confidences in [0, 1])"
        )
    mlprogram = options.convert_to == "mlprogram"
    return Plan(
        model_name=job.model.name,
        mlprogram=mlprogram,
        input_name=IMAGE_INPUT if image else TENSOR_INPUT,
        input_size=size,
        batch=job.input.batch_size,
        dynamic=job.input.dynamic_batch,
        upper_bound=_upper_bound(ctx, options),
        target=resolve_target(options, ctx),
        precision=(options.compute_precision or "float16") if mlprogram else None,
        compression=compression_of(options),
        mean=mean,
        std=std,
        normalize=job.preprocess.normalize,
        softmax=job.preprocess.softmax,
        num_classes=num_classes,
        image=image,
        labels=labels,
        license=summary.license,
    )


def _upper_bound(ctx: ExportContext, options: Any) -> int | None:
    if not ctx.job.input.dynamic_batch or options.batch_upper_bound is not None:
        return options.batch_upper_bound
    if options.convert_to != "mlprogram":
        return None  # a neural network takes any batch
    from timmx.backends.coreml import DEFAULT_UPPER_BOUND

    ctx.warn(
        f"an mlprogram's flexible batch must be bounded: it takes batches of 1 to "
        f"{DEFAULT_UPPER_BOUND} (set --batch-upper-bound)"
    )
    return DEFAULT_UPPER_BOUND


def _image_input(mean: tuple[float, ...], std: tuple[float, ...], channels: int) -> ImageInput:
    if channels not in (1, 3):
        raise InvalidInputError(
            f"--image-input needs 1 (grayscale) or 3 (RGB) channels, the model takes {channels}"
        )
    reference = sum(std) / len(std)
    correction = None
    if max(std) - min(std) > 1e-12:
        correction = tuple(reference / s for s in std)
    return ImageInput(
        scale=1.0 / (255.0 * reference),
        bias=tuple(-m / reference for m in mean),
        correction=correction,
    )


def read_labels(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInputError(f"--labels {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read --labels {path}: {exc}") from None
    labels = [line.strip() for line in text.splitlines()]
    while labels and not labels[-1]:
        labels.pop()
    if not labels or any(not label for label in labels):
        raise InvalidInputError(f"--labels {path} needs one non-empty label per line")
    if len(set(labels)) != len(labels):
        raise InvalidInputError(f"--labels {path} repeats a label: labels must be unique")
    return labels
