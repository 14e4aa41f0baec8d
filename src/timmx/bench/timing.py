"""Latency, throughput and memory of a runtime: warm-up, then a fixed number of timed runs."""

from __future__ import annotations

import resource
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from timmx.backends.base import Runtime

WARMUP = 10
RUNS = 50
LATENCY = (
    "batch 1, one real preprocessed image already in memory: {warmup} warm-up calls, then "
    "{runs} timed calls of the runtime (time.perf_counter around each call, input conversion "
    "included), median and 90th percentile; throughput: the same at the batch size, "
    "images per second from the median; load time: opening the artifact in its runtime"
)


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p90_ms: float


def measure(run: Runtime, x: np.ndarray, warmup: int, runs: int) -> Latency:
    for _ in range(warmup):
        run(x)
    times = np.empty(runs)
    clock = time.perf_counter
    for i in range(runs):
        start = clock()
        run(x)
        times[i] = clock() - start
    p50, p90 = np.percentile(times * 1e3, [50, 90])
    return Latency(float(p50), float(p90))


def _rss() -> int:
    """The process's resident memory now (Linux), else its peak so far."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * resource.getpagesize()
        except (OSError, ValueError, IndexError):
            pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory:
    """Samples the resident memory in a thread: the peak above what it was at the start."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self._interval = interval_s
        self._stop = threading.Event()
        self._start = self._peak = 0
        self._thread = threading.Thread(target=self._sample, name="timmx-bench-rss", daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self._peak = max(self._peak, _rss())

    def __enter__(self) -> PeakMemory:
        self._start = self._peak = _rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss())

    @property
    def added_bytes(self) -> int:
        return max(0, self._peak - self._start)
