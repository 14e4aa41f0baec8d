"""The versioned JSON contract between the CLI, the runners and the worker in a container.

An `ExportJob` says everything an export needs; an `ExportResult` says what came of it. Paths
inside a job are relative to the job's workspace (the folder it is run from on the host, the
mounted `/job` folder in a container), so one job file means the same thing in both places.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from timmx.errors import ContractError

SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    name: str = Field(description="A timm model name, or an `hf-hub:org/name` reference.")
    pretrained: bool = Field(False, description="Load the model's pretrained weights.")
    checkpoint: str | None = Field(None, description="A checkpoint file, workspace-relative.")
    num_classes: int | None = Field(None, ge=0, description="Classifier size (0: features).")
    in_chans: int | None = Field(None, ge=1, description="Input channels.")
    reparameterize: bool = Field(
        True, description="Fuse reparameterizable blocks (RepVGG, MobileOne...) before export."
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments for timm.create_model."
    )
    seed: int = Field(0, description="Seed for randomly initialised weights (reproducibility).")


# Far past any real model, and refused before a tensor of that size is made: a typo of a size
# should not take the machine's memory down.
MAX_BATCH_SIZE = 1024
MAX_CHANNELS = 64
MAX_SIDE = 8192
MAX_INPUT_ELEMENTS = 2**30  # batch x C x H x W: 4 GiB of float32


class InputSpec(_Strict):
    batch_size: int = Field(1, ge=1)
    size: tuple[int, int, int] | None = Field(
        None, description="C, H, W; the model's default input size when absent."
    )
    dynamic_batch: bool = False

    @model_validator(mode="after")
    def _positive_size(self) -> InputSpec:
        if self.batch_size > MAX_BATCH_SIZE:
            raise ValueError(
                f"batch size {self.batch_size} is over timmx's limit of {MAX_BATCH_SIZE}: "
                "export with a smaller --batch-size (or --dynamic-batch)"
            )
        if self.size is None:
            return self
        if min(self.size) < 1:
            raise ValueError(f"input size must be three positive integers C H W, got {self.size}")
        c, h, w = self.size
        if c > MAX_CHANNELS or max(h, w) > MAX_SIDE:
            raise ValueError(
                f"input size {c} {h} {w} is over timmx's limits ({MAX_CHANNELS} channels, "
                f"{MAX_SIDE} pixels a side): pass a smaller --input-size"
            )
        if self.batch_size * c * h * w > MAX_INPUT_ELEMENTS:
            raise ValueError(
                f"batch size {self.batch_size} x input size {c} {h} {w} is "
                f"{self.batch_size * c * h * w:,} values, over timmx's limit of "
                f"{MAX_INPUT_ELEMENTS:,} (4 GiB of float32): lower --batch-size or --input-size"
            )
        return self


class PreprocessSpec(_Strict):
    normalize: bool = Field(False, description="Bake (x - mean) / std into the graph.")
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    softmax: bool = Field(False, description="Bake a softmax over the classes into the graph.")

    @model_validator(mode="after")
    def _mean_std_need_normalize(self) -> PreprocessSpec:
        if (self.mean is not None or self.std is not None) and not self.normalize:
            raise ValueError("--mean/--std only apply with --normalize: add --normalize")
        if self.std is not None and any(s == 0 for s in self.std):
            raise ValueError("--std values must be non-zero")
        return self


class CalibrationSpec(_Strict):
    path: str | None = Field(
        None,
        description="A torch-saved (N, C, H, W) tensor or an image folder, workspace-relative.",
    )
    samples: int | None = Field(None, ge=1, description="Use at most this many samples.")
    steps: int | None = Field(None, ge=1, description="Calibration forward passes (batches).")
    random: bool = Field(
        False, description="Random inputs: an explicit opt-in, not for production."
    )


class VerifySpec(_Strict):
    enabled: bool = True
    atol: float | None = Field(None, ge=0, description="Absolute tolerance override.")
    rtol: float | None = Field(None, ge=0, description="Tolerance relative to max |reference|.")
    seed: int = 0


class _Document(_Strict):
    """A job or result: one written under another schema version is refused as a whole."""

    document: ClassVar[str]  # what the version error calls it
    schema_version: int = SCHEMA_VERSION

    @model_validator(mode="before")
    @classmethod
    def _known_version(cls, data: Any) -> Any:
        if isinstance(data, dict):
            check_schema_version(data.get("schema_version", SCHEMA_VERSION), cls.document)
        return data


class ExportJob(_Document):
    document = "job"
    backend: str
    model: ModelSpec
    input: InputSpec = Field(default_factory=InputSpec)
    preprocess: PreprocessSpec = Field(default_factory=PreprocessSpec)
    calibration: CalibrationSpec | None = None
    options: dict[str, Any] = Field(
        default_factory=dict, description="The backend's own options, validated by the backend."
    )
    output: str = Field(description="Artifact path, workspace-relative.")
    device: str = "cpu"
    verify: VerifySpec = Field(default_factory=VerifySpec)

    def input_files(self) -> dict[str, str]:
        """The files the job reads, by slot, workspace-relative as written: `checkpoint`,
        `calibration` (a file or a folder), and `option-NAME` for each file-typed backend option
        that is set. What is staged, hashed into the cache key, shipped and checked for
        containment."""
        from timmx.backends import get_backend  # here: the backends import this module

        files: dict[str, str] = {}
        if self.model.checkpoint:
            files["checkpoint"] = self.model.checkpoint
        if self.calibration is not None and self.calibration.path:
            files["calibration"] = self.calibration.path
        for name in get_backend(self.backend).file_options():
            value = self.options.get(name)
            if value is not None:
                files[f"{OPTION_SLOT}{name}"] = str(value)
        return files

    def with_paths(self, paths: Mapping[str, str]) -> ExportJob:
        """The same job with the files of `paths` (slots of `input_files()`, and `output`) at
        the paths given; this job is left as it is."""
        unknown = set(paths) - set(self.input_files()) - {"output"}
        if unknown:
            raise ValueError(f"the job has no file {', '.join(sorted(unknown))}")
        update: dict[str, Any] = {}
        if "output" in paths:
            update["output"] = paths["output"]
        if "checkpoint" in paths:
            update["model"] = self.model.model_copy(update={"checkpoint": paths["checkpoint"]})
        if "calibration" in paths and self.calibration is not None:
            update["calibration"] = self.calibration.model_copy(
                update={"path": paths["calibration"]}
            )
        options = {
            slot.removeprefix(OPTION_SLOT): path
            for slot, path in paths.items()
            if slot.startswith(OPTION_SLOT)
        }
        if options:
            update["options"] = {**self.options, **options}
        return self.model_copy(update=update)


OPTION_SLOT = "option-"  # the slot of a file-typed backend option: option-NAME


def slot_field(slot: str) -> str:
    """The job field a slot of `ExportJob.input_files()` (or `output`) is written in."""
    if slot.startswith(OPTION_SLOT):
        return f"options.{slot.removeprefix(OPTION_SLOT)}"
    return {"checkpoint": "model.checkpoint", "calibration": "calibration.path"}.get(slot, slot)


class ArtifactFile(_Strict):
    path: str = Field(description="Relative to the report's folder.")
    bytes: int
    sha256: str


class VerificationCheck(_Strict):
    batch_size: int
    max_abs_error: float
    max_rel_error: float
    top1_agreement: float
    passed: bool


class Verification(_Strict):
    status: Literal["passed", "failed", "skipped", "partial"]
    runtime: str | None = None
    inputs: str | None = Field(
        None, description="What the artifact was run on: seeded noise, held-out samples..."
    )
    atol: float | None = None
    rtol: float | None = None
    min_top1: float | None = None
    checks: list[VerificationCheck] = Field(default_factory=list)
    note: str | None = None
    details: dict[str, Any] = Field(
        default_factory=dict, description="What the backend found in the artifact (ops, ...)."
    )

    def worst(self, field: str) -> float | None:
        values = [getattr(c, field) for c in self.checks]
        if not values:
            return None
        return min(values) if field == "top1_agreement" else max(values)


class ModelSummary(_Strict):
    name: str
    parameters: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    reparameterized: bool
    license: str | None = Field(None, description="The pretrained weights' license, if known.")


class Environment(_Strict):
    runner: Literal["local", "docker"] = "local"
    python: str
    platform: str
    timmx: str
    packages: dict[str, str] = Field(default_factory=dict)
    image: str | None = None
    image_id: str | None = None


class ErrorInfo(_Strict):
    kind: str
    message: str


class ExportResult(_Document):
    document = "result"
    status: Literal["success", "failed"]
    job: ExportJob | None = None
    artifacts: list[ArtifactFile] = Field(default_factory=list)
    model: ModelSummary | None = None
    verification: Verification | None = None
    environment: Environment | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    error: ErrorInfo | None = None


def check_schema_version(version: Any, what: str) -> None:
    if version != SCHEMA_VERSION:
        raise ContractError(
            f"{what} schema version {version!r} is not supported by this timmx, which speaks "
            f"version {SCHEMA_VERSION}: use a timmx (or image) of the same version"
        )


def describe_validation_error(exc: ValidationError) -> str:
    """One line for the first problem pydantic found, naming the field."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "value"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"unknown field '{where}'"
    return f"{where}: {message}" if first["loc"] else message


def _parse(model: type[_Strict], text: str, what: str) -> Any:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContractError(f"{what} is not valid JSON: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ContractError(f"invalid {what}: {describe_validation_error(exc)}") from None


def parse_job(text: str) -> ExportJob:
    return _parse(ExportJob, text, "job")


def parse_result(text: str) -> ExportResult:
    return _parse(ExportResult, text, "result")


def check_paths_inside(job: ExportJob, what: str = "job") -> None:
    """Refuse a job whose paths leave its folder: absolute, or climbing out with '..'.

    For a job that crossed a trust boundary (the worker's job.json): the in-process CLI takes
    absolute paths on purpose. Pure string logic: symlinks are not resolved, the folder's owner
    decides what lies in it."""
    for slot, path in {"output": job.output, **job.input_files()}.items():
        if leaves_folder(path):
            raise ContractError(
                f"{what} field '{slot_field(slot)}' must stay inside the {what} file's folder, "
                f"got {path!r}: give a path relative to that folder that does not climb out "
                "with '..'"
            )


def leaves_folder(path: str) -> bool:
    """A path that is not inside the folder it is relative to: absolute, or climbing out."""
    # '\\' and drive letters count too, so a job means the same when the worker runs on Windows.
    posix = path.replace("\\", "/")
    if posix.startswith("/") or PureWindowsPath(path).anchor:
        return True
    parts = PurePosixPath(posixpath.normpath(posix)).parts
    return bool(parts) and parts[0] == ".."


def json_schema(which: Literal["job", "result"]) -> dict[str, Any]:
    model = ExportJob if which == "job" else ExportResult
    schema = model.model_json_schema()
    schema["$id"] = f"https://timmx.dev/schema/{which}/v{SCHEMA_VERSION}.json"
    return schema
