"""A saved Core AI asset read back on any platform: its functions, their inputs and outputs
(names, dtypes, shapes), what it stores and computes. `check_saved` compares them with the
exported program; `describe` is the report's details."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from timmx import __version__
from timmx.backends._coreai.convert import ENTRYPOINT, INPUT, OUTPUT
from timmx.errors import ExportFailedError

if TYPE_CHECKING:
    from timmx.backends.base import ExportContext

# How coreai's summary writes a tensor: "NDArray (Float32, ? x 3 x 64 x 64)", each x the
# multiplication sign (U+00D7), `?` a size known only when it runs (the dynamic batch).
_TIMES = "\N{MULTIPLICATION SIGN}"
_TENSOR = re.compile(r"NDArray \((\w+), ([^)]*)\)")
DTYPE = "Float32"

Shape = list[int | None]  # None: a dynamic size


def expected_io(program: Any) -> tuple[Shape, Shape]:
    """The shapes of the exported program's one input and one output; None where symbolic."""
    import torch

    def shape(node: Any) -> Shape:
        return [d if isinstance(d, int) else None for d in node.meta["val"].shape]

    user_inputs = set(program.graph_signature.user_inputs)
    (source,) = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    output = next(n for n in program.graph.nodes if n.op == "output")
    (result,) = [
        arg
        for arg in output.args[0]
        if isinstance(arg, torch.fx.Node) and arg.name in program.graph_signature.user_outputs
    ]
    return shape(source), shape(result)


def metadata(ctx: ExportContext) -> Any:
    """The asset's metadata.json: what the model is and what it takes, like coreml's."""
    from coreai.runtime import AIModelAssetMetadata

    summary, job = ctx.summary, ctx.job
    meta = AIModelAssetMetadata()
    classes = f"{summary.num_classes} classes" if summary.num_classes else "features"
    meta.model_description = f"timm {summary.name} ({classes}), exported by timmx {__version__}"
    meta.author = "timmx"
    if summary.license:
        meta.license = f"{summary.license} (the license of timm's pretrained {summary.name})"
    custom = {
        "timm.model": summary.name,
        "timm.input_size": _numbers(summary.input_size),
        "timm.mean": _numbers(summary.mean),
        "timm.std": _numbers(summary.std),
        "timm.num_classes": str(summary.num_classes),
        "timmx.version": __version__,
        "timmx.input": "pixels-0-1" if job.preprocess.normalize else "normalized",
        "timmx.normalize": str(job.preprocess.normalize).lower(),
        "timmx.softmax": str(job.preprocess.softmax).lower(),
    }
    if summary.license:
        custom["timm.license"] = summary.license
    for key, value in custom.items():
        meta.set_custom(key, value)
    return meta


def read(path: Path) -> tuple[Any, Any]:
    """(AIModelAsset, its summary with statistics); ExportFailedError if it does not read."""
    from coreai.authoring import AIModelAsset

    if not AIModelAsset.is_valid(path):
        raise ExportFailedError(f"{path.name} is not a Core AI asset that coreai can read")
    asset = AIModelAsset.load(path)
    summary = asset.summary(include_statistics=True)
    if summary is None:
        raise ExportFailedError(f"{path.name} holds no Core AI program")
    return asset, summary


def tensors(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    found = []
    for name, text in pairs:
        match = _TENSOR.fullmatch(text.strip())
        if match is None:
            found.append({"name": name, "type": text})
            continue
        dims = [d.strip() for d in match[2].split(_TIMES)] if match[2].strip() else []
        shape = [None if d == "?" else int(d) for d in dims]
        found.append({"name": name, "dtype": match[1], "shape": shape})
    return found


def check_saved(path: Path, expected: tuple[Shape, Shape]) -> None:
    """The saved asset reads back, has the entrypoint, and takes and returns what the exported
    program does: one float32 `input` and one float32 `output` of its shapes, the dynamic batch
    left dynamic."""
    _, summary = read(path)
    if ENTRYPOINT not in summary.function_names:
        raise ExportFailedError(
            f"the saved asset has no function '{ENTRYPOINT}' "
            f"(it has {', '.join(summary.function_names) or 'none'})"
        )
    for kind, found, name, shape in (
        ("input", tensors(summary.function_inputs(ENTRYPOINT)), INPUT, expected[0]),
        ("output", tensors(summary.function_outputs(ENTRYPOINT)), OUTPUT, expected[1]),
    ):
        wanted = [{"name": name, "dtype": DTYPE, "shape": shape}]
        if found != wanted:
            raise ExportFailedError(
                f"the saved asset's {kind}s are {_describe(found)}, not {_describe(wanted)}"
            )


def describe(path: Path) -> dict[str, Any]:
    asset, summary = read(path)
    ops = dict(sorted(summary.operation_distribution))
    meta = asset.metadata
    return {
        "format": "Core AI asset",
        "functions": list(summary.function_names),
        "entrypoint": ENTRYPOINT,
        "inputs": tensors(summary.function_inputs(ENTRYPOINT)),
        "outputs": tensors(summary.function_outputs(ENTRYPOINT)),
        "os_compatibility": summary._compatibility_version,
        # Scalars stored per type, weights and other constants together.
        "storage": dict(summary.storage_types),
        "compute_types": sorted(summary.compute_types),
        "op_count": sum(n for op, n in ops.items() if op != "constant"),
        "ops": ops,
        "producer": meta._producer,
        "metadata": {
            **({"license": meta.license} if meta.license else {}),
            **({"description": meta.model_description} if meta.model_description else {}),
            **dict(sorted(_custom(meta).items())),
        },
    }


def _custom(meta: Any) -> dict[str, Any]:
    """The asset's own key-value metadata (`custom_metadata` in coreai's stubs, named
    `creator_defined_metadata` in coreai-core 1.0.0b3)."""
    for name in ("creator_defined_metadata", "custom_metadata"):
        found = getattr(meta, name, None)
        if found is not None:
            return dict(found)
    return {}


def _describe(tensors: list[dict[str, Any]]) -> str:
    def one(t: dict[str, Any]) -> str:
        if "shape" not in t:
            return f"{t['name']} ({t['type']})"
        dims = "x".join("?" if d is None else str(d) for d in t["shape"])
        return f"{t['name']} ({t['dtype']}, {dims})"

    return ", ".join(one(t) for t in tensors) or "none"


def _numbers(values: tuple[float, ...] | tuple[int, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)
