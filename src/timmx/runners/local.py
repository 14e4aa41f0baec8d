"""Run an ExportJob in this process: build the model, export, verify, publish atomically."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from timmx.backends import get_backend
from timmx.backends.base import Backend, BackendOptions, ExportContext
from timmx.contract import ExportJob, ExportResult, Verification
from timmx.environment import describe
from timmx.errors import ExportFailedError, TimmxError, VerificationError, first_line
from timmx.output import (
    check_output,
    describe_files,
    publish,
    report_path,
    staging_folder,
    write_text_atomic,
)

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def check_job(job: ExportJob, workspace: Path) -> tuple[Backend, BackendOptions]:
    """Everything that can be refused without torch: backend, options, output path."""
    backend = get_backend(job.backend)
    options = backend.parse_options(job.options)
    backend.check(job, options)
    check_output(workspace / job.output, backend.suffixes, backend.name)
    return backend, options


@contextmanager
def _fails_as(what: str) -> Iterator[None]:
    """Let a TimmxError through; turn any other failure into one ExportFailedError line."""
    try:
        yield
    except TimmxError:
        raise
    except Exception as exc:
        raise ExportFailedError(f"{what}: {first_line(exc)}") from exc


def run_local(
    job: ExportJob, workspace: Path, progress: Progress = _quiet, write_report: bool = True
) -> ExportResult:
    """Export `job`; return the result, or raise a TimmxError with nothing left behind."""
    started = time.perf_counter()
    backend, options = check_job(job, workspace)
    destination = workspace / job.output
    backend.ensure_available()

    from timmx.modeling import prepare
    from timmx.verification import describe_failure

    timings: dict[str, float] = {}
    progress(f"Creating {job.model.name}")
    tick = time.perf_counter()
    prepared = prepare(job, workspace)
    timings["model_s"] = time.perf_counter() - tick

    with staging_folder(destination) as staging:
        ctx = ExportContext(
            job=job,
            model=prepared.module,
            example_input=prepared.example_input,
            artifact=staging / destination.name,
            workspace=workspace,
        )
        progress(f"Exporting to {backend.name}")
        tick = time.perf_counter()
        with _fails_as(f"{backend.name} export of {job.model.name} failed"):
            staged = backend.export(ctx, options)
        timings["export_s"] = time.perf_counter() - tick

        verification = Verification(status="skipped", note="--no-verify", details=ctx.details)
        if job.verify.enabled:
            progress(f"Verifying in {backend.runtime_name}")
            tick = time.perf_counter()
            verification = _verify(backend, options, ctx, prepared, staged[0])
            timings["verify_s"] = time.perf_counter() - tick
            if verification.status == "failed":
                raise VerificationError(describe_failure(verification))

        timings["total_s"] = time.perf_counter() - started
        result = ExportResult(
            status="success",
            job=job,
            artifacts=describe_files(staged, staging),
            model=prepared.summary,
            verification=verification,
            environment=describe(backend.requires),
            timings={k: round(v, 3) for k, v in timings.items()},
            warnings=ctx.warnings,
        )
        publish(staged, staging, destination.parent)
    if write_report:
        save_report(result, destination)
    return result


def _verify(backend, options, ctx: ExportContext, prepared, artifact: Path) -> Verification:
    from timmx.verification import verify

    with _fails_as(f"the {backend.name} artifact does not load in {backend.runtime_name}"):
        runtime = backend.load_runtime(artifact, options)
    with _fails_as(f"the {backend.name} artifact could not be inspected"):
        details = {**ctx.details, **backend.inspect_artifact(artifact, options)}
    note = details.pop("note", None)
    if runtime is None:
        return Verification(
            status="skipped",
            note=note or f"no {backend.name} runtime runs on this platform: numerics not checked",
            details=details,
        )
    with _fails_as(f"the {backend.name} artifact failed to run in {backend.runtime_name}"):
        verification = verify(
            ctx.job,
            prepared.module,
            runtime,
            backend.runtime_name,
            prepared.summary.input_size,
            backend.verify_batch_sizes(ctx.job),
            backend.tolerance(options),
        )
    return verification.model_copy(update={"note": note, "details": details})


def save_report(result: ExportResult, artifact: Path) -> Path:
    path = report_path(artifact)
    write_text_atomic(path, result.model_dump_json(indent=2) + "\n")
    return path
