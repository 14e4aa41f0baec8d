"""Measure one artifact in its runtime: its scores on every image, latency, throughput, load
time and the memory its run added.

The same code runs in the bench's own process or, for a runtime this venv lacks, inside the
artifact's toolchain image (`python -m timmx.bench.measure DIR`): DIR holds `request.json` and
`x.npy` (the preprocessed images) and receives `measured.json` and `scores.npy`. Nothing the
container writes is trusted beyond numbers: both files are parsed strictly (no pickles).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from timmx.bench import runtimes, timing

REQUEST, IMAGES, MEASURED, SCORES = "request.json", "x.npy", "measured.json", "scores.npy"


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: str
    artifact: str  # its path where the measurement runs
    options: dict[str, Any]
    static_batch: int  # the artifact's fixed batch (ignored where it is dynamic)
    dynamic: bool
    batch_size: int  # the throughput batch where the batch is dynamic
    threads: int
    warmup: int
    runs: int


class Latency(BaseModel):
    model_config = ConfigDict(extra="forbid")

    p50_ms: float
    p90_ms: float


class Measured(BaseModel):
    model_config = ConfigDict(extra="forbid")

    runtime: str
    threads: int
    representative: bool
    load_s: float
    memory_bytes: int
    latency: Latency | None  # batch 1; None where the artifact's batch is fixed above 1
    throughput: Latency | None
    throughput_batch: int


def measure(request: Request, x: np.ndarray) -> tuple[Measured, np.ndarray]:
    """The artifact's scores on `x` (N, C, H, W) float32, and what its run measured."""
    artifact = Path(request.artifact)
    with timing.PeakMemory() as memory:
        start = time.perf_counter()
        opened = runtimes.open_runtime(request.backend, artifact, request.options, request.threads)
        load_s = time.perf_counter() - start
        batch = request.batch_size if request.dynamic else request.static_batch
        scores = run_all(opened.run, x, batch)
    # Timed after the memory sampler stopped: its thread would wake during the timed calls.
    runs = request.runs if opened.representative else min(request.runs, 3)
    warmup = request.warmup if opened.representative else 1
    latency = throughput = None
    if request.dynamic or request.static_batch == 1:
        latency = timing.measure(opened.run, x[:1], warmup, runs)
    if batch > 1 and len(x) >= batch:
        throughput = timing.measure(opened.run, x[:batch], warmup, runs)
    measured = Measured(
        runtime=opened.name,
        threads=opened.threads,
        representative=opened.representative,
        load_s=load_s,
        memory_bytes=memory.added_bytes,
        latency=Latency(**vars(latency)) if latency else None,
        throughput=Latency(**vars(throughput)) if throughput else None,
        throughput_batch=batch,
    )
    return measured, scores


def run_all(run: Any, x: np.ndarray, batch: int) -> np.ndarray:
    """The runtime's scores for every image, in batches of `batch`; the last one padded with
    copies of its last image where the artifact's batch is fixed (the copies are dropped)."""
    outputs = []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        count = len(chunk)
        if count < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - count, axis=0)])
        out = np.asarray(run(np.ascontiguousarray(chunk)), dtype=np.float32)
        outputs.append(out.reshape(batch, -1)[:count])
    return np.concatenate(outputs)


def main(argv: list[str]) -> int:
    """In the toolchain image: measure what DIR asks, write the answer into DIR."""
    from timmx.quiet import converters_quiet

    folder = Path(argv[0])
    request = Request.model_validate_json((folder / REQUEST).read_text())
    x = np.load(folder / IMAGES, allow_pickle=False)
    with converters_quiet():
        measured, scores = measure(request, x)
    np.save(folder / SCORES, scores, allow_pickle=False)
    (folder / MEASURED).write_text(measured.model_dump_json())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
