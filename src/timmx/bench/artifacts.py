"""What to bench: artifacts given by path, found in a folder by their reports, or listed in a
build's manifest; each with its export report and the folder its job ran from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePath

from timmx.contract import ExportJob, ExportResult, parse_result
from timmx.errors import InvalidInputError, TimmxError
from timmx.publish import report_path

MANIFEST = "timmx-build.json"


@dataclass(frozen=True)
class Target:
    artifact: Path
    result: ExportResult
    job: ExportJob
    workspace: Path  # the folder the export ran from: the job's relative paths start there


def resolve(paths: list[Path]) -> list[Target]:
    """Every artifact `paths` name, in order, each once; one line for anything not benchable."""
    if not paths:
        raise InvalidInputError("give at least one artifact, folder of artifacts or manifest")
    found: list[Path] = []
    for path in paths:
        if not path.exists():
            raise InvalidInputError(
                f"{path} does not exist: give an artifact, a folder or a manifest"
            )
        if path.name == MANIFEST and path.is_file():
            found += _from_manifest(path)
        elif report_path(path).is_file():
            found.append(path)
        elif path.is_dir():
            inner = sorted(
                p.with_name(p.name.removesuffix(".json"))
                for p in path.rglob("*.json")
                if p.name != MANIFEST and _is_report(p)
            )
            if not inner:
                raise InvalidInputError(
                    f"{path} holds no timmx artifact (no <artifact>.json report beside one): "
                    "export into it first, or give an artifact's path"
                )
            found += inner
        else:
            raise InvalidInputError(
                f"{path} has no report beside it ({report_path(path).name}): bench artifacts "
                "that timmx exported, which record how to rebuild their model"
            )
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return [_target(p) for p in unique]


def _is_report(path: Path) -> bool:
    artifact = path.with_name(path.name.removesuffix(".json"))
    if not artifact.exists():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("job"), dict) and "artifacts" in data


def _from_manifest(path: Path) -> list[Path]:
    try:
        jobs = json.loads(path.read_text(encoding="utf-8"))["jobs"]
        artifacts = [str(record["artifact"]) for record in jobs.values()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise InvalidInputError(f"{path} is not a timmx build manifest") from None
    # Artifacts are relative to the build file's folder: the manifest's folder or one above it.
    for root in [path.parent, *path.parent.parents]:
        if all((root / artifact).exists() for artifact in artifacts):
            return [root / artifact for artifact in artifacts]
    raise InvalidInputError(f"{path} lists artifacts that are not there: run `timmx build` first")


def _target(artifact: Path) -> Target:
    report = report_path(artifact)
    try:
        result = parse_result(report.read_text(encoding="utf-8"))
    except TimmxError as exc:
        raise InvalidInputError(f"{report}: {exc.message}") from None
    if result.status != "success" or result.job is None:
        raise InvalidInputError(f"{report} records a failed export: nothing to bench")
    return Target(artifact, result, result.job, workspace_of(artifact, result.job.output))


def workspace_of(artifact: Path, output: str) -> Path:
    """The folder the export ran from: the one where the job's output path is the artifact."""
    if PurePath(output).is_absolute():
        return Path("/")
    resolved = artifact.resolve()
    for folder in resolved.parents:
        if (folder / output).resolve() == resolved:
            return folder
    return resolved.parent
