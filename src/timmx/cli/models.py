"""`timmx info` and `timmx list`: look at timm's model zoo."""

from __future__ import annotations

import json
from pathlib import Path

from timmx.cli import console
from timmx.errors import BackendUnavailableError


def _timm():
    try:
        import timm
    except ImportError:
        raise BackendUnavailableError(
            "this command needs timm and torch here: pip install 'timmx[torch]'"
        ) from None
    return timm


def show_list(pattern: str, pretrained_only: bool) -> None:
    timm = _timm()
    if not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    names = timm.list_models(pattern, pretrained=pretrained_only)
    for name in names:
        console.out.print(name)
    # On stderr: stdout stays one name a line, for scripts.
    console.err.print(f"Found {len(names)} model{'' if len(names) == 1 else 's'}")
    if not names:
        console.err.print(f"no model matches '{pattern}'")


def show_info(
    model_name: str,
    json_out: bool,
    pretrained: bool = False,
    checkpoint: Path | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
) -> None:
    """The model as an export would create it: the same weights, classes and channels."""
    timm = _timm()
    from timmx.contract import ExportJob, ModelSpec
    from timmx.modeling import create_model, has_reparam

    spec = ModelSpec(
        name=model_name,
        pretrained=pretrained,
        checkpoint=str(checkpoint) if checkpoint else None,
        num_classes=num_classes,
        in_chans=in_chans,
    )
    job = ExportJob(backend="info", model=spec, output="-")  # create_model reads job.model only
    model = create_model(job, Path.cwd())
    config = timm.data.resolve_data_config({}, model=model)
    size = list(config["input_size"])
    if in_chans is not None:  # timm's config keeps the pretrained (RGB) size
        size[0] = in_chans
    weights = (
        f"checkpoint ({checkpoint.name})"
        if checkpoint
        else "pretrained"
        if pretrained
        else "random init"
    )
    info = {
        "name": model_name,
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "input_size": size,
        "num_classes": getattr(model, "num_classes", None),
        "num_features": getattr(model, "num_features", None),
        "weights": weights,
        "mean": list(config["mean"]),
        "std": list(config["std"]),
        "interpolation": config.get("interpolation"),
        "crop_pct": config.get("crop_pct"),
        "reparameterizable": has_reparam(model),
        "pretrained_tags": timm.list_pretrained(model_name + "*"),
        "license": (getattr(model, "pretrained_cfg", None) or {}).get("license"),
    }
    if json_out:
        console.out.print_json(json.dumps(info))
        return
    for key, value in info.items():
        console.out.print(f"[bold]{key}[/]: {console.escape(str(value))}")
