"""Run an ExportJob in its backend's pinned Docker image, under the same JSON contract.

The host writes job.json (paths relative to /job) into a private staging folder beside the
artifact, mounts the inputs read-only and an output folder read-write, runs the image's worker
as the caller's uid:gid with no network, a read-only root filesystem, no capabilities and
limits on memory, processes and time; then it validates result.json, publishes host-made copies
of exactly the files the job declares (`timmx.runners.accept`) and writes the same report as an
in-process export. No torch here.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol

from timmx import cleanup
from timmx.contract import ExportJob, ExportResult
from timmx.errors import DockerError, ModelError, first_line
from timmx.images.engine import connect
from timmx.images.find import ensure_image
from timmx.images.identity import BuildSettings
from timmx.publish import staging_folder
from timmx.quiet import debug_output
from timmx.runners.base import (
    NothingWarm,
    Progress,
    check_job,
    check_limits,
    no_progress,
    save_report,
)
from timmx.runners.container_job import JOB_DIR, Mounts, cache_binds, stage_job
from timmx.runners.container_result import accept_result, read_result
from timmx.time_limit import TIME_LIMIT_ENV, timed_out_message

RUN_LABEL = cleanup.RUN_LABEL  # on every export container, so none can hide
EXIT_SIGKILL = 137
GRACE_S = 5  # past the job's time limit, for the worker to say so itself


class Limits(Protocol):
    memory: str
    timeout_s: int
    pids_limit: int


class DockerRunner(NothingWarm):
    def __init__(
        self,
        memory: str = "8g",
        timeout_s: int = 1800,
        build: bool = True,
        pids_limit: int | None = None,
        settings: BuildSettings | None = None,
        toolchain: str | None = None,
    ) -> None:
        check_limits(memory, timeout_s)  # before any engine is contacted
        self.toolchain = toolchain  # a variant's name; None: the backend's own toolchain
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
                self.toolchain or backend.toolchain,
                settings,
                build=self.build,
                notice=progress,
                on_line=steps_only(progress),
            )
            if job.model.pretrained:
                fetch_weights(client, image.ref, job.model.name, self, progress)
            with staging_folder(destination) as staging, _terminate_as_interrupt():
                mounts = stage_job(job, workspace, staging, destination.name)
                out = staging / "out"
                tick = time.perf_counter()
                code, oom, timed_out, tail, other = self._run_container(
                    client, image.ref, mounts, staging, progress
                )
                container_s = time.perf_counter() - tick
                keep_log(other, destination, progress)
                result = read_result(out / "result.json")
                if result is None:
                    raise no_result(code, oom, timed_out, tail, self, backend.name)
                result.timings["container_s"] = round(container_s, 3)
                accept_result(result, out, job, image, mounts.renames, destination)
        finally:
            client.close()
        save_report(result, destination)
        return result

    def container_options(self, image: str, mounts: Mounts, staging: Path) -> dict[str, Any]:
        """The docker SDK `containers.create` arguments for one job."""
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
        return hardened_options(
            image,
            [f"{JOB_DIR}/job.json", "--result", f"{JOB_DIR}/out/result.json"],
            binds + bind_mounts(mounts.binds),
            {**mounts.env, TIME_LIMIT_ENV: str(self.timeout_s)},
            self.memory,
            self.pids_limit,
        )

    def _run_container(
        self, client, image: str, mounts: Mounts, staging: Path, progress: Progress
    ) -> tuple[int, bool, bool, list[str], list[str]]:
        """Run to the end (or the time limit); the container is removed whatever happens.
        Returns its exit code, whether it ran out of memory or time, its last lines, and what
        it wrote on stderr (kept off the terminal: see keep_log)."""
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

        timer = threading.Timer(self.timeout_s + GRACE_S, kill)  # the worker stops itself first
        timer.daemon = True
        try:
            client.api.timeout = None  # a quiet export must not look like a dead engine
            exit_code = exit_code_of(client, container)
            started = int(time.time()) - 1
            container.start()
            timer.start()
            # The worker's steps are on stdout; converters' own logs (C++ libraries too) on
            # stderr, kept off the terminal unless --debug (see keep_log). Both are read while
            # it runs: the engine removes the container when it ends.
            verbose = debug_output()
            other: list[str] = []
            reader = None
            if not verbose:
                reader = threading.Thread(
                    target=_collect, args=(container, other), name="timmx-stderr", daemon=True
                )
                reader.start()
            for line in log_lines(container.logs(stream=True, follow=True, stderr=verbose)):
                tail.append(line)
                if not line.startswith("error: "):  # the host says it, with the host's paths
                    progress(line)
            code = exit_code()
            if reader is not None:
                reader.join(timeout=GRACE_S)
            tail.extend(other)  # a failure's last lines: the worker's `error:` line among them
            oom = code == EXIT_SIGKILL and ran_out_of_memory(client, container.id, started)
            return code, oom, timed_out.is_set(), list(tail), other
        finally:
            timer.cancel()
            with suppress(APIError):
                container.remove(force=True)


MAX_KEPT_LINES = 20_000  # of a container's stderr, for its log file: the first and last half


def _collect(container, lines: list[str], limit: int = MAX_KEPT_LINES) -> None:
    """The container's stderr, a line at a time, until it ends; past `limit` lines the first
    and the last half of them (the worker's `error:` line is last), and how many were left out."""
    last: deque[str] = deque(maxlen=limit - limit // 2)
    left_out = 0
    with suppress(Exception):  # the engine dropped the stream: the container is gone
        for line in log_lines(container.logs(stream=True, follow=True, stdout=False)):
            if len(lines) < limit // 2:
                lines.append(line)
                continue
            left_out += len(last) == last.maxlen
            last.append(line)
    if left_out:
        lines.append(f"... ({left_out} lines left out)")
    lines.extend(last)


def keep_log(lines: list[str], destination: Path, progress: Progress) -> Path | None:
    """What the container wrote besides timmx's own steps (converters' and native libraries'
    logs) in a log file of the user's cache, named in one progress line; None if it wrote none."""
    if not lines:
        return None
    from timmx.model_index import cache_folder

    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = cache_folder() / "logs" / f"{destination.name}.{stamp}.{os.getpid()}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    except OSError:
        return None
    count = f"{len(lines)} line{'' if len(lines) == 1 else 's'}"
    progress(f"the converter's own output ({count}) is in {path}; --debug shows it")
    return path


def ran_out_of_memory(client, container_id: str, since: int) -> bool:
    """The engine's `oom` event for the container: it is removed on exit, and its OOMKilled
    flag with it, but the engine's event log keeps what happened."""
    try:
        events = client.api.events(
            since=since,
            until=int(time.time()) + 1,
            filters={"container": container_id, "event": "oom"},
            decode=True,
        )
        return any(True for _ in events)
    except Exception:  # an engine without the events API: say what is known
        return False


def exit_code_of(client, container) -> Callable[[], int]:
    """Waits for the container's exit code from before it starts: it removes itself when it
    ends, and a wait that begins after that finds nothing."""
    box: list[int] = []

    def wait() -> None:
        with suppress(Exception):
            box.append(int(client.api.wait(container.id, condition="removed")["StatusCode"]))

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()

    def code() -> int:
        waiter.join(60)
        return box[0] if box else -1

    return code


def fetch_weights(client, image: str, name: str, limits: Limits, progress: Progress) -> None:
    """The export container has no network: the weights come into the host's caches first,
    by the image's timm, in a container that can reach the hub and write only there. It gets
    the network (and a hub token): only a toolchain image of this timmx runs it."""
    from docker.errors import APIError

    from timmx.images.trust import timmx_image_id

    image_id = timmx_image_id(client, image)
    env: dict[str, str] = {}
    binds = cache_binds(env, writable=True)
    options = hardened_options(
        image_id, [name], bind_mounts(binds), env, limits.memory, limits.pids_limit
    )
    options.update(network_mode="bridge", entrypoint=["/opt/venv/bin/python", "-m", "timmx.fetch"])
    progress(f"Fetching the pretrained weights of {name}")
    try:
        container = client.containers.create(**options)
    except APIError as exc:
        raise DockerError(f"cannot create the fetch container: {first_line(exc)}") from None
    timer = threading.Timer(limits.timeout_s, lambda: _remove_quietly(container))
    timer.daemon = True
    try:
        exit_code = exit_code_of(client, container)
        container.start()
        timer.start()
        lines = deque(log_lines(container.logs(stream=True, follow=True)), maxlen=20)
        code = exit_code()
    finally:
        timer.cancel()
        _remove_quietly(container)
    if code != 0:
        errors = [line[len("error: ") :] for line in lines if line.startswith("error: ")]
        last = errors[-1] if errors else (" | ".join(list(lines)[-3:]) or f"exit code {code}")
        raise ModelError(last)


def _remove_quietly(container) -> None:
    from docker.errors import APIError

    with suppress(APIError):
        container.remove(force=True)


def hardened_options(
    image: str,
    command: list[str],
    mounts: list[Any],
    env: dict[str, str],
    memory: str,
    pids_limit: int,
) -> dict[str, Any]:
    """`containers.create` arguments for an export container: the hardening lives here.

    It runs as the caller's uid:gid with no network, a read-only root filesystem, no
    capabilities and limits on memory and processes; it is labelled with this run's id and
    owner (so Ctrl-C and `timmx clean` know theirs and an orphan) and removes itself when it
    ends, even with nobody watching."""
    return {
        "image": image,
        "command": command,
        "name": f"timmx-{uuid.uuid4().hex[:12]}",
        "labels": cleanup.container_labels(),
        "user": f"{os.getuid()}:{os.getgid()}",
        "working_dir": JOB_DIR,
        "environment": {
            "HOME": "/tmp",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            **env,
        },
        "mounts": mounts,
        "network_mode": "none",
        "read_only": True,
        "tmpfs": {"/tmp": "rw,exec,nosuid,nodev,size=2g"},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "mem_limit": memory,
        "memswap_limit": memory,
        "pids_limit": pids_limit,
        "auto_remove": True,
        "detach": True,
    }


def bind_mounts(binds: list[tuple[Path, str, bool]]) -> list[Any]:
    from docker.types import Mount

    return [
        Mount(target=target, source=str(host), type="bind", read_only=read_only)
        for host, target, read_only in binds
    ]


def no_result(
    code: int, oom: bool, timed_out: bool, tail: list[str], limits: Limits, backend: str
) -> DockerError:
    """Why a container ended without a result, in one line."""
    if timed_out:
        return DockerError(timed_out_message(backend, limits.timeout_s))
    if oom:
        return DockerError(
            f"the {backend} export ran out of memory (--memory {limits.memory}) and was killed; "
            "nothing was written (raise --memory)"
        )
    if code == EXIT_SIGKILL:
        return DockerError(
            f"the {backend} export container was killed (SIGKILL, exit code 137); "
            "nothing was written"
        )
    last = " | ".join(tail[-3:]) or "no output"
    how = "ended" if code == -1 else f"exited with code {code}"  # -1: the engine lost it
    return DockerError(f"the worker {how} and wrote no result: {last}")


MAX_LOG_LINE = 8 * 1024  # bytes of a container's log line that the host keeps


def log_lines(stream, limit: int = MAX_LOG_LINE) -> Iterator[str]:
    """The non-blank lines of a container's log stream (chunks of bytes), each cut at `limit`
    bytes: the rest of a longer line is dropped up to its newline, so a container that writes
    without newlines cannot fill the host's memory."""
    pending = bytearray()
    cut = 0  # bytes of the current line dropped so far
    for chunk in stream:
        start = 0
        while start <= len(chunk):
            end = chunk.find(b"\n", start)
            stop = len(chunk) if end < 0 else end
            room = max(limit - len(pending), 0)
            pending += chunk[start : min(stop, start + room)]
            cut += max(stop - start - room, 0)
            if end < 0:
                break
            line = _log_line(pending, cut)
            if line.strip():
                yield line
            pending.clear()
            cut = 0
            start = end + 1
    line = _log_line(pending, cut)
    if line.strip():
        yield line


def _log_line(raw: bytearray, cut: int) -> str:
    line = raw.decode(errors="replace").rstrip("\r")
    return f"{line}... ({cut} more bytes cut)" if cut else line


def steps_only(progress: Progress) -> Progress:
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
