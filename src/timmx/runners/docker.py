"""Run an ExportJob in its backend's pinned Docker image, under the same JSON contract.

The host writes job.json (paths relative to /job) into a private staging folder beside the
artifact, mounts the inputs read-only and an output folder read-write, runs the image's worker
as the caller's uid:gid with no network, a read-only root filesystem, no capabilities and
limits on memory, processes and time; then it validates result.json, moves the artifacts into
place atomically and writes the same report as an in-process export. No torch here.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from timmx.backends import get_backend
from timmx.contract import ExportJob, ExportResult, parse_result
from timmx.errors import (
    CheckpointError,
    ContractError,
    DockerError,
    InvalidInputError,
    error_from_kind,
    first_line,
)
from timmx.images.build import ensure_image
from timmx.images.engine import connect
from timmx.images.identity import BuildSettings
from timmx.output import describe_files, publish, staging_folder, write_text_atomic
from timmx.runners.local import check_job, save_report

Progress = Callable[[str], None]

JOB_DIR = "/job"
RUN_LABEL = "ai.timmx.run"  # on every export container, so none can hide
_EXIT_SIGKILL = 137


def _quiet(_: str) -> None:
    pass


@dataclass
class _Mounts:
    """Host paths mounted into the container, and the job rewritten to see them under /job."""

    job: ExportJob
    binds: list[tuple[Path, str, bool]] = field(default_factory=list)  # host, target, read-only
    env: dict[str, str] = field(default_factory=dict)
    renames: dict[str, str] = field(default_factory=dict)  # container path -> host path


class DockerRunner:
    def __init__(
        self,
        memory: str = "8g",
        timeout_s: int = 1800,
        build: bool = True,
        pids_limit: int | None = None,
        settings: BuildSettings | None = None,
    ) -> None:
        self.memory = memory
        self.timeout_s = timeout_s
        self.build = build
        self.pids_limit = pids_limit or int(os.environ.get("TIMMX_PIDS_LIMIT", "1024"))
        self.settings = settings

    def run(self, job: ExportJob, workspace: Path, progress: Progress = _quiet) -> ExportResult:
        """Export `job` in a container; return the result or raise a one-line TimmxError."""
        backend, _ = check_job(job, workspace)
        destination = workspace / job.output
        if self.timeout_s < 1:
            raise InvalidInputError(f"--timeout must be at least 1 second, got {self.timeout_s}")
        settings = self.settings or BuildSettings.resolve()

        client = connect("or drop --isolated to export in this process")
        try:
            image = ensure_image(
                client,
                backend.toolchain,
                settings,
                build=self.build,
                notice=progress,
                on_line=_steps_only(progress),
            )
            with staging_folder(destination) as staging, _terminate_as_interrupt():
                mounts = _stage(job, workspace, staging, destination.name)
                out = staging / "out"
                tick = time.perf_counter()
                code, oom, timed_out, tail = self._run_container(
                    client, image.ref, mounts, staging, progress
                )
                container_s = time.perf_counter() - tick
                result = _read_result(out / "result.json")
                if result is None:
                    raise _no_result(code, oom, timed_out, tail, self, backend.name)
                if result.error is not None:
                    message = _host_paths(result.error.message, mounts.renames)
                    raise error_from_kind(result.error.kind, message)
                if result.status != "success":
                    raise ContractError("the worker reported a failure without an error")
                staged = _staged_artifacts(result, out)
                result.job = job
                if result.environment is not None:
                    result.environment.runner = "docker"
                    result.environment.image = image.ref
                    result.environment.image_id = image.id
                result.timings["container_s"] = round(container_s, 3)
                publish(staged, out, destination.parent)
        finally:
            client.close()
        save_report(result, destination)
        return result

    def container_options(self, image: str, mounts: _Mounts, staging: Path) -> dict[str, Any]:
        """The docker SDK `containers.create` arguments: the hardening lives here."""
        from docker.types import Mount

        binds = [
            Mount(
                target=f"{JOB_DIR}/job.json",
                source=str(staging / "job.json"),
                type="bind",
                read_only=True,
            ),
            Mount(
                target=f"{JOB_DIR}/out", source=str(staging / "out"), type="bind", read_only=False
            ),
        ]
        binds += [
            Mount(target=target, source=str(host), type="bind", read_only=read_only)
            for host, target, read_only in mounts.binds
        ]
        return {
            "image": image,
            "command": [f"{JOB_DIR}/job.json", "--result", f"{JOB_DIR}/out/result.json"],
            "name": f"timmx-{uuid.uuid4().hex[:12]}",
            "labels": {RUN_LABEL: str(os.getpid())},
            "user": f"{os.getuid()}:{os.getgid()}",
            "working_dir": JOB_DIR,
            "environment": {
                "HOME": "/tmp",
                "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
                **mounts.env,
            },
            "mounts": binds,
            "network_mode": "none",
            "read_only": True,
            "tmpfs": {"/tmp": "rw,exec,nosuid,nodev,size=2g"},
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "mem_limit": self.memory,
            "memswap_limit": self.memory,
            "pids_limit": self.pids_limit,
            "detach": True,
        }

    def _run_container(
        self, client, image: str, mounts: _Mounts, staging: Path, progress: Progress
    ) -> tuple[int, bool, bool, list[str]]:
        """Run to the end (or the time limit); the container is removed whatever happens."""
        from docker.errors import APIError

        try:
            container = client.containers.create(**self.container_options(image, mounts, staging))
        except APIError as exc:
            raise DockerError(f"cannot create the export container: {first_line(exc)}") from None
        tail: deque[str] = deque(maxlen=20)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            with suppress(APIError):
                container.kill()

        timer = threading.Timer(self.timeout_s, kill)
        timer.daemon = True
        try:
            client.api.timeout = None  # a quiet export must not look like a dead engine
            container.start()
            timer.start()
            for line in _lines(container.logs(stream=True, follow=True)):
                tail.append(line)
                progress(line)
            code = int(container.wait().get("StatusCode", -1))
            container.reload()
            oom = bool(container.attrs.get("State", {}).get("OOMKilled"))
            return code, oom, timed_out.is_set(), list(tail)
        finally:
            timer.cancel()
            with suppress(APIError):
                container.remove(force=True)


def _stage(job: ExportJob, workspace: Path, staging: Path, artifact_name: str) -> _Mounts:
    """Write job.json into `staging` with /job-relative paths; collect the read-only inputs."""
    mounts = _Mounts(job=job)
    update: dict[str, Any] = {"output": f"out/{artifact_name}"}
    mounts.renames[f"out/{artifact_name}"] = str(workspace / job.output)
    if job.model.checkpoint:
        host = (workspace / job.model.checkpoint).resolve()
        if not host.exists():
            raise CheckpointError(f"checkpoint not found: {workspace / job.model.checkpoint}")
        if not host.is_file():
            raise CheckpointError(f"checkpoint is not a file: {workspace / job.model.checkpoint}")
        inside = _mount_input(mounts, workspace, job.model.checkpoint, "checkpoint")
        update["model"] = job.model.model_copy(update={"checkpoint": inside})
    if job.calibration is not None and job.calibration.path:
        if not (workspace / job.calibration.path).exists():
            raise InvalidInputError(
                f"calibration data not found: {workspace / job.calibration.path}"
            )
        inside = _mount_input(mounts, workspace, job.calibration.path, "calibration")
        update["calibration"] = job.calibration.model_copy(update={"path": inside})
    file_options = {}
    for name in _path_options(job.backend):
        value = job.options.get(name)
        if value is None:
            continue
        if not (workspace / value).exists():
            flag = "--" + name.replace("_", "-")
            raise InvalidInputError(f"{flag} file not found: {workspace / value}")
        file_options[name] = _mount_input(mounts, workspace, value, f"option-{name}")
    if file_options:
        update["options"] = {**job.options, **file_options}
    if job.model.pretrained:
        _mount_caches(mounts)
    rewritten = job.model_copy(update=update)
    (staging / "out").mkdir(mode=0o700)  # created by the caller, so writable by the caller's uid
    write_text_atomic(staging / "job.json", rewritten.model_dump_json(indent=2) + "\n")
    mounts.job = rewritten
    return mounts


def _mount_input(mounts: _Mounts, workspace: Path, relative: str, slot: str) -> str:
    """Mount one host file or folder read-only under /job/in/SLOT; return its job path."""
    host = (workspace / relative).resolve()
    inside = f"in/{slot}/{host.name}"
    mounts.binds.append((host, f"{JOB_DIR}/{inside}", True))
    mounts.renames[inside] = str(workspace / relative)
    return inside


def _path_options(backend_name: str) -> list[str]:
    """The backend's options that name input files (typed Path): they are mounted too."""
    fields = get_backend(backend_name).Options.model_fields
    return [
        name
        for name, info in fields.items()
        if info.annotation is Path or Path in get_args(info.annotation)
    ]


def _mount_caches(mounts: _Mounts) -> None:
    """Pretrained weights: the host's Hugging Face and torch hub caches, read-only, offline."""
    home = Path.home()
    hf_home = Path(os.environ.get("HF_HOME") or home / ".cache" / "huggingface")
    hub = Path(os.environ.get("HF_HUB_CACHE") or hf_home / "hub")
    if hub.is_dir():
        mounts.binds.append((hub.resolve(), "/cache/huggingface/hub", True))
        mounts.env.update({"HF_HUB_CACHE": "/cache/huggingface/hub", "HF_HUB_OFFLINE": "1"})
    torch_home = Path(os.environ.get("TORCH_HOME") or home / ".cache" / "torch")
    if torch_home.is_dir():
        mounts.binds.append((torch_home.resolve(), "/cache/torch", True))
        mounts.env["TORCH_HOME"] = "/cache/torch"


def _host_paths(message: str, renames: dict[str, str]) -> str:
    """Name the host's files in a worker's message, not their places in the container."""
    for inside in sorted(renames, key=len, reverse=True):
        message = message.replace(f"{JOB_DIR}/{inside}", renames[inside])
        message = message.replace(inside, renames[inside])
    return message


def _read_result(path: Path) -> ExportResult | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return parse_result(text)  # ContractError names both schema versions on a mismatch


def _staged_artifacts(result: ExportResult, out: Path) -> list[Path]:
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


def _no_result(code, oom, timed_out, tail, runner: DockerRunner, backend: str) -> DockerError:
    if timed_out:
        return DockerError(
            f"the {backend} export timed out after {runner.timeout_s} s and was stopped; "
            "nothing was written (raise --timeout)"
        )
    if oom:
        return DockerError(
            f"the {backend} export ran out of memory (--memory {runner.memory}) and was killed; "
            "nothing was written (raise --memory)"
        )
    if code == _EXIT_SIGKILL:
        return DockerError(
            f"the {backend} export container was killed (SIGKILL, exit code 137); "
            "nothing was written"
        )
    last = " | ".join(tail[-3:]) or "no output"
    return DockerError(f"the worker exited with code {code} and wrote no result: {last}")


def _lines(stream) -> Any:
    pending = b""
    for chunk in stream:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            line = raw.decode(errors="replace").rstrip("\r")
            if line.strip():
                yield line
    if pending.strip():
        yield pending.decode(errors="replace")


def _steps_only(progress: Progress) -> Progress:
    def show(line: str) -> None:
        if line.startswith("Step "):
            progress("build " + " ".join(line.split())[:100])

    return show


@contextmanager
def _terminate_as_interrupt():
    """SIGTERM unwinds like Ctrl-C, so the finally blocks remove the container."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
