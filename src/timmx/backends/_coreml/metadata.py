"""Describe the model inside the artifact: what it is, what it takes, what it returns."""

from __future__ import annotations

from typing import Any

from timmx import __version__
from timmx.backends._coreml.plan import OUTPUT, Plan


def _numbers(values: tuple[float, ...] | tuple[int, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)


def annotate(mlmodel: Any, plan: Plan) -> None:
    classes = f"{plan.num_classes} classes" if plan.num_classes else "features"
    mlmodel.short_description = (
        f"timm {plan.model_name} ({classes}), exported by timmx {__version__}"
    )
    mlmodel.author = "timmx"
    if plan.license:
        mlmodel.license = f"{plan.license} (the license of timm's pretrained {plan.model_name})"
    meta = mlmodel.user_defined_metadata
    meta["timm.model"] = plan.model_name
    meta["timm.input_size"] = _numbers(plan.input_size)
    meta["timm.mean"] = _numbers(plan.mean)
    meta["timm.std"] = _numbers(plan.std)
    meta["timm.num_classes"] = str(plan.num_classes)
    meta["timmx.version"] = __version__
    meta["timmx.input"] = _input_kind(plan)
    meta["timmx.normalize"] = str(plan.normalize).lower()
    meta["timmx.softmax"] = str(plan.softmax).lower()
    if plan.compression:
        meta["timmx.compression"] = plan.compression
    if plan.license:
        meta["timm.license"] = plan.license
    mlmodel.input_description[plan.input_name] = _input_text(plan)
    if plan.labels is None:
        what = "class probabilities (softmax)" if plan.softmax else "class logits"
        mlmodel.output_description[OUTPUT] = f"{what}, float32 (batch, {plan.num_classes})"


def _input_kind(plan: Plan) -> str:
    if plan.image is not None:
        return "image"
    return "pixels-0-1" if plan.normalize else "normalized"


def _input_text(plan: Plan) -> str:
    c, h, w = plan.input_size
    if plan.image is not None:
        return f"{'RGB' if c == 3 else 'grayscale'} image {w}x{h}, normalised with mean/std inside"
    batch = "batch" if plan.dynamic else str(plan.batch)
    layout = f"float32 ({batch}, {c}, {h}, {w})"
    if plan.normalize:
        return f"{layout}, pixels in [0, 1], normalised with mean/std inside"
    mean, std = _numbers(plan.mean), _numbers(plan.std)
    return f"{layout}, already normalised: (pixels - [{mean}]) / [{std}]"
