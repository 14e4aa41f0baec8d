"""The Python API: the same exports as `timmx export`, as function calls.

    from timmx import export
    result = export("onnx", "resnet18", checkpoint="ft.pth", num_classes=10, output="m.onnx")
    result.verification.status      # "passed"

Options are the CLI's flags as keyword arguments (`--dynamic-batch` is `dynamic_batch=True`,
`--isolated` is `isolated=True`, `--toolchain NAME` is `toolchain="NAME"`); paths are relative
to the current folder. Failures raise the
same one-line `TimmxError`s the CLI prints. `export_model` and `backends` behave as upstream
timmx's functions of the same names, so scripts written for it run unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from timmx.contract import ExportJob, ExportResult
from timmx.runners.base import Progress, Runner, no_progress

if TYPE_CHECKING:
    from timmx.backends.base import Backend


def export(
    backend: str, model: str, /, *, progress: Progress | None = None, **options: Any
) -> ExportResult:
    """Export `model` with `backend`, verify it, write the artifact and its report; return the
    report. `progress` receives a line per step."""
    from timmx.backends import get_backend

    implementation = get_backend(backend)
    job, runner = job_and_runner(
        implementation, model, options, bool(os.environ.get("TIMMX_DEBUG"))
    )
    return runner.run(job, Path.cwd(), progress or no_progress)


def job_and_runner(
    backend: Backend, model: str, options: dict[str, Any], verbose: bool
) -> tuple[ExportJob, Runner]:
    """Options (the CLI's flags by their Python names; the missing ones take their defaults)
    as an ExportJob, and the runner they ask for: the one path of the CLI and the API."""
    from timmx.job_builder import build_job, with_defaults
    from timmx.runners.spec import DockerSpec, LocalSpec, open_runner

    options = dict(options)
    toolchain = options.pop("toolchain", None)  # a [toolchains.NAME] variant: always isolated
    variant = None
    if toolchain is not None:
        from timmx.toolchains import toolchain_for_export

        variant = toolchain_for_export(backend, toolchain)
        options["isolated"] = True
    values = with_defaults(backend, options)
    spec = (
        DockerSpec(
            memory=values["memory"],
            timeout_s=values["timeout"],
            build=values["build"],
            toolchain=variant,
        )
        if values["isolated"]
        else LocalSpec(verbose=verbose)
    )
    return build_job(backend, model, values), open_runner(spec)


def export_model(backend: str, model_name: str, /, **options: Any) -> Path:
    """Export as `export` does; return the artifact's path (upstream timmx's signature)."""
    result = export(backend, model_name, **options)
    assert result.job is not None
    return Path(result.job.output)


def backends() -> list[str]:
    """Names of the registered backends (the `timmx export <name>` commands)."""
    from timmx.backends import all_backends

    return [backend.name for backend in all_backends()]
