"""A job exported away from the host's files, both ends: for a transport that carries values
(a Ray task and its answer), not files.

The host packs the job (`pack`): an input inside its workspace keeps its path, one outside
(absolute, or climbing out) moves under `_inputs/`, an output outside under `_output/`; the
inputs travel by content (`read_input`). The node (`run_shipped`) checks it has the host's timmx
and toolchain, writes the inputs into a fresh workspace, exports there with the shared runner
and answers with the result and the artifact's files as bytes, or a one-line error. The host
(`receive`) accepts the files through timmx.runners.accept, as it accepts a container's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from timmx.contract import ExportJob, ExportResult, leaves_folder
from timmx.errors import ContractError, InvalidInputError, TimmxError, error_from_kind, first_line

if TYPE_CHECKING:
    from timmx.runners.base import Runner
    from timmx.runners.spec import RunnerSpec

Payload = bytes | dict[str, bytes] | None  # a file, a folder's files, or nothing there


@dataclass(frozen=True)
class Shipment:
    spec: dict[str, Any]  # what the node is sent besides the inputs' bytes
    inputs: list[str]  # the inputs' host paths (workspace-relative), in the order they are sent


def pack(
    job: ExportJob, runner: RunnerSpec, toolchain: str, variant: dict[str, Any] | None = None
) -> Shipment:
    """What the node needs for `job`, run by `runner` there (a one-job runner: this host's
    process or container choice, as data): the job with its node paths, where each input goes,
    the host's timmx and `toolchain` (its identity), and the toolchain variant the job runs in
    (timmx.toolchains.ship_variant), if any."""
    from timmx import __version__

    files = job.input_files()
    moved: dict[str, str] = {}  # host path -> node path, each input once
    for number, path in enumerate(sorted(set(files.values()))):
        moved[path] = f"_inputs/{number}/{Path(path).name}" if leaves_folder(path) else path
    paths = {slot: moved[path] for slot, path in files.items()}
    if leaves_folder(job.output):
        paths["output"] = f"_output/{Path(job.output).name}"
    spec = {
        "job": job.with_paths(paths).model_dump(mode="json"),
        "inputs": list(moved.values()),
        "timmx": __version__,
        "toolchain": toolchain,
        "runner": runner.model_dump(mode="json"),
        "variant": variant,
    }
    return Shipment(spec, list(moved))


def read_input(path: Path) -> Payload:
    if path.is_dir():
        return {
            member.relative_to(path).as_posix(): member.read_bytes()
            for member in sorted(path.rglob("*"))
            if member.is_file()
        }
    if path.is_file():
        return path.read_bytes()
    return None


def run_shipped(spec: dict[str, Any], payloads: list[Payload], node: str) -> dict[str, Any]:
    """On the node: export the job in a fresh workspace; answer with the artifact's files
    (path relative to the artifact's folder -> bytes) and the result as JSON, or
    `{"error": {kind, message}}` for a job that cannot be done."""
    from timmx.toolchains import shipped_variant

    workspace = Path(tempfile.mkdtemp(prefix="timmx-ray-"))
    try:
        try:
            with shipped_variant(spec.get("variant")):
                _check_same_toolchain(spec, node)
                for relative, payload in zip(spec["inputs"], payloads, strict=True):
                    _write_input(workspace / relative, payload)
                job = ExportJob.model_validate(spec["job"])
                result = _runner(spec).run(job, workspace)
        except TimmxError as exc:
            error = {"kind": exc.kind, "message": exc.message}
            return {"error": error, "workspace": str(workspace)}
        folder = (workspace / job.output).parent
        files = {f.path: (folder / f.path).read_bytes() for f in result.artifacts}
        return {"result": result.model_dump_json(), "files": files}
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def receive(
    answer: dict[str, Any],
    job: ExportJob,
    workspace: Path,
    timings: dict[str, float],
    fix: str,
) -> ExportResult:
    """On the host: the node's answer to `job` as its result, the artifact published at the
    job's output and its report beside it; a one-line error for a failure or a refused answer
    (`fix` says what to do about one)."""
    from timmx.runners.accept import accept_bytes
    from timmx.runners.base import save_report

    if "error" in answer:
        message = answer["error"]["message"]
        if answer.get("workspace"):  # its paths on the node, as the host's
            message = message.replace(answer["workspace"], str(workspace))
        raise error_from_kind(answer["error"]["kind"], message)
    try:
        result = ExportResult.model_validate_json(answer["result"])
    except ValueError as exc:
        raise ContractError(f"the Ray task's result is not valid: {first_line(exc)}") from None
    destination = workspace / job.output
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        accept_bytes(result, job, answer.get("files"), destination, fix)
        result.job = job  # its paths as the host wrote them
        result.timings.update(timings)
        save_report(result, destination)  # last, as a local export
    except OSError as exc:
        raise InvalidInputError(
            f"cannot write the artifact into {destination.parent}: {exc.strerror or exc}"
        ) from None
    return result


def _runner(spec: dict[str, Any]) -> Runner:
    """The one-job runner the host chose, opened on this node (its own TIMMX_DEBUG decides
    whether converters' warnings show)."""
    from pydantic import TypeAdapter

    from timmx.runners.spec import LocalSpec, RunnerSpec, open_runner

    runner = TypeAdapter(RunnerSpec).validate_python(spec["runner"])
    if isinstance(runner, LocalSpec):
        runner = runner.model_copy(update={"verbose": bool(os.environ.get("TIMMX_DEBUG"))})
    return open_runner(runner)


def _check_same_toolchain(spec: dict[str, Any], node: str) -> None:
    """The job's cache key holds the host's toolchain: the node must export with the same."""
    from timmx import __version__
    from timmx.build.cache import toolchain_identity, variant_image_identity

    backend = spec["job"]["backend"]
    if __version__ != spec["timmx"]:
        raise InvalidInputError(
            f"the Ray node {node} has timmx {__version__}, this host {spec['timmx']}: install "
            "the same timmx on every node"
        )
    variant = (spec.get("variant") or {}).get("name")
    if variant is not None:  # its image follows its lock, which came with the job
        there = variant_image_identity(variant)
    else:
        there = toolchain_identity(backend, spec["runner"]["kind"] == "docker")
    if there != spec["toolchain"]:
        raise InvalidInputError(
            f"the Ray node {node} has another {variant or backend} toolchain than this host "
            f"({_difference(spec['toolchain'], there)}): install the same versions on every node"
        )


def _difference(here: str, there: str) -> str:
    """`torch 2.6.0 here, 2.7.0 there` for two `local:a=1,b=2` identities."""

    def parse(identity: str) -> dict[str, str]:
        kind, _, rest = identity.partition(":")
        if kind != "local":
            return {"image": rest}
        return dict(item.partition("=")[::2] for item in rest.split(",") if item)

    a, b = parse(here), parse(there)
    for name in sorted(set(a) | set(b)):
        if a.get(name) != b.get(name):
            return f"{name} {a.get(name, 'missing')} here, {b.get(name, 'missing')} there"
    return f"{here} here, {there} there"


def _write_input(path: Path, payload: Payload) -> None:
    if payload is None:
        return
    if isinstance(payload, bytes):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
        return
    path.mkdir(parents=True, exist_ok=True)
    for relative, data in payload.items():
        if leaves_folder(relative):
            raise ContractError(f"an input folder's member {relative!r} climbs out of it")
        member = path / relative
        member.parent.mkdir(parents=True, exist_ok=True)
        member.write_bytes(data)
