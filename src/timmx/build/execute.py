"""Run a build's jobs: in parallel, isolated and in-process mixed, one failure not stopping the
rest, Ctrl-C stopping everything.

Each slot has its warm runners (`timmx.runners.pool`): in-process jobs go to a warm worker
process (`timmx.runners.warm_process`), so torch, timm and the converters are imported once per
slot, not once per job, and each job still runs in a process of its own seeding. Isolated jobs
likewise go to warm containers, one per slot and toolchain (`timmx.runners.warm_container`).
With a Ray address every job is a task on that cluster instead (`timmx.build.ray_runner`).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from timmx.build.cache import input_paths
from timmx.build.plan import PlannedJob
from timmx.contract import ExportResult
from timmx.errors import TimmxError, first_line
from timmx.images.registry import Pin
from timmx.runners.pool import WarmRunners
from timmx.runners.spec import WarmContainerSpec, WarmProcessSpec, WarmSpec


@dataclass
class Outcome:
    planned: PlannedJob
    result: ExportResult | None = None
    error: TimmxError | None = None
    seconds: float = 0.0


class Executor:
    """Runs planned jobs on `slots` threads; each slot has its own warm runners. With
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
        self._pools: list[WarmRunners] = []  # each slot's
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
        isolated = [planned for planned in jobs if planned.isolated]
        # Every input of the build's isolated jobs is mounted in each container (read-only), so
        # one container serves them all; the build checked they are the build's own files.
        inputs = tuple(sorted({path for planned in isolated for path in input_paths(planned)}))
        pretrained = any(planned.job.model.pretrained for planned in isolated)

        def spec(planned: PlannedJob) -> WarmSpec:
            if not planned.isolated:
                return WarmProcessSpec(timeout_s=planned.timeout_s)
            from timmx.backends import get_backend

            return WarmContainerSpec(
                toolchain=planned.toolchain or get_backend(planned.job.backend).toolchain,
                memory=planned.memory,
                timeout_s=planned.timeout_s,
                build=planned.build,
                pin=self.pins.get(planned.id),  # the image it must run in (`--locked`)
                inputs=inputs,
                pretrained=pretrained,
                scratch=self.scratch,
            )

        # Each slot says when it has cleaned up: after a KeyboardInterrupt in join(), CPython can
        # report a live thread as finished, so the threads themselves are not waited on.
        finished: list[threading.Event] = []

        def slot(done: threading.Event) -> None:
            try:
                with WarmRunners() as runners:
                    with self._lock:
                        self._pools.append(runners)
                    while not self._stop.is_set():
                        try:
                            planned = pending.get_nowait()
                        except queue.Empty:
                            return
                        on_start(planned)
                        outcome = self._run_one(planned, runners, spec, on_progress)
                        with self._lock:
                            outcomes.append(outcome)
                        on_done(outcome)
                        if outcome.error is not None and not self.keep_going:
                            self._stop.set()
            finally:
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

    def _run_one(
        self,
        planned: PlannedJob,
        runners: WarmRunners,
        spec: Callable[[PlannedJob], WarmSpec],
        on_progress: Callable[[PlannedJob, str], None],
    ) -> Outcome:
        started = time.perf_counter()
        outcome = Outcome(planned)
        try:  # the spec too: a limit it refuses fails this job alone
            runner = runners.runner(spec(planned))
            outcome.result = runner.run(
                planned.job, self.workspace, lambda m: on_progress(planned, m)
            )
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
            pools = list(self._pools)
        for runners in pools:
            runners.interrupt()
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
