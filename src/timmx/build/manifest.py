"""`<output>/timmx-build.json`: per job its key, artifacts, image and verification.

Written atomically after every finished job, so it is never half-written and an interrupted
build keeps what it finished. `check` tells, without building, which jobs are stale, missing,
altered or unverified: the CI gate.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from timmx.bench.model import BenchRecord
from timmx.contract import ArtifactFile, ExportResult
from timmx.publish import sha256, write_text_atomic

MANIFEST = "timmx-build.json"
MANIFEST_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobRecord(_Strict):
    key: str
    backend: str
    artifact: str = Field(description="The artifact's path, relative to the build file.")
    artifacts: list[ArtifactFile] = Field(description="Every file, relative to its folder.")
    verification: str = Field(description="passed, skipped, partial...")
    max_abs_error: float | None = None
    image: str | None = None
    image_id: str | None = None
    image_digest: str | None = Field(
        default=None, description="<registry>/<name>@sha256:... where the image is in a registry"
    )
    toolchain: str | None = Field(
        default=None, description="The toolchain (built-in or variant) of an isolated job"
    )
    lock_sha256: str | None = Field(
        default=None, description="sha256 of that toolchain's lock files (timmx.toolchains)"
    )


class Manifest(_Strict):
    schema_version: int = MANIFEST_VERSION
    jobs: dict[str, JobRecord] = Field(default_factory=dict)
    bench: dict[str, BenchRecord] = Field(
        default_factory=dict, description="Per job, its artifact's bench ([bench])."
    )


def manifest_path(output: Path) -> Path:
    return output / MANIFEST


def load_manifest(output: Path) -> Manifest:
    path = manifest_path(output)
    try:
        manifest = Manifest.model_validate_json(path.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: everything builds
        return Manifest()
    return manifest if manifest.schema_version == MANIFEST_VERSION else Manifest()


def save_manifest(manifest: Manifest, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(manifest_path(output), manifest.model_dump_json(indent=2) + "\n")


def record(
    key: str,
    artifact: str,
    result: ExportResult,
    image_digest: str | None = None,
    toolchain: str | None = None,
) -> JobRecord:
    assert result.job is not None
    verification = result.verification
    environment = result.environment
    return JobRecord(
        key=key,
        backend=result.job.backend,
        artifact=artifact,
        artifacts=result.artifacts,
        verification=verification.status if verification else "skipped",
        max_abs_error=verification.worst("max_abs_error") if verification else None,
        image=environment.image if environment else None,
        image_id=environment.image_id if environment else None,
        image_digest=image_digest,
        toolchain=toolchain,
        lock_sha256=_lock_sha256(toolchain),
    )


def _lock_sha256(toolchain: str | None) -> str | None:
    if toolchain is None:
        return None
    from timmx.images.recipes import get_recipe
    from timmx.toolchains import lock_sha256

    return lock_sha256(get_recipe(toolchain).lock_files)


Status = Literal["fresh", "stale", "missing", "altered", "unverified", "new"]


def status_of(entry: JobRecord | None, key: str, root: Path, backend: str, artifact: str) -> Status:
    """Whether a job's recorded artifact is still what a build would make now: the gate trusts
    neither the files nor the manifest. The planned artifact must be on record, as this
    backend's, with every recorded file in place and unchanged; a folder artifact must hold
    exactly the recorded files (an extra one is `altered`: a loader would import it), and the
    report beside the artifact must list the same files."""
    if entry is None:
        return "new"
    if entry.key != key or entry.backend != backend or entry.artifact != artifact:
        return "stale"
    name = PurePosixPath(artifact).name
    recorded = {file.path: file for file in entry.artifacts}
    members = {path for path in recorded if path.startswith(name + "/")}
    if name not in recorded and not members:
        return "missing"  # an emptied or foreign file list: nothing vouches for the artifact
    folder = (root / artifact).parent
    for file in entry.artifacts:
        path = folder / file.path
        if not _plain(file.path) or path.is_symlink():
            return "altered"
        if not path.is_file():
            return "missing"
        if path.stat().st_size != file.bytes or sha256(path) != file.sha256:
            return "altered"
    if members and _files_under(folder, name) != members:
        return "altered"
    if not _report_agrees(folder / f"{name}.json", backend, entry):
        return "missing" if not (folder / f"{name}.json").is_file() else "altered"
    if entry.verification not in ("passed",):
        return "unverified"
    return "fresh"


def _plain(relative: str) -> bool:
    """A recorded path that stays inside the artifact's folder."""
    parts = PurePosixPath(relative).parts
    return bool(parts) and not PurePosixPath(relative).is_absolute() and ".." not in parts


def _files_under(folder: Path, name: str) -> set[str]:
    """Every entry below a folder artifact that is not a folder (links included)."""
    found = set()
    for parent, folders, files in os.walk(folder / name):
        links = [f for f in folders if Path(parent, f).is_symlink()]
        for entry in [*files, *links]:
            found.add(Path(parent, entry).relative_to(folder).as_posix())
    return found


def _report_agrees(report: Path, backend: str, entry: JobRecord) -> bool:
    """The report beside the artifact tells the same as the manifest: backend, files and the
    verification's outcome."""
    recorded = {file.path: file for file in entry.artifacts}
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
        files = {entry["path"]: ArtifactFile.model_validate(entry) for entry in data["artifacts"]}
        status = (data.get("verification") or {}).get("status", "skipped")
        same = data["job"]["backend"] == backend and files == recorded
        return same and status == entry.verification
    except (OSError, ValueError, KeyError, TypeError):
        return False
