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
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from timmx.contract import ExportJob, ExportResult
from timmx.errors import ContractError, DockerError, InvalidInputError, error_from_kind, first_line
from timmx.images.engine import connect
from timmx.images.find import ensure_image
from timmx.images.identity import BuildSettings
from timmx.output import publish, staging_folder
from timmx.runners.base import Progress, check_job, memory_bytes, no_progress, save_report
from timmx.runners.container_job import JOB_DIR, Mounts, host_paths, stage_job
from timmx.runners.container_result import read_result, staged_artifacts

RUN_LABEL = "ai.timmx.run"  # on every export container, so none can hide
_EXIT_SIGKILL = 137
_MIN_MEMORY = 64 * 1024**2  # a floor for typos like 8m: importing torch alone needs more


class DockerRunner:
    def __init__(
        self,
        memory: str = "8g",
        timeout_s: int = 1800,
        build: bool = True,
        pids_limit: int | None = None,
        settings: BuildSettings | None = None,
    ) -> None:
        _check_limits(memory, timeout_s)  # before any engine is contacted
        self.memory = memory
        self.timeout_s = timeout_s
        self.build = build
        self.pids_limit = pids_limit or int(os.environ.get("TIMMX_PIDS_LIMIT", "1024"))
        self.settings = settings

    def run(
        self, job: ExportJob, workspace: Path, progress: Progress = no_progress
    ) -> ExportResult:
        """Export `job` in a container; return the result or raise a one-line TimmxError."""
        backend, _ = check_job(job, workspace)
        destination = workspace / job.output
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
                mounts = stage_job(job, workspace, staging, destination.name)
                out = staging / "out"
                tick = time.perf_counter()
                code, oom, timed_out, tail = self._run_container(
                    client, image.ref, mounts, staging, progress
                )
                container_s = time.perf_counter() - tick
                result = read_result(out / "result.json")
                if result is None:
                    raise _no_result(code, oom, timed_out, tail, self, backend.name)
                if result.error is not None:
                    message = host_paths(result.error.message, mounts.renames)
                    raise error_from_kind(result.error.kind, message)
                if result.status != "success":
                    raise ContractError("the worker reported a failure without an error")
                staged = staged_artifacts(result, out)
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

    def container_options(self, image: str, mounts: Mounts, staging: Path) -> dict[str, Any]:
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
        self, client, image: str, mounts: Mounts, staging: Path, progress: Progress
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
                if not line.startswith("error: "):  # the host says it, with the host's paths
                    progress(line)
            code = int(container.wait().get("StatusCode", -1))
            container.reload()
            oom = bool(container.attrs.get("State", {}).get("OOMKilled"))
            return code, oom, timed_out.is_set(), list(tail)
        finally:
            timer.cancel()
            with suppress(APIError):
                container.remove(force=True)


def _check_limits(memory: str, timeout_s: int) -> None:
    size = memory_bytes(memory)
    if size is None or size < _MIN_MEMORY:
        raise InvalidInputError(
            f"--memory takes a size like 8g or 512m (at least 64m), got {memory!r}"
        )
    if not isinstance(timeout_s, int) or isinstance(timeout_s, bool) or timeout_s < 1:
        raise InvalidInputError(f"--timeout must be at least 1 second, got {timeout_s!r}")


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
