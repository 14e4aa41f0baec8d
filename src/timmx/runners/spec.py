"""Which runner exports a job, as data: one typed choice instead of flags and hand-built runners.

    with open_runner(DockerSpec(memory="4g")) as runner:
        result = runner.run(job, workspace, progress)

`LocalSpec`: this process. `DockerSpec`: a one-job container of the backend's image.
`WarmProcessSpec`: a `timmx.worker --serve` process of this host serving many jobs.
`WarmContainerSpec`: a container of one toolchain serving many jobs. Leaving the `with` ends a
warm runner's process or container.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from timmx.images.registry import Pin
from timmx.runners.base import check_limits

if TYPE_CHECKING:
    from timmx.runners.base import Runner

DEFAULT_MEMORY = "8g"
DEFAULT_TIMEOUT_S = 1800


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Limited(_Spec):
    memory: str = DEFAULT_MEMORY
    timeout_s: int = DEFAULT_TIMEOUT_S
    build: bool = True  # build a missing image

    @model_validator(mode="before")
    @classmethod
    def _check_limits(cls, data: Any) -> Any:
        """The CLI's one-line refusals (`--memory takes a size like 8g...`), before pydantic's."""
        if isinstance(data, dict):
            memory = data.get("memory", DEFAULT_MEMORY)
            check_limits(memory, data.get("timeout_s", DEFAULT_TIMEOUT_S))
            data = {**data, "memory": str(memory)}
        return data


class LocalSpec(_Spec):
    kind: Literal["local"] = "local"
    write_report: bool = True  # False: the caller writes the report (a worker, a Ray task)
    verbose: bool = False  # converters' warnings let through


class DockerSpec(_Limited):
    kind: Literal["docker"] = "docker"
    pids_limit: int | None = None
    toolchain: str | None = None  # a toolchain variant's image instead of the backend's


class WarmProcessSpec(_Spec):
    kind: Literal["warm-process"] = "warm-process"
    timeout_s: int = DEFAULT_TIMEOUT_S


class WarmContainerSpec(_Limited):
    kind: Literal["warm-container"] = "warm-container"
    toolchain: str
    pin: Pin | None = None  # the image it must run (`--locked`) instead of the toolchain's
    # Mounted read-only when the container starts: every input of the jobs it may serve.
    inputs: tuple[str, ...] = ()
    pretrained: bool = False  # some job needs pretrained weights: the caches are mounted
    scratch: Path | None = None  # where its exchange folders go; the workspace if None


# One field, `kind`, says which: a spec read from JSON (a Ray task's) is parsed by
# `pydantic.TypeAdapter(RunnerSpec)`.
RunnerSpec = Annotated[
    LocalSpec | DockerSpec | WarmProcessSpec | WarmContainerSpec, Field(discriminator="kind")
]
WarmSpec = WarmProcessSpec | WarmContainerSpec


def warm_key(spec: WarmSpec) -> object:
    """What needs a process or container of its own. A warm process serves jobs of any time
    limit (it is enforced per job); a container's limits and mounts are set when it starts."""
    return spec.kind if isinstance(spec, WarmProcessSpec) else spec


def open_runner(spec: RunnerSpec) -> Runner:
    """The runner `spec` names; use it as a context manager to release a warm one."""
    match spec:
        case LocalSpec():
            from timmx.runners.local import LocalRunner

            return LocalRunner(write_report=spec.write_report, verbose=spec.verbose)
        case DockerSpec():
            from timmx.runners.docker import DockerRunner

            return DockerRunner(
                memory=spec.memory,
                timeout_s=spec.timeout_s,
                build=spec.build,
                pids_limit=spec.pids_limit,
                toolchain=spec.toolchain,
            )
        case WarmProcessSpec():
            from timmx.runners.warm_process import WarmProcess

            return WarmProcess(spec)
        case WarmContainerSpec():
            from timmx.runners.warm_container import WarmContainer

            return WarmContainer(spec)
    raise TypeError(f"not a runner spec: {spec!r}")
