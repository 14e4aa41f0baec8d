"""Check what a container's worker left: its result.json and the artifacts it names."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from timmx.contract import ExportJob, ExportResult, parse_result
from timmx.errors import error_from_kind
from timmx.runners.accept import accept_folder
from timmx.runners.container_job import host_paths

if TYPE_CHECKING:
    from timmx.images.find import Found

# What to do about a worker whose output is refused: its image is not what timmx built.
REBUILD = "rebuild its image with `timmx images build` and run it again"


def read_result(path: Path) -> ExportResult | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return parse_result(text)  # ContractError names both schema versions on a mismatch


def accept_result(
    result: ExportResult,
    out: Path,
    job: ExportJob,
    image: Found,
    renames: dict[str, str],
    destination: Path,
) -> ExportResult:
    """A worker's answer made the host's: its error raised with the host's paths, or its
    artifacts checked as untrusted input (timmx.runners.accept) and published beside
    `destination`, as copies the container cannot reach."""
    if result.error is not None:
        raise error_from_kind(result.error.kind, host_paths(result.error.message, renames))
    accept_folder(result, job, out, destination, REBUILD)
    result.job = job
    if result.environment is not None:
        result.environment.runner = "docker"
        result.environment.image = image.ref
        result.environment.image_id = image.id
    return result
