"""One export container serving many jobs of a build, so torch, timm and the converter are
imported once per container instead of once per job.

`WarmContainer` is the runner: it starts its container at its first job, and another after one
died or for another workspace. The container runs the image's worker as `--serve /job
--no-report`, hardened like a one-job container. It sees every input of the jobs it may serve
read-only under /job/in, and one exchange folder of the host read-write at /job/work (its owner
record lies beside it, out of the container's reach: `timmx clean` trusts it). Jobs go in on
the container's stdin (attached; when the host goes away, stdin closes and the worker ends);
answers come back on its stdout (`timmx.runners.protocol`). The host checks each job's
artifacts and publishes them, as for a one-job container. A container that dies (out of memory,
its time limit, a kill) fails its job with one line, and the next job starts a new one.
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import tempfile
import threading
import time
from collections import deque
from contextlib import suppress
from pathlib import Path
from typing import Any, Self

from timmx.cleanup import EXCHANGE_PREFIX, write_owner
from timmx.contract import ExportJob, ExportResult
from timmx.errors import ContractError, DockerError, first_line
from timmx.images.find import Found
from timmx.runners.base import Progress, check_job, no_progress, save_report
from timmx.runners.container_job import (
    JOB_DIR,
    cache_binds,
    check_input_files,
    rewrite_job,
)
from timmx.runners.container_result import accept_result
from timmx.runners.docker import (
    EXIT_SIGKILL,
    GRACE_S,
    bind_mounts,
    exit_code_of,
    fetch_weights,
    hardened_options,
    log_lines,
    no_result,
    ran_out_of_memory,
    steps_only,
)
from timmx.runners.protocol import (
    Answer,
    ErrorMessage,
    JobMessage,
    Message,
    ProgressMessage,
    decode,
    encode,
)
from timmx.runners.spec import WarmContainerSpec
from timmx.time_limit import TIME_LIMIT_ENV

_WORK = "work"
_MAX_ANSWER = 16 * 1024**2  # bytes of one protocol line: a result is a few KiB, never cut


class _Serving:
    """A started container; `run` one job at a time, `close` when done."""

    def __init__(
        self,
        client,
        image: Found,
        workspace: Path,
        inputs: list[str],
        exchange: Path,
        *,
        memory: str,
        timeout_s: int,
        pids_limit: int,
        pretrained: bool = False,
    ) -> None:
        self.client = client
        self.image = image
        self.workspace = workspace
        self.exchange = exchange
        self.memory = memory
        self.timeout_s = timeout_s
        self.pids_limit = pids_limit
        self._inside: dict[str, str] = {}  # input path (relative to workspace) -> /job path
        binds: list[tuple[Path, str, bool]] = []
        for number, relative in enumerate(inputs):
            host = (workspace / relative).resolve()
            self._inside[relative] = f"in/{number}/{host.name}"
            binds.append((host, f"{JOB_DIR}/in/{number}/{host.name}", True))
        env = {TIME_LIMIT_ENV: str(timeout_s)}
        if pretrained:
            binds += cache_binds(env)
        binds.append((exchange, f"{JOB_DIR}/{_WORK}", False))
        options = hardened_options(
            image.ref,
            ["--serve", JOB_DIR, "--no-report"],
            bind_mounts(binds),
            env,
            memory,
            pids_limit,
        )
        self._jobs = 0
        self._messages: queue.Queue[Message | ContractError | None] = queue.Queue()
        self._tail: deque[str] = deque(maxlen=20)
        self._timed_out = threading.Event()
        self._ended = threading.Event()  # its answers ended, or it said it ends
        self._start(options)

    def _start(self, options: dict[str, Any]) -> None:
        from docker.errors import APIError

        try:
            # Not detached with stdin open: the engine closes its stdin (StdinOnce) when the
            # host's attachment ends, so a host that dies ends the worker too.
            self.container = self.client.containers.create(
                **{**options, "detach": False}, stdin_open=True
            )
        except APIError as exc:
            raise DockerError(f"cannot create the export container: {first_line(exc)}") from None
        self.client.api.timeout = None  # a quiet export must not look like a dead engine
        stdin = self.client.api.attach_socket(
            self.container.id, params={"stdin": 1, "stream": 1, "stdout": 0, "stderr": 0}
        )
        self._stdin = stdin
        self._socket: socket.socket = getattr(stdin, "_sock", stdin)
        self._exit_code = exit_code_of(self.client, self.container)
        self._started = int(time.time()) - 1
        self.container.start()
        threading.Thread(target=self._read_answers, daemon=True).start()
        threading.Thread(target=self._read_log, daemon=True).start()

    @property
    def alive(self) -> bool:
        return self._exit_code is not None and not self._ended.is_set()

    def _read_answers(self) -> None:
        try:
            answers = self.container.logs(stream=True, follow=True, stderr=False)
            for line in log_lines(answers, limit=_MAX_ANSWER):
                try:
                    self._messages.put(decode(line))
                except ContractError as exc:
                    if line.lstrip().startswith("{"):  # a broken message: its job fails
                        self._messages.put(exc)
                    else:  # not the protocol: kept for a failure's message
                        self._tail.append(line)
        except Exception:  # the engine dropped the stream: the container is gone
            pass
        self._ended.set()
        self._messages.put(None)

    def _read_log(self) -> None:
        with suppress(Exception):
            for line in log_lines(self.container.logs(stream=True, follow=True, stdout=False)):
                self._tail.append(line)

    def run(self, job: ExportJob, progress: Progress) -> ExportResult:
        """Export `job` in this container; return the result or raise a one-line TimmxError."""
        if not self.alive:
            raise DockerError("the export container has ended: start another")
        backend, _ = check_job(job, self.workspace)
        check_input_files(job, self.workspace)
        destination = self.workspace / job.output
        self._jobs += 1
        folder = self.exchange / str(self._jobs)
        out = folder / "out"
        out.mkdir(parents=True, mode=0o700)
        renames = {inside: str(self.workspace / rel) for rel, inside in self._inside.items()}
        artifact = f"{_WORK}/{self._jobs}/out/{destination.name}"
        renames[artifact] = str(destination)
        inside = rewrite_job(job, self._mount_path, artifact)
        timer = threading.Timer(self.timeout_s + GRACE_S, self._kill_for_time)
        timer.daemon = True
        tick = time.perf_counter()
        try:
            self._send(JobMessage(job=inside))
            timer.start()
            answer = self._answer(progress)
            if answer is None:
                raise self._died(backend.name)
            if answer.ending:  # it stopped itself (its time limit): the next job starts anew
                self._ended.set()
            if isinstance(answer, ErrorMessage):
                result = ExportResult(status="failed", error=answer.error)
            else:
                result = answer.result
            result.timings["container_s"] = round(time.perf_counter() - tick, 3)
            accept_result(result, out, job, self.image, renames, destination)
        finally:
            timer.cancel()
            shutil.rmtree(folder, ignore_errors=True)
        save_report(result, destination)
        return result

    def _mount_path(self, relative: str, slot: str) -> str:
        try:
            return self._inside[relative]
        except KeyError:  # the build mounts every job's inputs when the container starts
            raise ContractError(f"{relative} is not mounted in the export container") from None

    def _send(self, message: Message) -> None:
        with suppress(OSError):  # it died: its answer stream ends, and that says why
            self._socket.sendall(encode(message).encode())

    def _answer(self, progress: Progress) -> Answer | None:
        """The job's answer after its progress; None if the container ended first. A message
        out of protocol fails the job, and the container serves no other."""
        while True:
            message = self._messages.get()
            match message:
                case ProgressMessage():
                    progress(message.progress)
                case JobMessage():
                    self._ended.set()
                    raise ContractError("the export container sent a job, not an answer")
                case ContractError():
                    self._ended.set()
                    raise message
                case _:
                    return message

    def _kill_for_time(self) -> None:
        self._timed_out.set()
        self.remove()

    def _died(self, backend: str) -> DockerError:
        code = self._exit_code() if self._exit_code is not None else -1
        self._exit_code = None
        oom = code == EXIT_SIGKILL and ran_out_of_memory(
            self.client, self.container.id, self._started
        )
        timed_out = self._timed_out.is_set()
        return no_result(code, oom, timed_out, list(self._tail), self, backend)

    def close(self) -> None:
        """End the worker (its stdin closes) and make sure the container is gone."""
        with suppress(OSError):
            self._socket.shutdown(socket.SHUT_WR)
        with suppress(Exception):
            self.client.api.wait(self.container.id, timeout=30)
        self.remove()
        with suppress(OSError):
            self._stdin.close()
        self._exit_code = None

    def remove(self) -> None:
        from docker.errors import APIError, NotFound

        with suppress(APIError, NotFound):
            self.container.remove(force=True)


class WarmContainer:
    """The runner: jobs of one toolchain (or pinned image) and limits, served by one container
    at a time, started at the first job. Leaving the `with` removes the container and its
    exchange folders."""

    def __init__(self, spec: WarmContainerSpec) -> None:
        self.spec = spec
        self._client = None
        self._serving: _Serving | None = None
        self._workspace: Path | None = None
        self._exchanges: list[Path] = []
        self._fetched: set[tuple[str, str]] = set()  # (image, model) whose weights are cached

    def run(
        self, job: ExportJob, workspace: Path, progress: Progress = no_progress
    ) -> ExportResult:
        """Export `job` in the container; return the result or raise a one-line TimmxError."""
        serving = self._serving
        if serving is None or not serving.alive or workspace != self._workspace:
            self._stop()  # it died (out of memory, timed out), or served another workspace
            serving = self._serving = self._start(workspace, progress)
        name = job.model.name
        if job.model.pretrained and (serving.image.id, name) not in self._fetched:
            fetch_weights(self._client, serving.image.ref, name, serving, progress)
            self._fetched.add((serving.image.id, name))
        return serving.run(job, progress)

    def _start(self, workspace: Path, progress: Progress) -> _Serving:
        from timmx.images.engine import connect
        from timmx.images.find import ensure_image
        from timmx.images.identity import BuildSettings
        from timmx.images.registry import pin_image

        spec = self.spec
        if self._client is None:
            self._client = connect("or set isolated = false to export in this process")
        settings = BuildSettings.resolve()
        if spec.pin is not None:
            image = pin_image(self._client, spec.pin, settings.registry, progress)
        else:
            image = ensure_image(
                self._client,
                spec.toolchain,
                settings,
                build=spec.build,
                notice=progress,
                on_line=steps_only(progress),
            )
        self._workspace = workspace
        return _Serving(
            self._client,
            image,
            workspace,
            list(spec.inputs),
            self._exchange_folder(spec.scratch or workspace),
            memory=spec.memory,
            timeout_s=spec.timeout_s,
            pids_limit=int(os.environ.get("TIMMX_PIDS_LIMIT", "1024")),
            pretrained=spec.pretrained,
        )

    def _exchange_folder(self, scratch: Path) -> Path:
        """A folder in `scratch` (the build's output) for a container's jobs. Its owner record
        lies beside the part the container sees, out of the container's reach."""
        scratch.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=EXCHANGE_PREFIX, dir=scratch))
        self._exchanges.append(folder)
        write_owner(folder)
        exchange = folder / _WORK
        exchange.mkdir(mode=0o700)
        return exchange

    def _stop(self) -> None:
        if self._serving is not None:
            self._serving.close()
            self._serving = None

    def interrupt(self) -> None:
        """Ctrl-C: the container goes at once (its job's staging is the host's, removed there)."""
        if self._serving is not None:
            self._serving.remove()

    def close(self) -> None:
        self._stop()
        for exchange in self._exchanges:
            shutil.rmtree(exchange, ignore_errors=True)
        self._exchanges.clear()
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
