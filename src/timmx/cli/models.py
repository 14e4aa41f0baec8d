"""`timmx info` and `timmx list`: look at timm's model zoo."""

from __future__ import annotations

import json

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
    if not names:
        console.err.print(f"no model matches '{pattern}'")


def show_info(model_name: str, json_out: bool) -> None:
    timm = _timm()
    from timmx.modeling import check_model_name, has_reparam

    check_model_name(model_name)
    model = timm.create_model(model_name, pretrained=False)
    config = timm.data.resolve_data_config({}, model=model)
    info = {
        "name": model_name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "input_size": list(config["input_size"]),
        "num_classes": getattr(model, "num_classes", None),
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
