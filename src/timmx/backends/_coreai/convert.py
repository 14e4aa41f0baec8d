"""A torch.export program to a Core AI program with coreai-torch."""

from __future__ import annotations

import re
import warnings
from typing import Any

from timmx.environment import newer_release
from timmx.errors import ExportFailedError

INPUT, OUTPUT, ENTRYPOINT = "input", "output", "main"
_UNSUPPORTED = re.compile(r"unsupported ATen ops: (.+?)\. Use register_torch_lowering")


def import_coreai_torch() -> tuple[Any, str | None]:
    """Import coreai-torch without its import-time warning; returns (module, that warning as
    one line for the report, or None): it names the newest torch it was validated with."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import coreai_torch
    tested = getattr(coreai_torch, "_TORCH_MAX_VERSION", None)
    found = torch.__version__.split("+")[0]
    if tested is None or not newer_release(found, tested):
        return coreai_torch, None
    return coreai_torch, (
        f"coreai-torch {coreai_torch.__version__} was validated with torch up to {tested}; "
        f"this is torch {found}"
    )


def decompositions(coreai_torch: Any) -> dict:
    """coreai-torch's table, but adaptive_avg_pool2d goes to aten._adaptive_avg_pool2d, which
    coreai-torch lowers. ATen's own decomposition of a 1x1 pool over a channels-last tensor
    (ConvNeXt's head, after its permuted LayerNorms) ends in aten.as_strided, which it does not;
    the values are the same, only the strides differ, and a Core AI tensor has none."""
    import torch

    aten = torch.ops.aten
    table = dict(coreai_torch.get_decomp_table())

    def adaptive_avg_pool2d(x: torch.Tensor, output_size: Any) -> torch.Tensor:
        return aten._adaptive_avg_pool2d.default(x, output_size)

    table[aten.adaptive_avg_pool2d.default] = adaptive_avg_pool2d
    return table


def convert(coreai_torch: Any, program: Any, model_name: str) -> Any:
    """The Core AI program (coreai.authoring.AIProgram) of an ExportedProgram, its one input
    named `input`, its one output `output`, its function `main`."""
    program = program.run_decompositions(decompositions(coreai_torch))
    try:
        converter = coreai_torch.TorchConverter().add_exported_program(
            program, input_names=[INPUT], output_names=[OUTPUT], entrypoint_name=ENTRYPOINT
        )
    except ValueError as exc:
        found = _UNSUPPORTED.search(str(exc))
        if found is None:
            raise
        raise ExportFailedError(
            f"coreai-torch {coreai_torch.__version__} cannot convert {model_name}: it has no "
            f"lowering for {found[1]}: export it to another format (onnx, coreml, litert)"
        ) from None
    return converter.to_coreai()
