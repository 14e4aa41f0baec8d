"""Check what a container's worker left: its result.json and the artifacts it names."""

from __future__ import annotations

from pathlib import Path

from timmx.contract import ExportResult, parse_result
from timmx.errors import ContractError
from timmx.output import describe_files


def read_result(path: Path) -> ExportResult | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return parse_result(text)  # ContractError names both schema versions on a mismatch


def staged_artifacts(result: ExportResult, out: Path) -> list[Path]:
    """The top-level files or folders the result names, checked against their sizes."""
    if not result.artifacts:
        raise ContractError("the worker reported success but no artifact")
    tops: list[Path] = []
    root = out.resolve()
    for artifact in result.artifacts:
        path = (out / artifact.path).resolve()
        if root not in path.parents or not path.is_file():
            raise ContractError(
                f"the worker's artifact {artifact.path} is not in its output folder"
            )
        top = out / Path(artifact.path).parts[0]
        if top not in tops:
            tops.append(top)
    found = {f.path: f for f in describe_files(tops, out)}
    for artifact in result.artifacts:
        if found.get(artifact.path) != artifact:
            raise ContractError(f"the artifact {artifact.path} differs from the worker's record")
    return tops
