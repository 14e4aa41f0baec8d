"""The one interface every place that runs an ExportJob implements, and what they share.

A runner takes a job whose paths are relative to `workspace`, publishes the artifact and its
report there, and returns the `ExportResult` or raises a one-line `TimmxError` with nothing left
behind. `LocalRunner` runs in this process, `DockerRunner` in the backend's pinned image,
`WarmProcess` and `WarmContainer` serve many jobs from one warm worker; `timmx.runners.spec`
says which one a job gets. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

from timmx.contract import ExportJob, ExportResult
from timmx.errors import InvalidInputError
from timmx.publish import check_output, report_path, write_text_atomic

if TYPE_CHECKING:
    from timmx.backends.base import Backend, BackendOptions

Progress = Callable[[str], None]


def no_progress(_: str) -> None:
    pass


@runtime_checkable
class Runner(Protocol):
    """Runs jobs; a context manager that releases what it keeps warm (a process, a container)."""

    def run(
        self, job: ExportJob, workspace: Path, progress: Progress = no_progress
    ) -> ExportResult: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc_info: object) -> None: ...


class NothingWarm:
    """A runner that keeps nothing between jobs: its `with` releases nothing."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_MIN_MEMORY = 64 * 1024**2  # a floor for typos like 8m: importing torch alone needs more


def memory_bytes(text: str) -> int | None:
    """A memory size as Docker writes it (`8g`, `512m`, a byte count) in bytes; None if it is
    not one."""
    import re

    match = re.fullmatch(r"([0-9]+)([bkmg]?)", str(text).strip(), re.IGNORECASE)
    return None if match is None else int(match[1]) * _UNITS[match[2].lower()]


def check_limits(memory: str, timeout_s: int) -> None:
    size = memory_bytes(memory)
    if size is None or size < _MIN_MEMORY:
        raise InvalidInputError(
            f"--memory takes a size like 8g or 512m (at least 64m), got {memory!r}"
        )
    if not isinstance(timeout_s, int) or isinstance(timeout_s, bool) or timeout_s < 1:
        raise InvalidInputError(f"--timeout must be at least 1 second, got {timeout_s!r}")


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
