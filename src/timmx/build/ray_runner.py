"""`timmx build --ray ADDRESS`: each job as a task on a Ray cluster; this module is the
transport.

The host packs a job (`timmx.runners.remote`) and sends its inputs (checkpoint, calibration data,
file-typed options; every file of a folder) by content through Ray's object store, each once per
build. The task exports in a fresh workspace on its node with the shared runner and returns the
artifact's files with the result; the host accepts them as it accepts a container's and
publishes them: nothing half-written when a task fails. A task declares 1 CPU and its memory
(`timmx.build.ray_resources`); one whose node or worker dies is run again elsewhere
(`max_retries`); one past its time limit is stopped. The node needs timmx (same version and
toolchain, checked) and nothing of the host's filesystem: a toolchain variant's job brings the
variant's locks, from which the node builds its image when missing.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from timmx.build.execute import Outcome
from timmx.build.plan import PlannedJob
from timmx.build.ray_cluster import (
    connect,
    plain,
    ray_logs_kept,
    require_ray,
    say,
    task_failure,
)
from timmx.build.ray_resources import check_fits, largest_node, task_memory
from timmx.errors import ExportFailedError, InvalidInputError, TimmxError, first_line
from timmx.runners.remote import Payload, pack, read_input, receive, run_shipped
from timmx.time_limit import timed_out_message

MAX_RETRIES = 3  # runs of a task after its worker or node died
# A task's first answer, with its node's id: its time limit counts from then, not its queueing.
_STARTED = "started"
NODE_CHECK_S = 1.0  # how often the nodes' liveness is read while a build runs
# What to do about a task whose answer is refused (see timmx.runners.accept).
_SAME = "install the same timmx on every Ray node and run it again"


def run_on_ray(
    address: str,
    workspace: Path,
    jobs: list[PlannedJob],
    slots: int,
    keep_going: bool,
    on_start: Callable[[PlannedJob], None],
    on_progress: Callable[[PlannedJob, str], None],
    on_done: Callable[[Outcome], None],
) -> list[Outcome]:
    """Run `jobs` on the cluster at `address`, at most `slots` at once; like Executor.run."""
    ray = require_ray()
    if not jobs:
        return []
    from timmx.model_index import cache_folder

    with ray_logs_kept(cache_folder() / "logs") as kept:
        try:
            owned = connect(ray, address)
            try:
                return _RayBuild(ray, workspace, slots, keep_going).run(
                    jobs, on_start, on_progress, on_done
                )
            finally:
                if owned:
                    with kept.everything():
                        ray.shutdown()
        finally:
            if (log := kept.path()) is not None:
                say(f"Ray's own log lines are in {log}; --debug shows them")


class _RayBuild:
    def __init__(self, ray, workspace: Path, slots: int, keep_going: bool) -> None:
        self.ray = ray
        self.workspace = workspace
        self.slots = max(1, slots)
        self.keep_going = keep_going
        self.task = ray.remote(run_job_reporting_start)
        self.inputs: dict[str, Any] = {}  # host path -> ObjectRef, each input put once
        self.largest = largest_node(ray)
        self.task_nodes: dict[Any, str] = {}  # task -> the node it started on
        self.alive: dict[str, str] = {}  # node id -> its address, while Ray says it is alive
        self.nodes_checked = 0.0

    def run(self, jobs, on_start, on_progress, on_done) -> list[Outcome]:
        pending = deque(jobs)
        running: dict[Any, tuple[PlannedJob, float]] = {}  # task -> (job, when submitted)
        began: dict[Any, float] = {}  # task -> when it started running on its node
        outcomes: list[Outcome] = []
        stop = False

        def finish(outcome: Outcome) -> None:
            nonlocal stop
            outcomes.append(outcome)
            on_done(outcome)
            if outcome.error is not None and not self.keep_going and not stop:
                stop = True  # --fail-fast: what has not finished is not run
                for ref, (planned, _) in running.items():
                    with contextlib.suppress(Exception):
                        self.ray.cancel(ref)
                    on_progress(planned, "stopping (--fail-fast)")

        try:
            while running or (pending and not stop):
                while pending and not stop and len(running) < self.slots:
                    planned = pending.popleft()
                    on_start(planned)
                    started = time.perf_counter()
                    try:
                        ref = self._submit(planned)
                    except TimmxError as exc:
                        elapsed = time.perf_counter() - started
                        finish(Outcome(planned, error=exc, seconds=elapsed))
                        continue
                    running[ref] = (planned, started)
                    on_progress(planned, "queued on the Ray cluster")
                if not running:
                    continue
                ready, _ = self.ray.wait(list(running), num_returns=1, timeout=0.5)
                for task in ready:
                    ref = next(task, None)
                    if task not in began and ref is not None and self._says_started(task, ref):
                        began[task] = time.perf_counter()
                        on_progress(running[task][0], "running on the Ray cluster")
                        continue
                    planned, started = running.pop(task)
                    began.pop(task, None)
                    self.task_nodes.pop(task, None)
                    outcome = self._collect(planned, ref, started)
                    if outcome is None:
                        on_progress(planned, "not run (--fail-fast)")
                    else:
                        finish(outcome)
                self._check_nodes()
                now = time.perf_counter()
                for task, since in list(began.items()):
                    planned, started = running[task]
                    # An isolated job's container keeps the limit on its node.
                    if planned.isolated or now - since <= planned.timeout_s:
                        continue
                    del running[task], began[task]
                    self.task_nodes.pop(task, None)
                    self._stop(task)
                    message = timed_out_message(planned.job.backend, planned.timeout_s)
                    finish(
                        Outcome(planned, error=ExportFailedError(message), seconds=now - started)
                    )
        except KeyboardInterrupt:
            # The tasks end by KeyboardInterrupt too, so each removes its node's workspace;
            # no staging folder is open on this host between two answers.
            for ref in running:
                with contextlib.suppress(Exception):
                    self.ray.cancel(ref)
            raise
        return outcomes

    def _submit(self, planned: PlannedJob):
        from timmx.build.cache import toolchain_identity, variant_identity
        from timmx.runners.base import check_job
        from timmx.runners.container_job import check_input_files
        from timmx.runners.spec import DockerSpec, LocalSpec
        from timmx.toolchains import registered, ship_variant

        job = planned.job
        check_job(job, self.workspace)  # options and output, here, as a local run does
        check_input_files(job, self.workspace)
        memory = task_memory(planned)
        check_fits(self.largest, planned, memory)
        variant = registered(planned.toolchain)  # None: the backend's own toolchain
        runner = (
            DockerSpec(
                memory=planned.memory,
                timeout_s=planned.timeout_s,
                build=planned.build,
                toolchain=variant and variant.name,
            )
            if planned.isolated
            else LocalSpec(write_report=False)  # the host writes the report
        )
        identity = variant_identity(planned) or toolchain_identity(job.backend, planned.isolated)
        shipment = pack(job, runner, identity, variant and ship_variant(variant))
        payloads = [self._put(path) for path in shipment.inputs]
        return self.task.options(
            name=f"timmx {planned.id}",
            num_cpus=1,
            memory=memory,
            max_retries=MAX_RETRIES,
            retry_exceptions=[OSError],  # a node's disk or temp folder; job errors are values
        ).remote(shipment.spec, *payloads)

    def _put(self, path: str):
        if path not in self.inputs:
            try:
                payload = read_input(self.workspace / path)
            except OSError as exc:
                raise InvalidInputError(
                    f"cannot read {self.workspace / path}: {exc.strerror or exc}"
                ) from None
            try:
                self.inputs[path] = self.ray.put(payload)
            except self.ray.exceptions.RayError as exc:
                raise ExportFailedError(
                    f"cannot send {path} to the Ray cluster: {plain(first_line(exc))}"
                ) from None
        return self.inputs[path]

    def _says_started(self, task, ref) -> bool:
        try:
            answer = self.ray.get(ref)
        except Exception:  # it failed before it started: _collect says why
            return False
        if answer == _STARTED:  # a node's timmx that does not name its node
            return True
        if not (isinstance(answer, tuple) and answer and answer[0] == _STARTED):
            return False
        self.task_nodes[task] = answer[1]
        return True

    def _check_nodes(self) -> None:
        """A node that Ray stopped calling alive: one line, with how many of this build's
        running jobs Ray runs again elsewhere (see MAX_RETRIES)."""
        now = time.monotonic()
        if now - self.nodes_checked < NODE_CHECK_S:
            return
        self.nodes_checked = now
        try:
            nodes = self.ray.nodes()
        except Exception:  # the head is busy; the next check asks again
            return
        for node in nodes:
            node_id, address = node.get("NodeID"), node.get("NodeManagerAddress", "?")
            if node.get("Alive"):
                self.alive[node_id] = address
            elif node_id in self.alive:
                del self.alive[node_id]
                lost = [task for task, on in self.task_nodes.items() if on == node_id]
                for task in lost:
                    del self.task_nodes[task]
                jobs = f"{len(lost)} job{'' if len(lost) == 1 else 's'}"
                say(f"Ray node {address} ({node_id[:8]}) lost: {jobs} retried on other nodes")

    def _stop(self, task) -> None:
        """Stop a task past its time limit by killing its worker process. Not by an interrupt:
        that does not land in native code, and one that lands inside an import leaves a
        half-imported torch in a worker that Ray then reuses for the next task. Its workspace
        stays in the node's temporary folder."""
        with contextlib.suppress(Exception):  # it ended meanwhile
            self.ray.cancel(task, force=True)

    def _collect(self, planned: PlannedJob, ref, started: float) -> Outcome | None:
        """The job's outcome, its files published; None for a task cancelled before it
        finished."""
        outcome = Outcome(planned)
        try:
            if ref is None:
                raise ExportFailedError("the Ray task ended without an answer: run it again")
            answer = self._get(ref)
            if answer is None:
                return None
            outcome.result = self._publish(planned, answer, time.perf_counter() - started)
        except TimmxError as exc:
            outcome.error = exc
        outcome.seconds = time.perf_counter() - started
        return outcome

    def _get(self, ref) -> dict[str, Any] | None:
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.TaskCancelledError:
            return None
        except self.ray.exceptions.RayError as exc:
            raise ExportFailedError(task_failure(self.ray, exc, MAX_RETRIES + 1)) from None

    def _publish(self, planned: PlannedJob, answer: dict[str, Any], seconds: float):
        timings = {"ray_s": round(seconds, 3)}
        return receive(answer, planned.job, self.workspace, timings, _SAME)


def run_job_reporting_start(spec: dict[str, Any], *payloads: Payload) -> Iterator[Any]:
    """The Ray task, a generator: it says when it starts running (the host's time limit
    counts from there, not from its wait in the cluster's queue), then answers as run_job."""
    yield _STARTED, _node_id()
    yield run_job(spec, *payloads)


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:
        return ""


def run_job(spec: dict[str, Any], *payloads: Payload) -> dict[str, Any]:
    """The export on the node (timmx.runners.remote), its node named by its address."""
    return run_shipped(spec, list(payloads), _node_name())


def _node_name() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:
        return socket.gethostname()
