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
    """From the model index (see timmx.model_index): no torch import once it is cached."""
    from timmx.model_index import list_names, load_index

    if not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    try:
        index = load_index()
    except ImportError:
        _timm()  # the one-line error that says what to install
        raise
    names = list_names(index, pattern, pretrained_only)
    if names:
        console.out.print("\n".join(names), highlight=False, markup=False, soft_wrap=True)
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
    """The model as an export would create it: the same weights, classes and channels. Its
    random-init facts come from the cache after a model's first run (see timmx.model_index)."""
    from timmx import model_index

    plain = not (pretrained or checkpoint or num_classes is not None or in_chans is not None)
    cached = model_index.cached_info(model_name) if plain else None
    if cached is not None:
        _print_info({**cached, "weights": "random init"}, json_out)
        return
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
    if plain:
        model_index.store_info(model_name, info)
    _print_info(info, json_out)


def _print_info(info: dict, json_out: bool) -> None:
    if json_out:
        console.out.print_json(json.dumps(info))
        return
    for key, value in info.items():
        console.out.print(f"[bold]{key}[/]: {console.escape(str(value))}")
