"""Stage an ExportJob for a container: job.json with /job paths, and what to mount.

The job is rewritten to see its output under /job/out and each input (checkpoint, calibration
data, file-typed backend options) read-only under /job/in; pretrained weights come from the
host's caches, mounted read-only with the hubs offline.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from timmx.contract import OPTION_SLOT, ExportJob
from timmx.errors import CheckpointError, InvalidInputError
from timmx.publish import write_text_atomic

JOB_DIR = "/job"


@dataclass
class Mounts:
    """Host paths mounted into the container, and the job rewritten to see them under /job."""

    job: ExportJob
    binds: list[tuple[Path, str, bool]] = field(default_factory=list)  # host, target, read-only
    env: dict[str, str] = field(default_factory=dict)
    renames: dict[str, str] = field(default_factory=dict)  # container path -> host path


def stage_job(job: ExportJob, workspace: Path, staging: Path, artifact_name: str) -> Mounts:
    """Write job.json into `staging` with /job-relative paths; collect the read-only inputs."""
    check_input_files(job, workspace)
    mounts = Mounts(job=job)

    def mount(relative: str, slot: str) -> str:
        return _mount_input(mounts, workspace, relative, slot)

    mounts.job = rewrite_job(job, mount, f"out/{artifact_name}")
    mounts.renames[f"out/{artifact_name}"] = str(workspace / job.output)
    if job.model.pretrained:
        _mount_caches(mounts)
    (staging / "out").mkdir(mode=0o700)  # created by the caller, so writable by the caller's uid
    write_text_atomic(staging / "job.json", mounts.job.model_dump_json(indent=2) + "\n")
    return mounts


def rewrite_job(job: ExportJob, mount: Callable[[str, str], str], output: str) -> ExportJob:
    """The job as a container sees it: `output` for its artifact, and each input file (its
    checkpoint, calibration data, file-typed options) at the path `mount(path, slot)` gives."""
    moved = {slot: mount(path, slot) for slot, path in job.input_files().items()}
    return job.with_paths({**moved, "output": output})


def check_input_files(job: ExportJob, workspace: Path) -> None:
    """The job's input files exist: refused here, with the host's paths, before they are sent
    anywhere (a container's mount, a Ray node)."""
    for slot, relative in job.input_files().items():
        path = workspace / relative
        if slot == "checkpoint" and not path.exists():
            raise CheckpointError(f"checkpoint not found: {path}")
        if slot == "checkpoint" and not path.is_file():
            raise CheckpointError(f"checkpoint is not a file: {path}")
        if not path.exists():
            what = "calibration data" if slot == "calibration" else f"{_flag(slot)} file"
            raise InvalidInputError(f"{what} not found: {path}")


def _flag(slot: str) -> str:
    """`--class-labels` for the slot `option-class_labels`."""
    return "--" + slot.removeprefix(OPTION_SLOT).replace("_", "-")


def _mount_input(mounts: Mounts, workspace: Path, relative: str, slot: str) -> str:
    """Mount one host file or folder read-only under /job/in/SLOT; return its job path."""
    host = (workspace / relative).resolve()
    inside = f"in/{slot}/{host.name}"
    mounts.binds.append((host, f"{JOB_DIR}/{inside}", True))
    mounts.renames[inside] = str(workspace / relative)
    return inside


def _mount_caches(mounts: Mounts) -> None:
    mounts.binds += cache_binds(mounts.env)


def cache_binds(env: dict[str, str], writable: bool = False) -> list[tuple[Path, str, bool]]:
    """Pretrained weights: the host's Hugging Face and torch hub caches, read-only and offline
    for an export (`env` gets the variables that point the container at them); `writable` for
    the step that fetches them, which creates them when missing."""
    binds = []
    home = Path.home()
    hf_home = Path(os.environ.get("HF_HOME") or home / ".cache" / "huggingface")
    hub = Path(os.environ.get("HF_HUB_CACHE") or hf_home / "hub")
    torch_home = Path(os.environ.get("TORCH_HOME") or home / ".cache" / "torch")
    if writable:
        for folder in (hub, torch_home):
            folder.mkdir(parents=True, exist_ok=True)
    if hub.is_dir():
        binds.append((hub.resolve(), "/cache/huggingface/hub", not writable))
        env["HF_HUB_CACHE"] = "/cache/huggingface/hub"
        if not writable:
            env["HF_HUB_OFFLINE"] = "1"
    if torch_home.is_dir():
        binds.append((torch_home.resolve(), "/cache/torch", not writable))
        env["TORCH_HOME"] = "/cache/torch"
    if writable:
        for name in ("HF_TOKEN", "HF_ENDPOINT"):  # a private repository, a mirror
            if os.environ.get(name):
                env[name] = os.environ[name]
    return binds


def host_paths(message: str, renames: dict[str, str]) -> str:
    """Name the host's files in a worker's message, not their places in the container."""
    for inside in sorted(renames, key=len, reverse=True):
        message = message.replace(f"{JOB_DIR}/{inside}", renames[inside])
        message = message.replace(inside, renames[inside])
    return message
