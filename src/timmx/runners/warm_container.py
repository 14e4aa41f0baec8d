"""One export container serving many jobs of a build, so torch, timm and the converter are
imported once per container instead of once per job.

It runs the image's worker as `--serve /job --no-report`, hardened like a one-job container. It
sees every input of the jobs it may serve read-only under /job/in, and one exchange folder of
the host read-write at /job/work. Jobs go in as JSON lines on the container's stdin (attached;
when the host goes away, stdin closes and the worker ends); answers come back on its stdout.
The host checks each job's artifacts and publishes them, as for a one-job container. A
container that dies (out of memory, its time limit, a kill) fails its job with one line, and
the next job starts a new one.
"""

from __future__ import annotations

import json
import queue
import shutil
import socket
import threading
import time
from collections import deque
from contextlib import suppress
from pathlib import Path
from typing import Any

from timmx.contract import ExportJob, ExportResult
from timmx.errors import ContractError, DockerError, first_line
from timmx.images.find import Found
from timmx.runners.base import Progress, check_job, save_report
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
    hardened_options,
    log_lines,
    no_result,
    ran_out_of_memory,
)
from timmx.time_limit import TIME_LIMIT_ENV

_WORK = "work"
_MAX_ANSWER = 16 * 1024**2  # bytes of one protocol line: a result is a few KiB, never cut


class WarmContainer:
    """A started container; `run` one job at a time, `close` when the build is done."""

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
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
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
                    self._messages.put(json.loads(line))
                except ValueError:
                    self._tail.append(line)  # not the protocol: keep it for a failure's message
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
            self._send({"job": json.loads(inside.model_dump_json())})
            timer.start()
            answer = self._answer(progress)
            if answer is None:
                raise self._died(backend.name)
            if answer.get("ending"):  # it stopped itself (its time limit): the next job starts anew
                self._ended.set()
            if "error" in answer:
                error = answer["error"]
                answer = {"result": {"status": "failed", "error": error}}
            result = ExportResult.model_validate(answer["result"])
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

    def _send(self, message: dict[str, Any]) -> None:
        with suppress(OSError):  # it died: its answer stream ends, and that says why
            self._socket.sendall((json.dumps(message) + "\n").encode())

    def _answer(self, progress: Progress) -> dict[str, Any] | None:
        while True:
            message = self._messages.get()
            if message is None or "progress" not in message:
                return message
            progress(message["progress"])

    def _kill_for_time(self) -> None:
        self._timed_out.set()
        self._remove()

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
        self._remove()
        with suppress(OSError):
            self._stdin.close()
        self._exit_code = None

    def _remove(self) -> None:
        from docker.errors import APIError, NotFound

        with suppress(APIError, NotFound):
            self.container.remove(force=True)
