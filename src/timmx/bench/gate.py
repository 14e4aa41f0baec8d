"""`[bench]` in a build: bench the built artifacts, keep the figures in the manifest (cached by
the artifact's and the data's content), and the accuracy gate of `timmx build --check`."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from timmx.bench.model import BenchRecord, BenchReport
from timmx.build.manifest import JobRecord, load_manifest, save_manifest
from timmx.build.spec import BenchSection, load_build_file
from timmx.calibration import IMAGE_SUFFIXES
from timmx.errors import InvalidInputError
from timmx.publish import sha256

if TYPE_CHECKING:
    from timmx.bench.run import Progress
    from timmx.build.run import Build


def data_digest(folder: Path) -> str:
    """The labelled images' content: every image's class folder, name and sha256."""
    if not folder.is_dir():
        raise InvalidInputError(f"[bench] data {folder} is not a folder of class folders")
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256(path)}\n".encode())
    return digest.hexdigest()


def bench_key(entry: JobRecord, data: str, section: BenchSection) -> str:
    """What a bench's figures depend on: the job (its key covers model and checkpoint), the
    artifact's files, the images and the subset."""
    files = ",".join(f"{f.path}:{f.sha256}" for f in entry.artifacts)
    text = f"{entry.key}\n{files}\n{data}\n{section.limit}"
    return hashlib.sha256(text.encode()).hexdigest()


def bench_build(path: Path, build: Build, progress: Progress | None = None) -> BenchReport | None:
    """Bench every built artifact whose figures are not in the manifest for its current key;
    None when the build file has no [bench] or nothing needed benching. An artifact whose
    runtime is not installed here is benched in its toolchain's image."""
    from timmx.bench.run import Settings, bench

    section = load_build_file(path).bench
    if section is None:
        return None
    manifest = load_manifest(build.output)
    digest = data_digest(build.root / section.data)
    todo: list[tuple[str, str, Path]] = []
    for job in build.jobs:
        ident = job.planned.id
        entry = manifest.jobs.get(ident)
        if entry is None:  # failed: nothing to bench
            manifest.bench.pop(ident, None)
            continue
        key = bench_key(entry, digest, section)
        old = manifest.bench.get(ident) or build.manifest.bench.get(ident)
        if old is not None and old.key == key:
            manifest.bench[ident] = old
            continue
        manifest.bench.pop(ident, None)
        todo.append((ident, key, build.root / entry.artifact))
    report = None
    if todo:
        settings = Settings(data=build.root / section.data, limit=section.limit)
        report = bench([artifact for _, _, artifact in todo], settings, progress)
        for (ident, key, _), row in zip(todo, report.rows, strict=True):
            manifest.bench[ident] = BenchRecord.of(key, report, row)
    save_manifest(manifest, build.output)
    return report


def gate(path: Path, build: Build) -> list[str]:
    """`--check`: each artifact whose top-1 is more than `max-accuracy-drop` points under
    eager's, or whose bench is not on record for its current content; empty when all pass."""
    section = load_build_file(path).bench
    if section is None or section.max_accuracy_drop is None:
        return []
    digest = data_digest(build.root / section.data)
    failures = []
    for job in build.jobs:
        ident = job.planned.id
        entry = build.manifest.jobs.get(ident)
        record = build.manifest.bench.get(ident)
        if entry is None or record is None or record.key != bench_key(entry, digest, section):
            failures.append(f"{ident} not benched on the current data (run `timmx build`)")
            continue
        drop = -record.top1_delta * 100
        if drop > section.max_accuracy_drop:
            low, high = (v * 100 for v in record.top1_delta_ci95)
            failures.append(
                f"{ident} top-1 {record.top1:.1%} is {drop:.1f} pp under eager's "
                f"{record.eager_top1:.1%} (95% CI of the change {low:+.1f} to {high:+.1f} pp)"
            )
    return failures
