"""`timmx.bench(...)`: the bench as a function call, returning the same rows as the CLI."""

from __future__ import annotations

from os import PathLike
from pathlib import Path

from timmx.bench.model import BenchReport
from timmx.bench.run import Progress, Settings
from timmx.bench.run import bench as run_bench

SORT_KEYS = ("artifact", "top1", "delta", "disagreement", "latency", "throughput", "size")


def bench(
    artifacts: str | PathLike[str] | list[str | PathLike[str]],
    *,
    data: str | PathLike[str],
    limit: int | None = None,
    batch_size: int = 8,
    threads: int | None = None,
    warmup: int | None = None,
    runs: int | None = None,
    seed: int = 0,
    sort: str | None = None,
    isolated: bool = False,
    progress: Progress | None = None,
) -> BenchReport:
    """Bench `artifacts` (paths of artifacts, folders of them, or build manifests) on the
    labelled ImageFolder `data`; the report's `rows` are one per artifact. An artifact whose
    runtime is not installed here, or every one with `isolated`, runs in its toolchain's image."""
    from timmx.bench import timing

    paths = [artifacts] if isinstance(artifacts, str | PathLike) else list(artifacts)
    settings = Settings(
        data=Path(data),
        limit=limit,
        batch_size=batch_size,
        threads=threads,
        warmup=timing.WARMUP if warmup is None else warmup,
        runs=timing.RUNS if runs is None else runs,
        seed=seed,
        isolated=isolated,
    )
    if sort is not None:
        sorted_rows([], sort)  # an unknown key is refused before any work
    report = run_bench([Path(p) for p in paths], settings, progress)
    if sort is not None:
        report.rows = sorted_rows(report.rows, sort)
    return report


def sorted_rows(rows, key: str):
    """Rows by `key`: best first (highest accuracy and throughput; lowest latency, size...)."""
    from timmx.errors import InvalidInputError

    order = {
        "artifact": lambda r: r.artifact,
        "top1": lambda r: -r.top1,
        "delta": lambda r: -r.top1_delta,
        "disagreement": lambda r: r.disagreement,
        "latency": lambda r: (r.latency_ms_p50 is None, r.latency_ms_p50 or 0.0),
        "throughput": lambda r: -(r.throughput_ips or 0.0),
        "size": lambda r: r.bytes,
    }
    if key not in order:
        raise InvalidInputError(f"--sort {key!r}: use one of {', '.join(SORT_KEYS)}")
    return sorted(rows, key=order[key])
