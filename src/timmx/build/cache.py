"""A job's cache key: what it is, what it reads, and what makes it.

sha256 over the canonical job (JSON, sorted keys), the sha256 of every input file (checkpoint,
calibration data, file-typed options such as coreml `labels`; every file of a folder), the
toolchain's identity (the image's content tag for isolated jobs; the versions of the backend's
packages in-process) and timmx's version. Same key, same artifact.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path

from timmx.build.plan import PlannedJob
from timmx.publish import sha256


def job_key(planned: PlannedJob, root: Path) -> str:
    from timmx import __version__

    job = planned.job
    payload = {
        "job": json.loads(job.model_dump_json()),
        "inputs": {path: _input_hash(root / path) for path in input_paths(planned)},
        "toolchain": variant_identity(planned) or toolchain_identity(job.backend, planned.isolated),
        "timmx": __version__,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def input_paths(planned: PlannedJob) -> list[str]:
    """Every file the job reads, once each, sorted."""
    return sorted(set(planned.job.input_files().values()))


def _input_hash(path: Path) -> str:
    if path.is_dir():
        digest = hashlib.sha256()
        for member in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(member.relative_to(path).as_posix().encode() + b"\0")
            digest.update(_file_hash(member, *_stat(member)).encode())
        return digest.hexdigest()
    if not path.is_file():
        return "missing"  # the job itself says what is wrong when it runs
    return _file_hash(path, *_stat(path))


def _stat(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns


@cache
def _file_hash(path: Path, size: int, mtime_ns: int) -> str:
    """sha256 of a file, once per (path, size, mtime) in this process."""
    return sha256(path)


def variant_identity(planned: PlannedJob) -> str | None:
    """A toolchain variant's image tag, which follows its lock; None for a job in its backend's
    own toolchain."""
    from timmx.backends import get_backend

    if not planned.toolchain or planned.toolchain == get_backend(planned.job.backend).toolchain:
        return None
    return variant_image_identity(planned.toolchain)


def variant_image_identity(toolchain: str) -> str:
    """The image tag of the variant `toolchain` (registered, its lock checked)."""
    from timmx.images.recipes import get_recipe
    from timmx.toolchains import lock_sha256

    return _variant_tag(toolchain, lock_sha256(get_recipe(toolchain).lock_files))


@cache
def _variant_tag(toolchain: str, lock_sha256: str) -> str:
    """Once per lock in this process, as toolchain_identity is once per backend."""
    from timmx.images.identity import BuildSettings, identify
    from timmx.images.recipes import get_recipe

    return "image:" + identify(get_recipe(toolchain), BuildSettings.resolve()).tag


@cache
def toolchain_identity(backend_name: str, isolated: bool) -> str:
    """The image's content tag for isolated jobs; the backend's package versions in-process."""
    from timmx.backends import get_backend

    backend = get_backend(backend_name)
    if isolated:
        from timmx.images.identity import BuildSettings, identify
        from timmx.images.recipes import get_recipe

        return "image:" + identify(get_recipe(backend.toolchain), BuildSettings.resolve()).tag
    from timmx.environment import package_versions

    versions = package_versions(("torch", "torchvision", "timm", "numpy", *backend.requires))
    return "local:" + ",".join(f"{k}={v}" for k, v in sorted(versions.items()))
