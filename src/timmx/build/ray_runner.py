"""`timmx build --ray ADDRESS`: each job as a task on a Ray cluster.

The host sends a job's inputs (checkpoint, calibration data, file-typed options; every file of
a folder) by content through Ray's object store, each once per build. The task, `run_job`,
writes them into a fresh temporary workspace on its node at the job's relative paths, exports
there with `LocalRunner` (an isolated job with `DockerRunner`, where the node has Docker) and
returns the artifact's files with the `ExportResult`. The host checks them against the result's
hashes, writes them into a staging folder beside the destination and publishes them as a local
build does: nothing half-written when a task fails. A task declares 1 CPU and its memory; a
task whose node or worker dies is run again elsewhere (`max_retries`). The node needs timmx
(same version and toolchain, checked) and nothing of the host's filesystem.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import socket
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from timmx.build.execute import Outcome
from timmx.build.plan import PlannedJob
from timmx.contract import ExportJob, ExportResult
from timmx.errors import (
    ContractError,
    ExportFailedError,
    InvalidInputError,
    TimmxError,
    error_from_kind,
    first_line,
)
from timmx.time_limit import timed_out_message

CONNECT_TIMEOUT_S = 5
DEFAULT_MEMORY = 4 * 1024**3  # an in-process job whose build file sets no `memory`
MAX_RETRIES = 3  # runs of a task after its worker or node died
_STARTED = "started"  # a task's first answer: its time limit counts from then, not its queueing
# What to do about a task whose answer is refused (see timmx.runners.accept).
_SAME = "install the same timmx on every Ray node and run it again"

Payload = bytes | dict[str, bytes] | None  # a file, a folder's files, or nothing there


def require_ray():
    """The `ray` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InvalidInputError(
            "--ray needs Ray, which is not installed here: install timmx[ray] "
            "(pip install 'timmx[ray]')"
        ) from None
    return ray


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
    owned = connect(ray, address)
    try:
        return _RayBuild(ray, workspace, slots, keep_going).run(
            jobs, on_start, on_progress, on_done
        )
    finally:
        if owned:
            ray.shutdown()


def connect(ray, address: str) -> bool:
    """Join the cluster, or fail in seconds with one line; True when this call connected."""
    if ray.is_initialized():
        return False  # a caller that joined a cluster already keeps its connection
    _check_reachable(address)
    try:
        ray.init(
            address=address,
            namespace="timmx",
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except Exception as exc:
        raise TimmxError(f"cannot join the Ray cluster at {address}: {first_line(exc)}") from None
    return True


def _check_reachable(address: str) -> None:
    """A TCP connection to the address first: `ray.init` retries an unreachable one for
    minutes."""
    if address == "local":
        return  # Ray starts a cluster in this process
    target = address
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address("auto") or ""
        except Exception:  # none running: ray.init says so at once
            return
        if not target:
            return
    target = target.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidInputError(
            f"--ray takes the head's HOST:PORT (or ray://HOST:PORT, or auto), got {address!r}"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise TimmxError(
            f"cannot reach the Ray cluster at {address} ({reason}, waited up to "
            f"{CONNECT_TIMEOUT_S} s): start it (`ray start --head`) or fix the address"
        ) from None


class _RayBuild:
    def __init__(self, ray, workspace: Path, slots: int, keep_going: bool) -> None:
        self.ray = ray
        self.workspace = workspace
        self.slots = max(1, slots)
        self.keep_going = keep_going
        self.task = ray.remote(run_job_reporting_start)
        self.inputs: dict[str, Any] = {}  # host path -> ObjectRef, each input put once
        self.largest = _largest_node(ray)

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
                    if task not in began and ref is not None and self._says_started(ref):
                        began[task] = time.perf_counter()
                        on_progress(running[task][0], "running on the Ray cluster")
                        continue
                    planned, started = running.pop(task)
                    began.pop(task, None)
                    outcome = self._collect(planned, ref, started)
                    if outcome is None:
                        on_progress(planned, "not run (--fail-fast)")
                    else:
                        finish(outcome)
                now = time.perf_counter()
                for task, since in list(began.items()):
                    planned, started = running[task]
                    # An isolated job's container keeps the limit on its node.
                    if planned.isolated or now - since <= planned.timeout_s:
                        continue
                    del running[task], began[task]
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
        from timmx import __version__
        from timmx.build.cache import input_paths, toolchain_identity
        from timmx.runners.base import check_job
        from timmx.runners.container_job import check_input_files

        job = planned.job
        check_job(job, self.workspace)  # options and output, here, as a local run does
        check_input_files(job, self.workspace)
        renames: dict[str, str] = {}  # build-file path -> path in the node's workspace
        for i, path in enumerate(input_paths(planned)):
            renames[path] = path if _inside(path) else f"_inputs/{i}/{Path(path).name}"
        memory = _memory_bytes(planned)
        self._check_fits(planned, memory)
        spec = {
            "job": _job_for_node(job, renames),
            "inputs": list(renames.values()),
            "isolated": planned.isolated,
            "memory": planned.memory,
            "timeout_s": planned.timeout_s,
            "build": planned.build,
            "timmx": __version__,
            "toolchain": toolchain_identity(job.backend, planned.isolated),
        }
        payloads = [self._put(path) for path in renames]
        return self.task.options(
            name=f"timmx {planned.id}",
            num_cpus=1,
            memory=memory,
            max_retries=MAX_RETRIES,
            retry_exceptions=[OSError],  # a node's disk or temp folder; job errors are values
        ).remote(spec, *payloads)

    def _put(self, path: str):
        if path not in self.inputs:
            try:
                payload = _read_input(self.workspace / path)
            except OSError as exc:
                raise InvalidInputError(
                    f"cannot read {self.workspace / path}: {exc.strerror or exc}"
                ) from None
            try:
                self.inputs[path] = self.ray.put(payload)
            except self.ray.exceptions.RayError as exc:
                raise ExportFailedError(
                    f"cannot send {path} to the Ray cluster: {_plain(first_line(exc))}"
                ) from None
        return self.inputs[path]

    def _check_fits(self, planned: PlannedJob, memory: int) -> None:
        if self.largest is None:
            return
        cpus, node_memory = self.largest
        if cpus >= 1 and node_memory >= memory:
            return
        raise InvalidInputError(
            f"no node of the Ray cluster has 1 CPU and {_gib(memory)} of memory for a task "
            f"(the largest has {cpus:g} CPUs, {_gib(node_memory)}): lower `memory` for "
            f"{planned.id} in the build file, or add bigger nodes"
        )

    def _says_started(self, ref) -> bool:
        try:
            return self.ray.get(ref) == _STARTED
        except Exception:  # it failed before it started: _collect says why
            return False

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
            if "error" in answer:
                error = answer["error"]
                message = _host_paths(error["message"], answer.get("workspace"), self.workspace)
                raise error_from_kind(error["kind"], message)
            outcome.result = self._publish(planned, answer, time.perf_counter() - started)
        except TimmxError as exc:
            outcome.error = exc
        outcome.seconds = time.perf_counter() - started
        return outcome

    def _get(self, ref) -> dict[str, Any] | None:
        exceptions = self.ray.exceptions
        try:
            return self.ray.get(ref)
        except exceptions.TaskCancelledError:
            return None
        except exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            text = first_line(cause)
            if "No module named 'timmx" in text:
                raise ExportFailedError(
                    "timmx is not importable on the Ray node: install the same timmx on every node"
                ) from None
            raise ExportFailedError(
                f"the task failed on the Ray node: {type(cause).__name__}: {text}"
            ) from None
        except exceptions.OutOfMemoryError:
            raise ExportFailedError(
                "the Ray node ran out of memory: raise `memory` for this job in the build file"
            ) from None
        except (exceptions.WorkerCrashedError, exceptions.NodeDiedError) as exc:
            raise ExportFailedError(
                f"the Ray worker running it died {MAX_RETRIES + 1} times (a node lost, or out "
                f"of memory): {_plain(first_line(exc))}"
            ) from None
        except exceptions.RayError as exc:
            raise ExportFailedError(
                f"Ray: {type(exc).__name__}: {_plain(first_line(exc))}"
            ) from None

    def _publish(self, planned: PlannedJob, answer: dict[str, Any], seconds: float):
        from timmx.runners.accept import accept_bytes
        from timmx.runners.base import save_report

        try:
            result = ExportResult.model_validate_json(answer["result"])
        except ValueError as exc:
            raise ContractError(f"the Ray task's result is not valid: {first_line(exc)}") from None
        destination = self.workspace / planned.job.output
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            accept_bytes(result, planned.job, answer.get("files"), destination, _SAME)
            result.job = planned.job  # its paths as the build file wrote them
            result.timings["ray_s"] = round(seconds, 3)
            save_report(result, destination)  # last, as a local build
        except OSError as exc:
            raise InvalidInputError(
                f"cannot write the artifact into {destination.parent}: {exc.strerror or exc}"
            ) from None
        return result


# --- on the node ------------------------------------------------------------------------------


def run_job_reporting_start(spec: dict[str, Any], *payloads: Payload) -> Iterator[Any]:
    """The Ray task, a generator: it says when it starts running (the host's time limit
    counts from there, not from its wait in the cluster's queue), then answers as run_job."""
    yield _STARTED
    yield run_job(spec, *payloads)


def run_job(spec: dict[str, Any], *payloads: Payload) -> dict[str, Any]:
    """The Ray task: export one job in a fresh workspace on this node; return the artifact's
    files (path relative to the artifact's folder -> bytes) and the result as JSON, or
    `{"error": {kind, message}}` for a job that cannot be done (not retried)."""
    workspace = Path(tempfile.mkdtemp(prefix="timmx-ray-"))
    try:
        try:
            _check_same_toolchain(spec)
            for relative, payload in zip(spec["inputs"], payloads, strict=True):
                _write_input(workspace / relative, payload)
            job = ExportJob.model_validate(spec["job"])
            result = _runner(spec).run(job, workspace)
        except TimmxError as exc:
            error = {"kind": exc.kind, "message": exc.message}
            return {"error": error, "workspace": str(workspace)}
        folder = (workspace / job.output).parent
        files = {f.path: (folder / f.path).read_bytes() for f in result.artifacts}
        return {"result": result.model_dump_json(), "files": files}
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def _runner(spec: dict[str, Any]):
    if spec["isolated"]:
        from timmx.runners.docker import DockerRunner

        return DockerRunner(memory=spec["memory"], timeout_s=spec["timeout_s"], build=spec["build"])
    import os

    from timmx.runners.local import LocalRunner

    return LocalRunner(write_report=False, verbose=bool(os.environ.get("TIMMX_DEBUG")))


def _check_same_toolchain(spec: dict[str, Any]) -> None:
    """The job's cache key holds the host's toolchain: the node must export with the same."""
    from timmx import __version__
    from timmx.build.cache import toolchain_identity

    job = spec["job"]
    node = _node_name()
    if __version__ != spec["timmx"]:
        raise InvalidInputError(
            f"the Ray node {node} has timmx {__version__}, this host {spec['timmx']}: install "
            "the same timmx on every node"
        )
    there = toolchain_identity(job["backend"], spec["isolated"])
    if there != spec["toolchain"]:
        raise InvalidInputError(
            f"the Ray node {node} has another {job['backend']} toolchain than this host "
            f"({_difference(spec['toolchain'], there)}): install the same versions on every node"
        )


def _node_name() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:
        return socket.gethostname()


def _difference(here: str, there: str) -> str:
    """`torch 2.6.0 here, 2.7.0 there` for two `local:a=1,b=2` identities."""

    def parse(identity: str) -> dict[str, str]:
        kind, _, rest = identity.partition(":")
        if kind != "local":
            return {"image": rest}
        return dict(item.partition("=")[::2] for item in rest.split(",") if item)

    a, b = parse(here), parse(there)
    for name in sorted(set(a) | set(b)):
        if a.get(name) != b.get(name):
            return f"{name} {a.get(name, 'missing')} here, {b.get(name, 'missing')} there"
    return f"{here} here, {there} there"


def _write_input(path: Path, payload: Payload) -> None:
    if payload is None:
        return
    if isinstance(payload, bytes):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
        return
    path.mkdir(parents=True, exist_ok=True)
    for relative, data in payload.items():
        if not _inside(relative):
            raise ContractError(f"an input folder's member {relative!r} climbs out of it")
        member = path / relative
        member.parent.mkdir(parents=True, exist_ok=True)
        member.write_bytes(data)


# --- shared helpers ---------------------------------------------------------------------------


def _read_input(path: Path) -> Payload:
    if path.is_dir():
        return {
            member.relative_to(path).as_posix(): member.read_bytes()
            for member in sorted(path.rglob("*"))
            if member.is_file()
        }
    if path.is_file():
        return path.read_bytes()
    return None


def _job_for_node(job: ExportJob, renames: dict[str, str]) -> dict[str, Any]:
    """The job as JSON, its inputs (and an output outside the build folder) moved inside the
    node's workspace."""
    from timmx.runners.container_job import path_options

    data = job.model_dump(mode="json")
    model = data["model"]
    if model.get("checkpoint") in renames:
        model["checkpoint"] = renames[model["checkpoint"]]
    calibration = data.get("calibration")
    if calibration and calibration.get("path") in renames:
        calibration["path"] = renames[calibration["path"]]
    for name in path_options(job.backend):
        value = data["options"].get(name)
        if isinstance(value, str) and value in renames:
            data["options"][name] = renames[value]
    if not _inside(job.output):
        data["output"] = f"_output/{Path(job.output).name}"
    return data


def _inside(path: str) -> bool:
    """A relative path that stays inside its folder (the workspace)."""
    pure = PurePosixPath(path.replace("\\", "/"))
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", path):
        return False
    depth = 0
    for part in pure.parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return False
    return True


def _host_paths(message: str, node_workspace: str | None, workspace: Path) -> str:
    if not node_workspace:
        return message
    return message.replace(node_workspace, str(workspace))


def _memory_bytes(planned: PlannedJob) -> int:
    """The memory a task declares: the job's `memory`; 4 GiB for an in-process job that
    keeps the default (a container limit, far above what most exports need)."""
    from timmx.options import RUN_FLAGS

    if not planned.isolated and planned.memory == RUN_FLAGS["memory"].default:
        return DEFAULT_MEMORY
    from timmx.runners.base import memory_bytes

    size = memory_bytes(planned.memory)
    if size is None:
        raise InvalidInputError(f"memory takes a size like 8g or 512m, got {planned.memory!r}")
    return size


def _largest_node(ray) -> tuple[float, float] | None:
    """The CPUs and memory of the node with the most memory among those with a CPU."""
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
    except Exception:
        return None
    best: tuple[float, float] | None = None
    for node in nodes:
        resources = node.get("Resources", {})
        candidate = (float(resources.get("CPU", 0)), float(resources.get("memory", 0)))
        if best is None or (candidate[0] >= 1, candidate[1]) > (best[0] >= 1, best[1]):
            best = candidate
    return best


def _gib(size: float) -> str:
    return f"{size / 1024**3:.1f} GiB"


def _plain(text: str) -> str:
    """Ray's messages carry terminal colours."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)
