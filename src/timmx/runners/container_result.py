"""Check what a container's worker left: its result.json and the artifacts it names."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from timmx.contract import ExportJob, ExportResult, parse_result
from timmx.errors import ContractError, error_from_kind
from timmx.output import describe_files, publish
from timmx.runners.container_job import host_paths

if TYPE_CHECKING:
    from timmx.images.find import Found


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
    unrecorded = sorted(set(found) - {a.path for a in result.artifacts})
    if unrecorded:  # nothing is published that the report does not list
        raise ContractError(f"the worker's output has files it did not record: {unrecorded[0]}")
    return tops


def accept_result(
    result: ExportResult,
    out: Path,
    job: ExportJob,
    image: Found,
    renames: dict[str, str],
    destination: Path,
) -> ExportResult:
    """A worker's answer made the host's: its error raised with the host's paths, or its
    artifacts checked against the record and published beside `destination`."""
    if result.error is not None:
        raise error_from_kind(result.error.kind, host_paths(result.error.message, renames))
    if result.status != "success":
        raise ContractError("the worker reported a failure without an error")
    staged = staged_artifacts(result, out)
    result.job = job
    if result.environment is not None:
        result.environment.runner = "docker"
        result.environment.image = image.ref
        result.environment.image_id = image.id
    publish(staged, out, destination.parent)
    return result
