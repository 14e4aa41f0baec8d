"""The one interface every place that runs an ExportJob implements, and what they share.

A runner takes a job whose paths are relative to `workspace`, publishes the artifact and its
report there, and returns the `ExportResult` or raises a one-line `TimmxError` with nothing left
behind. `LocalRunner` runs in this process, `DockerRunner` in the backend's pinned image; the
batch builder's runners plug in here too. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from timmx.contract import ExportJob, ExportResult
from timmx.output import check_output, report_path, write_text_atomic

if TYPE_CHECKING:
    from timmx.backends.base import Backend, BackendOptions

Progress = Callable[[str], None]


def no_progress(_: str) -> None:
    pass


@runtime_checkable
class Runner(Protocol):
    def run(
        self, job: ExportJob, workspace: Path, progress: Progress = no_progress
    ) -> ExportResult: ...


_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def memory_bytes(text: str) -> int | None:
    """A memory size as Docker writes it (`8g`, `512m`, a byte count) in bytes; None if it is
    not one."""
    import re

    match = re.fullmatch(r"([0-9]+)([bkmg]?)", str(text).strip(), re.IGNORECASE)
    return None if match is None else int(match[1]) * _UNITS[match[2].lower()]


def check_job(job: ExportJob, workspace: Path) -> tuple[Backend, BackendOptions]:
    """Everything that can be refused without torch: backend, options, output path."""
    from timmx.backends import get_backend

    backend = get_backend(job.backend)
    options = backend.parse_options(job.options)
    backend.check(job, options)
    check_output(workspace / job.output, backend)
    return backend, options


def save_report(result: ExportResult, artifact: Path) -> Path:
    """Write `<artifact>.json` beside the artifact, atomically; return its path."""
    path = report_path(artifact)
    write_text_atomic(path, result.model_dump_json(indent=2) + "\n")
    return path


def select_runner(
    isolated: bool = False,
    *,
    memory: str = "8g",
    timeout_s: int = 1800,
    build: bool = True,
    verbose: bool = False,
) -> Runner:
    """The runner for one export: this process, or the backend's image with `isolated`."""
    if isolated:
        from timmx.runners.docker import DockerRunner

        return DockerRunner(memory=memory, timeout_s=timeout_s, build=build)
    from timmx.runners.local import LocalRunner

    return LocalRunner(verbose=verbose)
