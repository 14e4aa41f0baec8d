"""Bench each artifact against eager on the same images: the one path of the CLI and the API."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from timmx.backends import get_backend
from timmx.bench import artifacts, data, eager, runtimes, stats, timing
from timmx.bench.in_image import measure_in_image
from timmx.bench.measure import Request, measure
from timmx.bench.model import BenchReport, BenchRow
from timmx.errors import InvalidInputError

if TYPE_CHECKING:
    from timmx.bench.artifacts import Target

# (what is being done, steps done, steps in all): a step per artifact and per eager model.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Settings:
    data: Path
    limit: int | None = None
    batch_size: int = 8
    threads: int | None = None
    warmup: int = timing.WARMUP
    runs: int = timing.RUNS
    seed: int = 0
    isolated: bool = False  # measure every artifact in its toolchain's image


@dataclass
class Reference:
    """Eager's outputs on the preprocessed images, shared by the artifacts of one job."""

    x: np.ndarray  # (N, C, H, W) float32, as the artifact takes it
    logits: np.ndarray


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def bench(paths: list[Path], settings: Settings, progress: Progress | None = None) -> BenchReport:
    if settings.limit is not None and settings.limit < 1:
        raise InvalidInputError(f"--limit must be at least 1, got {settings.limit}")
    if settings.batch_size < 1 or settings.runs < 1 or settings.warmup < 0:
        raise InvalidInputError("--batch-size and --runs must be at least 1, --warmup at least 0")
    if settings.threads is not None and settings.threads < 1:
        raise InvalidInputError(f"--threads must be at least 1, got {settings.threads}")
    threads = settings.threads or default_threads()
    targets = artifacts.resolve(paths)
    images = data.scan(settings.data, settings.limit, settings.seed, _labels(targets))
    references: dict[str, Reference] = {}
    total = len(targets) + len({eager.identity(t.job, t.workspace) for t in targets})
    done = 0
    notify = progress or (lambda *_: None)
    rows = []
    with runtimes.torch_threads(threads):
        for target in targets:
            key = eager.identity(target.job, target.workspace)
            if key not in references:
                notify(f"eager {target.job.model.name}", done, total)
                references[key] = _reference(target, images)
                done += 1
            notify(f"{target.artifact.name}", done, total)
            rows.append(_row(target, references[key], images, settings, threads))
            done += 1
    notify("done", done, total)
    return BenchReport(
        data=str(settings.data),
        classes=images.classes,
        images=len(images.files),
        limit=settings.limit,
        seed=settings.seed,
        interval=stats.INTERVAL,
        latency=timing.LATENCY.format(warmup=settings.warmup, runs=settings.runs),
        rows=rows,
        environment=_environment(threads),
    )


def _labels(targets: list[Target]) -> list[str] | None:
    """The class labels an artifact carries (Core ML's --labels), in class order."""
    for target in targets:
        path = target.job.options.get("labels")
        if path:
            file = target.workspace / str(path)
            try:
                return [line.strip() for line in file.read_text().splitlines() if line.strip()]
            except OSError:
                raise InvalidInputError(
                    f"{target.artifact}: its labels file {file} is gone"
                ) from None
    return None


def _reference(target: Target, images: data.LabelledImages) -> Reference:
    prepared = eager.rebuild(target.job, target.workspace, target.artifact)
    if prepared.summary.num_classes < len(images.classes):
        raise InvalidInputError(
            f"{target.artifact}: the model has {prepared.summary.num_classes} classes but "
            f"--data has {len(images.classes)} class folders"
        )
    x = data.preprocess(
        images, prepared.data_config, prepared.summary.input_size, target.job.preprocess.normalize
    )
    return Reference(x.numpy(), eager.logits(prepared.module, x))


def _row(
    target: Target,
    reference: Reference,
    images: data.LabelledImages,
    settings: Settings,
    threads: int,
) -> BenchRow:
    job = target.job
    static = job.input.batch_size
    request = Request(
        backend=job.backend,
        artifact=str(target.artifact),
        options=job.options,
        static_batch=static,
        dynamic=job.input.dynamic_batch or get_backend(job.backend).runtime_any_batch,
        batch_size=settings.batch_size,
        threads=threads,
        warmup=settings.warmup,
        runs=settings.runs,
    )
    if in_image(job.backend, settings.isolated):
        toolchain = get_backend(job.backend).toolchain
        measured, ours = measure_in_image(toolchain, request, reference.x, target.artifact.parent)
    else:
        measured, ours = measure(request, reference.x)
    if ours.shape[0] != len(reference.x):
        raise InvalidInputError(
            f"{target.artifact}: its runtime gave {ours.shape[0]} scores for "
            f"{len(reference.x)} images"
        )
    latency, throughput = measured.latency, measured.throughput
    labels, ref = images.labels, reference.logits
    correct = stats.topk_correct(ours, labels, 1)
    eager_correct = stats.topk_correct(ref, labels, 1)
    top1, eager_top1 = float(correct.mean()), float(eager_correct.mean())
    throughput_batch: int | None = measured.throughput_batch
    if throughput is not None:
        ips = measured.throughput_batch / (throughput.p50_ms / 1e3)
    elif latency is not None:
        throughput_batch, ips = 1, 1e3 / latency.p50_ms
    else:
        throughput_batch, ips = None, None
    return BenchRow(
        artifact=str(target.artifact),
        backend=job.backend,
        mode=_mode(job.options),
        runtime=measured.runtime,
        images=len(labels),
        top1=top1,
        top5=float(stats.topk_correct(ours, labels, 5).mean()),
        eager_top1=eager_top1,
        eager_top5=float(stats.topk_correct(ref, labels, 5).mean()),
        top1_delta=top1 - eager_top1,
        top1_delta_ci95=stats.paired_bootstrap(correct, eager_correct, settings.seed),
        disagreement=float(np.mean(ours.argmax(-1) != ref.argmax(-1))),
        latency_ms_p50=latency.p50_ms if latency else None,
        latency_ms_p90=latency.p90_ms if latency else None,
        latency_representative=measured.representative,
        throughput_batch=throughput_batch,
        throughput_ips=ips,
        threads=measured.threads,
        load_s=measured.load_s,
        peak_memory_bytes=measured.memory_bytes,
        bytes=_size(target),
        note=_note(measured.representative, latency is None, static),
    )


def in_image(backend: str, isolated: bool) -> bool:
    """Whether an artifact is measured in its toolchain's image: asked for, or its runtime is
    not installed here (ExecuTorch, whose torch this venv cannot hold)."""
    return isolated or bool(get_backend(backend).missing_packages())


def _mode(options: dict[str, Any]) -> str | None:
    for key in ("mode", "compute_precision", "delegate"):
        if options.get(key):
            return str(options[key])
    return None


def _size(target: Target) -> int:
    folder = target.artifact.parent
    total = 0
    for file in target.result.artifacts:
        path = folder / file.path
        total += path.stat().st_size if path.is_file() else file.bytes
    return total


def _note(representative: bool, no_latency: bool, static: int) -> str | None:
    if not representative:
        return "latency not representative: a reference evaluator (numpy), not Core ML"
    if no_latency:
        return f"no batch-1 latency: the artifact takes a fixed batch of {static}"
    return None


def _environment(threads: int) -> dict[str, Any]:
    import platform

    from timmx.backends import all_backends
    from timmx.environment import package_versions

    needed = sorted({dist for backend in all_backends() for dist in backend.requires})
    packages = ("torch", "timm", *(d for d in needed if d not in ("torch", "timm")))
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "packages": package_versions(packages),
    }
