"""Run an ExportJob in this process: build the model, export, verify, publish atomically."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from timmx.backends.base import Backend, BackendOptions, ExportContext
from timmx.contract import ExportJob, ExportResult, Verification
from timmx.environment import describe
from timmx.errors import ExportFailedError, TimmxError, VerificationError, first_line
from timmx.ownership import check_replaceable
from timmx.publish import describe_files, publish, staging_folder
from timmx.quiet import converters_quiet, fewer_collections
from timmx.runners.base import NothingWarm, Progress, check_job, no_progress, save_report

if TYPE_CHECKING:
    from timmx.modeling import PreparedModel


RANDOM_WEIGHTS = (
    "random weights (neither --pretrained nor --checkpoint): fine for a smoke test, misleading "
    "for size, speed or accuracy (timm zero-initialises residual branches; converters fold "
    "them away)"
)


def random_weights(job: ExportJob) -> bool:
    """True when the model keeps timm's random initialisation: no weights from anywhere."""
    spec = job.model
    loads = ("checkpoint_path", "pretrained_cfg_overlay", "pretrained_cfg")
    return not (spec.pretrained or spec.checkpoint or any(k in spec.kwargs for k in loads))


class LocalRunner(NothingWarm):
    """Exports in this process; needs the backend's packages installed here.

    `write_report=False` leaves the report to the caller (the worker in a container returns the
    result to the host, which writes it). `verbose` lets converters' warnings through."""

    def __init__(self, write_report: bool = True, verbose: bool = False) -> None:
        self.write_report = write_report
        self.verbose = verbose

    def run(
        self, job: ExportJob, workspace: Path, progress: Progress = no_progress
    ) -> ExportResult:
        """Export `job`; return the result, or raise a TimmxError with nothing left behind."""
        with fewer_collections():  # imports and converters alike: see fewer_collections
            return self._run(job, workspace, progress)

    def _run(self, job: ExportJob, workspace: Path, progress: Progress) -> ExportResult:
        started = time.perf_counter()
        backend, options = check_job(job, workspace)
        destination = workspace / job.output
        backend.ensure_available()
        timings: dict[str, float] = {}

        progress("Loading torch and timm")
        tick = time.perf_counter()
        with converters_quiet(self.verbose):  # import-time notes of torch, torchvision, timm
            from timmx.modeling import prepare
            from timmx.verification import describe_failure
        timings["import_s"] = time.perf_counter() - tick
        progress(f"Creating {job.model.name}")
        tick = time.perf_counter()
        with converters_quiet(self.verbose):  # timm's and torch.load's warnings
            prepared = prepare(job, workspace)
        timings["model_s"] = time.perf_counter() - tick

        with staging_folder(destination) as staging:

            def export_and_verify(options: BackendOptions):
                ctx = ExportContext(
                    job=job,
                    model=prepared.module,
                    example_input=prepared.example_input,
                    artifact=staging / destination.name,
                    workspace=workspace,
                    summary=prepared.summary,
                    timm_model=prepared.timm_model,
                    data_config=prepared.data_config,
                )
                if random_weights(job):
                    ctx.warn(RANDOM_WEIGHTS)
                progress(f"Exporting to {backend.name}")
                tick = time.perf_counter()
                with self._converter(f"{backend.name} export of {job.model.name} failed"):
                    staged = backend.export(ctx, options)
                timings["export_s"] = timings.get("export_s", 0) + time.perf_counter() - tick
                verification = Verification(
                    status="skipped", note="--no-verify", details=ctx.details
                )
                if job.verify.enabled:
                    progress(f"Verifying in {backend.runtime_name}")
                    tick = time.perf_counter()
                    verification = self._verify(backend, options, ctx, prepared, staged[0])
                    timings["verify_s"] = timings.get("verify_s", 0) + time.perf_counter() - tick
                return ctx, staged, verification

            ctx, staged, verification = export_and_verify(options)
            fallback = backend.fallback(options) if verification.status == "failed" else None
            if fallback is not None:  # a default the user did not choose failed: the other one
                options, why = fallback
                worst = max((c.max_abs_error for c in verification.checks), default=0.0)
                for path in staged:
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        path.unlink(missing_ok=True)
                ctx, staged, verification = export_and_verify(options)
                if verification.status != "failed":
                    ctx.warnings.append(f"{why}: its max abs error was {worst:.3g}")
            if verification.status == "failed":
                fix = backend.nonfinite_fix(options)
                advice = backend.verification_advice(options)
                raise VerificationError(describe_failure(verification, fix, advice))

            tick = time.perf_counter()
            artifacts = describe_files(staged, staging)
            environment = describe(backend.requires)
            timings["report_s"] = time.perf_counter() - tick
            timings["total_s"] = time.perf_counter() - started
            result = ExportResult(
                status="success",
                job=job,
                artifacts=artifacts,
                model=prepared.summary,
                verification=verification,
                environment=environment,
                timings={k: round(v, 3) for k, v in timings.items()},
                warnings=ctx.warnings,
            )
            # Proved again at the moment of replacing: the export may have taken minutes.
            check_replaceable(destination, backend)
            publish(staged, staging, destination.parent)
        if self.write_report:
            save_report(result, destination)
        return result

    @contextmanager
    def _converter(self, what: str) -> Iterator[None]:
        """Around every call into a converter or runtime: its output kept quiet, a TimmxError
        let through, any other failure turned into one ExportFailedError line."""
        try:
            with converters_quiet(self.verbose):
                yield
        except TimmxError:
            raise
        except Exception as exc:
            raise ExportFailedError(f"{what}: {first_line(exc)}") from exc

    def _verify(
        self,
        backend: Backend,
        options: BackendOptions,
        ctx: ExportContext,
        prepared: PreparedModel,
        artifact: Path,
    ) -> Verification:
        from timmx.verification import effective_tolerance, verify

        with self._converter(
            f"the {backend.name} artifact does not load in {backend.runtime_name}"
        ):
            runtime = backend.load_runtime(artifact, options)
        with self._converter(f"the {backend.name} artifact could not be inspected"):
            details = {**ctx.details, **backend.inspect_artifact(artifact, options)}
        note = details.pop("note", None)
        if runtime is None:
            return Verification(
                status="skipped",
                note=note
                or f"no {backend.name} runtime runs on this platform: numerics not checked",
                details=details,
            )
        with self._converter(
            f"the {backend.name} artifact failed to run in {backend.runtime_name}"
        ):
            verification = verify(
                ctx.job,
                prepared.module,
                runtime,
                backend.runtime_name,
                prepared.summary.input_size,
                backend.verify_batch_sizes(ctx.job),
                effective_tolerance(backend.tolerance(options), ctx.job),
                known={(ctx.job.verify.seed, ctx.job.input.batch_size): prepared.example_output},
                samples=ctx.verification_inputs,
                samples_label=ctx.verification_label,
            )
        return verification.model_copy(update={"note": note, "details": details})
