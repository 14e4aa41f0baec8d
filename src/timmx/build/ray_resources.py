"""What a Ray task asks of the cluster (1 CPU and its job's memory), and whether a node has it:
a job no node can take is refused at once instead of waiting in the queue for ever."""

from __future__ import annotations

from timmx.build.plan import PlannedJob
from timmx.errors import InvalidInputError

DEFAULT_MEMORY = 4 * 1024**3  # an in-process job whose build file sets no `memory`


def task_memory(planned: PlannedJob) -> int:
    """The memory a task declares: the job's `memory`; 4 GiB for an in-process job that
    keeps the default (a container limit, far above what most exports need)."""
    from timmx.job_builder import RUN_FLAGS
    from timmx.runners.base import memory_bytes

    if not planned.isolated and planned.memory == RUN_FLAGS["memory"].default:
        return DEFAULT_MEMORY
    size = memory_bytes(planned.memory)
    if size is None:
        raise InvalidInputError(f"memory takes a size like 8g or 512m, got {planned.memory!r}")
    return size


def largest_node(ray) -> tuple[float, float] | None:
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


def check_fits(largest: tuple[float, float] | None, planned: PlannedJob, memory: int) -> None:
    """Refuse a task that no node of the cluster (its `largest`) can run."""
    if largest is None:
        return
    cpus, node_memory = largest
    if cpus >= 1 and node_memory >= memory:
        return
    raise InvalidInputError(
        f"no node of the Ray cluster has 1 CPU and {_gib(memory)} of memory for a task "
        f"(the largest has {cpus:g} CPUs, {_gib(node_memory)}): lower `memory` for "
        f"{planned.id} in the build file, or add bigger nodes"
    )


def _gib(size: float) -> str:
    return f"{size / 1024**3:.1f} GiB"
