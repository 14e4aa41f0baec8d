"""Run a build's jobs: in parallel, isolated and in-process mixed, one failure not stopping the
rest, Ctrl-C stopping everything.

In-process jobs go to warm workers (`python -m timmx.worker --serve`): one process per parallel
slot serves many jobs, so torch, timm and the converters are imported once per slot, not once
per job, and each job still runs in a process of its own seeding. Isolated jobs likewise go to
warm containers: one per slot and toolchain serves many jobs (`timmx.build.containers`). With a
Ray address every job is a task on that cluster instead (`timmx.build.ray_runner`).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from timmx.build.containers import ContainerPool
from timmx.build.plan import PlannedJob
from timmx.cleanup import remove_stale_siblings
from timmx.contract import ExportResult
from timmx.errors import ExportFailedError, TimmxError, error_from_kind, first_line
from timmx.images.registry import Pin
from timmx.time_limit import timed_out_message

Progress = Callable[[str], None]


@dataclass
class Outcome:
    planned: PlannedJob
    result: ExportResult | None = None
    error: TimmxError | None = None
    seconds: float = 0.0


class WarmWorker:
    """One `timmx.worker --serve` process: jobs in on stdin, answers out on stdout. A job that
    runs past its `timeout_s` is stopped by killing the process; a worker that died (killed,
    out of memory, timed out) fails only the job it ran, and the slot starts another."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self._timed_out = threading.Event()
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the worker
            prefix="timmx-worker-", suffix=".log", delete=False
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "timmx.worker", "--serve", str(workspace), "--host-paths"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            bufsize=1,
            start_new_session=True,  # Ctrl-C reaches it through us, in order
        )

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def run(self, planned: PlannedJob, progress: Progress) -> ExportResult:
        # Kept here, not by the worker's own watchdog: a job stuck in native code holding the
        # GIL would never let a timer thread of the worker run.
        timer = threading.Timer(planned.timeout_s, self._kill_for_time)
        timer.daemon = True
        timer.start()
        try:
            return self._exchange(planned, progress)
        finally:
            timer.cancel()

    def _exchange(self, planned: PlannedJob, progress: Progress) -> ExportResult:
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(json.dumps({"job": planned.job.model_dump(mode="json")}))
            self.process.stdin.write("\n")
            self.process.stdin.flush()
        except OSError:  # it died: what it says on the way out is read below
            pass
        for line in self.process.stdout:
            message = json.loads(line)
            if "progress" in message:
                progress(message["progress"])
            elif "result" in message:
                return ExportResult.model_validate(message["result"])
            else:
                error = message["error"]
                raise error_from_kind(error["kind"], error["message"])
        raise self._died(planned)

    def _kill_for_time(self) -> None:
        self._timed_out.set()
        with contextlib.suppress(OSError):  # the group: converters' subprocesses too
            os.killpg(self.process.pid, signal.SIGKILL)

    def _died(self, planned: PlannedJob) -> ExportFailedError:
        code = self.process.wait()
        # A killed worker ran no `finally`: its staging folder beside the artifact stays.
        remove_stale_siblings(self.workspace / planned.job.output)
        if self._timed_out.is_set():
            return ExportFailedError(timed_out_message(planned.job.backend, planned.timeout_s))
        tail = Path(self.log.name).read_text(errors="replace").strip().splitlines()[-3:]
        how = f"was killed (signal {-code})" if code < 0 else f"ended (exit code {code})"
        return ExportFailedError(
            f"the worker process {how} during this job: {' | '.join(tail) or 'no output'}"
        )

    def interrupt(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGINT)  # it removes its staging folder and ends

    def close(self, timeout_s: float = 30) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):  # a worker that died closed it already
                self.process.stdin.close()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


class Executor:
    """Runs planned jobs on `slots` threads; each slot has its own warm worker. With
    `ray_address`, each job is a task on that Ray cluster, `slots` of them at once."""

    def __init__(
        self,
        workspace: Path,
        slots: int,
        keep_going: bool = True,
        ray_address: str | None = None,
        scratch: Path | None = None,
        pins: dict[str, Pin] | None = None,
    ) -> None:
        self.workspace = workspace
        self.pins = pins or {}
        self.scratch = scratch or workspace  # exchange folders of warm containers: beside outputs
        self.slots = slots
        self.keep_going = keep_going
        self.ray_address = ray_address
        self._workers: list[WarmWorker] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def run(
        self,
        jobs: list[PlannedJob],
        on_start: Callable[[PlannedJob], None],
        on_progress: Callable[[PlannedJob, str], None],
        on_done: Callable[[Outcome], None],
    ) -> list[Outcome]:
        if self.ray_address is not None:
            from timmx.build.ray_runner import run_on_ray

            return run_on_ray(
                self.ray_address,
                self.workspace,
                jobs,
                self.slots,
                self.keep_going,
                on_start,
                on_progress,
                on_done,
            )
        pending: queue.Queue[PlannedJob] = queue.Queue()
        for planned in jobs:
            pending.put(planned)
        outcomes: list[Outcome] = []

        # Each slot says when it has cleaned up: after a KeyboardInterrupt in join(), CPython can
        # report a live thread as finished, so the threads themselves are not waited on.
        finished: list[threading.Event] = []

        def slot(done: threading.Event) -> None:
            worker: WarmWorker | None = None
            containers = ContainerPool(self.workspace, self.scratch, jobs, self.pins)
            try:
                while not self._stop.is_set():
                    try:
                        planned = pending.get_nowait()
                    except queue.Empty:
                        return
                    on_start(planned)
                    if not planned.isolated and (worker is None or not worker.alive):
                        if worker is not None:  # it died (killed, timed out): a fresh one
                            self._retire(worker)
                        worker = self._start_worker()
                    outcome = self._run_one(planned, worker, containers, on_progress)
                    with self._lock:
                        outcomes.append(outcome)
                    on_done(outcome)
                    if outcome.error is not None and not self.keep_going:
                        self._stop.set()
            finally:
                if worker is not None:
                    worker.close()
                containers.close()
                done.set()

        for i in range(min(self.slots, len(jobs)) or 1):
            finished.append(threading.Event())
            name = f"timmx-build-{i}"
            threading.Thread(target=slot, args=(finished[-1],), name=name, daemon=True).start()
        try:
            for done in finished:
                while not done.wait(0.2):
                    pass
        except KeyboardInterrupt:
            self._interrupt()
            for done in finished:
                done.wait(60)
            raise
        return outcomes

    def _start_worker(self) -> WarmWorker:
        worker = WarmWorker(self.workspace)
        with self._lock:
            self._workers.append(worker)
        return worker

    def _retire(self, worker: WarmWorker) -> None:
        with self._lock:
            self._workers.remove(worker)
        worker.close()

    def _run_one(self, planned, worker, containers, on_progress) -> Outcome:
        started = time.perf_counter()
        outcome = Outcome(planned)
        try:
            if planned.isolated:
                outcome.result = containers.run(planned, lambda m: on_progress(planned, m))
            else:
                outcome.result = worker.run(planned, lambda m: on_progress(planned, m))
        except TimmxError as exc:
            outcome.error = exc
        except Exception as exc:  # a bug: this job fails, the build goes on
            outcome.error = TimmxError(
                f"internal error: {type(exc).__name__}: {first_line(exc)} (a bug: report it)"
            )
        outcome.seconds = time.perf_counter() - started
        return outcome

    def _interrupt(self) -> None:
        """Ctrl-C: no new job starts, the workers drop their jobs (and staging folders), and
        this build's export containers are removed."""
        self._stop.set()
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            worker.interrupt()
        _remove_containers()


def _remove_containers() -> None:
    """This run's export containers, by its run id: never another run's that has our pid in
    another pid namespace."""
    from timmx.cleanup import RUN_LABEL, run_id

    try:
        from timmx.images.engine import connect

        client = connect()
    except TimmxError:
        return  # no engine: no container of ours either
    try:
        for container in client.containers.list(
            all=True, filters={"label": f"{RUN_LABEL}={run_id()}"}
        ):
            container.remove(force=True)
    except Exception:  # the engine went away meanwhile: nothing more to do
        pass
    finally:
        client.close()


def default_jobs() -> int:
    """One job per core, and no more than one per 6 GB of memory (an export of a large model
    with its verification can take several)."""
    cores = os.cpu_count() or 1
    try:
        memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        memory_gb = 8.0
    return max(1, min(cores, int(memory_gb // 6)))
