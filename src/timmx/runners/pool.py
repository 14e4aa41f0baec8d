"""The warm runners of one build slot: a process for its in-process jobs, a container per
toolchain (or pinned image), limits and mounts for its isolated ones, each started at its first
job and serving the rest.
"""

from __future__ import annotations

import threading
from typing import Self

from timmx.runners.spec import WarmSpec, open_runner, warm_key
from timmx.runners.warm_container import WarmContainer
from timmx.runners.warm_process import WarmProcess


class WarmRunners:
    """One runner per `warm_key` of the specs asked for; leaving the `with` ends them all."""

    def __init__(self) -> None:
        self._runners: dict[object, WarmProcess | WarmContainer] = {}
        self._lock = threading.Lock()  # Ctrl-C reads them from another thread

    def runner(self, spec: WarmSpec) -> WarmProcess | WarmContainer:
        key = warm_key(spec)
        with self._lock:
            runner = self._runners.get(key)
            if runner is None:
                runner = self._runners[key] = open_runner(spec)  # type: ignore[assignment]
        # The same process or container; the spec's per-job limits are this job's (a warm
        # process's time limit, enforced per job).
        runner.spec = spec  # type: ignore[assignment]
        return runner

    @property
    def processes(self) -> list[WarmProcess]:
        with self._lock:
            return [r for r in self._runners.values() if isinstance(r, WarmProcess)]

    def interrupt(self) -> None:
        """Ctrl-C: every job under way stops, leaving nothing behind."""
        with self._lock:
            runners = list(self._runners.values())
        for runner in runners:
            runner.interrupt()

    def close(self) -> None:
        with self._lock:
            runners = list(self._runners.values())
            self._runners.clear()
        for runner in runners:
            runner.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
