"""The bench's JSON document: one row per artifact, and how its numbers were measured."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

BENCH_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BenchRow(_Strict):
    artifact: str = Field(description="The artifact's path, as given or found.")
    backend: str
    mode: str | None = Field(None, description="The export's --mode, where the backend has one.")
    runtime: str = Field(description="What ran the artifact.")
    images: int
    top1: float = Field(description="Top-1 accuracy of the artifact, a fraction.")
    top5: float = Field(description="Top-5 accuracy (top-k with k = classes when fewer).")
    eager_top1: float = Field(description="Top-1 of PyTorch eager on the same images.")
    eager_top5: float
    top1_delta: float = Field(description="top1 - eager_top1, a fraction.")
    top1_delta_ci95: tuple[float, float] = Field(
        description="95% paired bootstrap interval of top1_delta (see BenchReport.interval)."
    )
    disagreement: float = Field(description="Share of images whose top-1 differs from eager's.")
    latency_ms_p50: float | None = Field(None, description="Median latency at batch 1, ms.")
    latency_ms_p90: float | None = None
    latency_representative: bool = Field(
        True, description="False where the runtime is a reference evaluator (Core ML on Linux)."
    )
    throughput_batch: int | None = Field(None, description="Batch the throughput was run at.")
    throughput_ips: float | None = Field(None, description="Images per second at that batch.")
    threads: int = Field(description="Threads the runtime was given.")
    load_s: float = Field(description="Seconds to load the artifact into its runtime.")
    peak_memory_bytes: int | None = Field(
        None,
        description="Peak resident memory of the process above its level before the artifact "
        "was loaded, while it loaded and ran on every image (sampled every 5 ms).",
    )
    bytes: int = Field(description="Size of the artifact's files on disk.")
    note: str | None = None


class BenchReport(_Strict):
    schema_version: int = BENCH_VERSION
    data: str = Field(description="The labelled image folder.")
    classes: list[str] = Field(description="Class names in class-index order.")
    images: int
    limit: int | None = None
    seed: int = Field(description="Seed of the --limit subset and of the bootstrap.")
    interval: str = Field(description="How top1_delta_ci95 is computed.")
    latency: str = Field(description="How latency and throughput are measured.")
    rows: list[BenchRow] = Field(default_factory=list)
    environment: dict[str, Any] = Field(default_factory=dict)


def bench_schema() -> dict[str, Any]:
    schema = BenchReport.model_json_schema()
    schema["$id"] = f"https://timmx.dev/schema/bench/v{BENCH_VERSION}.json"
    return schema


class BenchRecord(_Strict):
    """A build's bench of one job's artifact, kept in its manifest (`[bench]`)."""

    key: str = Field(description="Hash of the artifact's files, the data and the settings.")
    data: str
    images: int
    top1: float
    eager_top1: float
    top1_delta: float
    top1_delta_ci95: tuple[float, float]
    disagreement: float
    latency_ms_p50: float | None = None

    @classmethod
    def of(cls, key: str, report: BenchReport, row: BenchRow) -> BenchRecord:
        return cls(
            key=key,
            data=report.data,
            images=row.images,
            top1=row.top1,
            eager_top1=row.eager_top1,
            top1_delta=row.top1_delta,
            top1_delta_ci95=row.top1_delta_ci95,
            disagreement=row.disagreement,
            latency_ms_p50=row.latency_ms_p50,
        )
