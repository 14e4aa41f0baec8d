"""`timmx build`: plan, compare with the manifest, run what is not up to date, record it."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from timmx.build.cache import job_key
from timmx.build.execute import Executor, Outcome
from timmx.build.manifest import Manifest, load_manifest, record, save_manifest, status_of
from timmx.build.plan import PlannedJob, plan_build
from timmx.build.spec import load_build_file
from timmx.errors import InvalidInputError, TimmxError
from timmx.images.registry import DigestLookup, Pin, check_pins


@dataclass
class BuildJob:
    planned: PlannedJob
    key: str
    status: str  # fresh, new, stale, missing, altered, unverified (see manifest.status_of)


@dataclass
class Build:
    root: Path  # the build file's folder: the jobs' workspace
    output: Path
    jobs: list[BuildJob]
    manifest: Manifest
    slots: int | None  # [build] jobs


def load_build(path: Path) -> Build:
    """Read the build file and find each job's key and state against the manifest."""
    from timmx.toolchains import define_variants

    spec = load_build_file(path)
    root = path.parent.resolve()
    define_variants(spec.toolchains, root)  # each used one's lock is checked by its job's key
    output = (root / spec.build.output).resolve()
    manifest = load_manifest(output)
    jobs = []
    planned_jobs = plan_build(spec)
    for planned in planned_jobs:  # the whole file is checked before anything runs
        _check_inputs(planned, root)
    for planned in planned_jobs:
        key = job_key(planned, root)
        entry = manifest.jobs.get(planned.id)
        status = status_of(entry, key, root, planned.job.backend, planned.job.output)
        jobs.append(BuildJob(planned, key, status))
    return Build(root, output, jobs, manifest, spec.build.jobs)


def _check_inputs(planned: PlannedJob, root: Path) -> None:
    """A job's input files exist, relative to the build file's folder however the job runs."""
    from timmx.runners.container_job import check_input_files

    try:
        check_input_files(planned.job, root)
    except TimmxError as exc:
        raise type(exc)(f"{planned.id}: {exc.message}") from None


def run_build(
    build: Build,
    slots: int,
    keep_going: bool,
    on_start,
    on_progress,
    on_done,
    ray_address: str | None = None,
    pins: dict[str, Pin] | None = None,
) -> list[Outcome]:
    """Run every job that is not fresh; record each finished one in the manifest at once.
    With `ray_address`, each job runs as a task on that Ray cluster; `pins` (job id -> image)
    runs isolated jobs in exactly those images (`--locked`)."""
    by_id = {job.planned.id: job for job in build.jobs}
    manifest = Manifest(
        jobs={i: r for i, r in build.manifest.jobs.items() if i in by_id},
        bench={i: r for i, r in build.manifest.bench.items() if i in by_id},  # see timmx.bench.gate
    )
    lock = threading.Lock()
    digests = DigestLookup()

    def done(outcome: Outcome) -> None:
        planned = outcome.planned
        with lock:
            if outcome.result is not None:
                environment = outcome.result.environment
                digest = digests(environment.image_id if environment else None)
                manifest.jobs[planned.id] = record(
                    by_id[planned.id].key,
                    planned.job.output,
                    outcome.result,
                    digest,
                    toolchain=planned.toolchain if planned.isolated else None,
                )
            else:
                manifest.jobs.pop(planned.id, None)  # its old artifact is not this job's
            save_manifest(manifest, build.output)
        on_done(outcome)

    todo = [job.planned for job in build.jobs if job.status != "fresh"]
    save_manifest(manifest, build.output)
    executor = Executor(
        build.root,
        slots,
        keep_going=keep_going,
        ray_address=ray_address,
        scratch=build.output,
        pins=pins,
    )
    try:
        return executor.run(todo, on_start, on_progress, done)
    finally:
        digests.close()


def locked_pins(build: Build) -> dict[str, Pin]:
    """`--locked`: each isolated job that will run, with the image the manifest recorded for
    it; refused in one line when any has none, or one that is not a toolchain image of its job
    (checked before any container starts: see timmx.images.registry.check_pins)."""
    from timmx.backends import get_backend
    from timmx.images.identity import BuildSettings

    pins: dict[str, Pin] = {}
    unpinned: list[str] = []
    for job in build.jobs:
        if job.status == "fresh" or not job.planned.isolated:
            continue
        entry = build.manifest.jobs.get(job.planned.id)
        if entry is None or entry.image_id is None:
            unpinned.append(job.planned.id)
        else:
            toolchain = job.planned.toolchain or get_backend(job.planned.job.backend).toolchain
            pins[job.planned.id] = Pin(entry.image_id, entry.image_digest, toolchain)
    if unpinned:
        names = ", ".join(unpinned[:4]) + (f" and {len(unpinned) - 4} more" if unpinned[4:] else "")
        raise InvalidInputError(
            f"--locked: the manifest records no image for {names}: build without --locked "
            "first (where the images are), or add them to the build that recorded the manifest"
        )
    if pins:
        check_pins(pins.values(), BuildSettings.resolve().registry)  # TIMMX_REGISTRY
    return pins
