"""The one small interface every backend implements.

A backend module imports only pydantic at import time; torch, timm and the backend's own library
are imported inside `export()` and `load_runtime()`, so the CLI stays fast and a host without
torch can still list, describe and run backends in containers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from timmx.contract import ExportJob, ModelSummary, describe_validation_error
from timmx.errors import BackendUnavailableError, InvalidInputError

if TYPE_CHECKING:
    import numpy as np
    import torch


class BackendOptions(BaseModel):
    """Base for a backend's options. Each field becomes a CLI flag with its description as help."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    min_top1: float | None = None
    # Inputs to verify on when no calibration samples were held out: top-1 agreement on one
    # sample is all or nothing, so a stated top-1 threshold for int8 needs more of them.
    samples: int = 1


# int8 (weights and activations, or weights with activations quantized at run time): within
# 15% of the output's scale and the same top-1 class on 80% of the verification inputs. Measured
# on held-out calibration samples (32 each; resnet18, mobilenetv3_small_100, efficientnet_b0,
# vit_tiny at 64x64, randomised norms, calibrated on pixels in [0, 1] and on N(0, 1)): 0.9-9.6%
# of the scale, top-1 agreement 94-100%.
INT8 = Tolerance(atol=5e-2, rtol=0.15, min_top1=0.8, samples=16)


FP32 = Tolerance(atol=1e-4, rtol=1e-4)
FP16 = Tolerance(atol=5e-2, rtol=1e-2, min_top1=0.9)


@dataclass
class ExportContext:
    """What a backend gets to export: a ready model, what is known about it, where to write."""

    job: ExportJob
    model: torch.nn.Module  # what to export: the timm model with any baked-in pre/post-processing
    example_input: torch.Tensor
    artifact: Path  # final file name, inside a private staging folder
    workspace: Path
    summary: ModelSummary  # input size, mean/std, classes, license
    timm_model: torch.nn.Module  # the timm model alone, without baked-in processing
    data_config: dict[str, Any]  # timm's resolved data config (interpolation, crop...)
    warnings: list[str] = field(default_factory=list)
    # Facts found while exporting (delegation, op counts...) for the report's details.
    details: dict[str, Any] = field(default_factory=dict)
    # Inputs to verify on instead of seeded noise (held-out calibration samples), and their name.
    verification_inputs: torch.Tensor | None = None
    verification_label: str | None = None

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    @property
    def normalized_in_graph(self) -> bool:
        """True when (x - mean) / std is baked in: the artifact takes pixels in [0, 1]."""
        return self.job.preprocess.normalize

    def calibration_batches(self) -> list[torch.Tensor]:
        """The job's calibration data as validated batches shaped like `example_input`. The
        samples held out of them become the verification inputs (`verification_inputs`)."""
        from timmx.calibration import Target, calibration_batches

        target = Target(
            size=self.summary.input_size,
            batch_size=int(self.example_input.shape[0]),
            pixels=self.normalized_in_graph,
        )
        calibration = calibration_batches(
            self.job.calibration, self.workspace, target, self.data_config, self.warn
        )
        self.verification_inputs = calibration.held_out
        self.verification_label = calibration.held_out_label
        return calibration.batches


Runtime = Callable[["np.ndarray"], "np.ndarray"]


class Backend(ABC):
    """Everything about a backend is declared here, on its class: what its artifact is called
    and whether it is a folder, what may be written beside it, the image it runs in, how its
    converter is kept quiet, and how its artifact is verified. `output`, `quiet`, the CLI and
    the build read these; none of them keeps a table of backends of its own."""

    name: ClassVar[str]
    help: ClassVar[str]
    suffix: ClassVar[str]  # the artifact's extension, e.g. ".onnx"
    other_suffixes: ClassVar[tuple[str, ...]] = ()  # further extensions --output may take
    # Extensions (of `suffixes`) whose artifact is a folder, every file in it the artifact's.
    folder_suffixes: ClassVar[tuple[str, ...]] = ()
    any_folder_name: ClassVar[bool] = False  # the artifact is a folder of any name (ncnn's)
    # Loggers of its converter that log at INFO/WARNING while it works, and environment
    # variables that switch its progress output off; timmx.quiet silences them during a call.
    noisy_loggers: ClassVar[tuple[str, ...]] = ()
    quiet_environment: ClassVar[dict[str, str]] = {}
    requires: ClassVar[tuple[str, ...]]  # distributions that must be installed to run in-process
    # The versions of its main packages its code works with ("onnxruntime>=1.22"): a pinned
    # toolchain variant outside them is refused (timmx.toolchains.check_supported).
    supported: ClassVar[tuple[str, ...]] = ()
    Options: ClassVar[type[BackendOptions]] = BackendOptions
    runtime_name: ClassVar[str]  # what verification runs the artifact in
    # The threads its runtime in timmx uses whatever is asked (ncnn's and MNN's: one); None:
    # it takes the thread count it is given (`timmx bench --threads`).
    runtime_threads: ClassVar[int | None] = None
    # Its runtime in timmx takes a batch of any size (one image at a time inside, as ncnn's).
    runtime_any_batch: ClassVar[bool] = False
    # True: the CLI adds the shared calibration flags and fills ExportJob.calibration.
    uses_calibration: ClassVar[bool] = False
    # The values of the options' `mode` that read calibration data (empty: every mode does).
    calibrated_modes: ClassVar[tuple[str, ...]] = ()
    # Why its toolchain cannot be installed beside timmx's (a torch or numpy it pins, a runtime
    # outside Python): it runs only in its image, and `timmx doctor` and refusals say so.
    isolated_only: ClassVar[str | None] = None

    @property
    def toolchain(self) -> str:
        """The image it runs in with --isolated, and the extra that installs it here: by
        default both are named as the backend."""
        return self.name

    @property
    def install_hint(self) -> str:
        """How to install `requires` here."""
        return f"pip install 'timmx[{self.toolchain}]'"

    def side_files(self, artifact_name: str) -> tuple[str, ...]:
        """Names of the files an export may write beside the artifact `artifact_name` (in the
        same folder): only these, and the artifact itself, are ever published."""
        return ()

    def owns_existing(self, path: Path) -> bool:
        """Whether what is at `path` (no report beside it) is by its content alone an artifact
        of this backend, so that an export may replace it: a file with the artifact's extension
        is; a folder is only where the backend knows its layout (see timmx.ownership)."""
        return path.is_file()

    @property
    def suffixes(self) -> tuple[str, ...]:
        """Every extension the artifact may have; `suffix` (the default) first."""
        return (self.suffix, *self.other_suffixes)

    @property
    def folder_artifact(self) -> bool:
        """Whether the default artifact (named with `suffix`) is a folder."""
        return self.any_folder_name or self.suffix in self.folder_suffixes

    def is_folder_artifact(self, name: str) -> bool:
        """Whether the artifact named `name` is a folder rather than a file."""
        return self.any_folder_name or Path(name).suffix in self.folder_suffixes

    def file_options(self) -> tuple[str, ...]:
        """The options that name input files, declared by their type (`Path`): the job lists
        them among its input files (`ExportJob.input_files`)."""
        return tuple(
            name
            for name, info in self.Options.model_fields.items()
            if info.annotation is Path or Path in get_args(info.annotation)
        )

    def default_suffix(self, options: Any) -> str:
        """What the default output name (the model's name) ends with; `suffix` unless the
        options change the artifact's kind."""
        return self.suffix

    def parse_options(self, raw: dict[str, Any]) -> BackendOptions:
        try:
            return self.Options.model_validate(raw)
        except ValidationError as exc:
            field, _, message = describe_validation_error(exc).partition(": ")
            flag = "--" + field.replace("_", "-")
            raise InvalidInputError(f"{self.name} {flag}: {message}") from None

    def calibrates(self, options: dict[str, Any]) -> bool:
        """Whether an export with these raw options (flag names as keys) reads calibration."""
        if not self.uses_calibration:
            return False
        field = self.Options.model_fields.get("mode")
        if not self.calibrated_modes or field is None:
            return True
        return options.get("mode", field.default) in self.calibrated_modes

    def check(self, job: ExportJob, options: Any) -> None:  # noqa: B027 - optional hook
        """Refuse bad combinations of options before any model is built."""

    def tolerance(self, options: Any) -> Tolerance:
        return FP32

    def fallback(self, options: Any) -> tuple[Any, str] | None:
        """Options to export with once more when the artifact fails verification under a
        default the user did not choose, and the warning that says so; None: no second try."""
        return None

    def nonfinite_fix(self, options: Any) -> str | None:
        """What to do when the artifact's outputs overflow (inf), where the backend knows."""
        return None

    def verification_advice(self, options: Any) -> str | None:
        """What to try when the artifact fails verification, ahead of loosening the tolerance:
        alternatives measured to pass on models that fail so (a quantized mode's)."""
        return None

    def missing_packages(self) -> list[str]:
        from timmx.environment import package_versions

        found = package_versions(self.requires)
        return [dist for dist in self.requires if dist not in found]

    def ensure_available(self) -> None:
        missing = self.missing_packages()
        if missing and self.isolated_only:
            raise BackendUnavailableError(
                f"the {self.name} backend runs only in its Docker image ({self.isolated_only}): "
                "add --isolated (TIMMX_ISOLATED=auto does so whenever a backend's packages are "
                "missing)"
            )
        if missing:
            raise BackendUnavailableError(
                f"the {self.name} backend needs {', '.join(missing)} here: "
                f"{self.install_hint}, or add --isolated to run it in its Docker image "
                "(TIMMX_ISOLATED=auto does so whenever a backend's packages are missing)"
            )

    @abstractmethod
    def export(self, ctx: ExportContext, options: Any) -> list[Path]:
        """Write the artifact (and any side files) at `ctx.artifact`; return every file written."""

    def load_runtime(self, artifact: Path, options: Any) -> Runtime | None:
        """Load the artifact in its own runtime; None where no runtime runs on this platform."""
        return None

    def may_lack_runtime(self, options: Any) -> bool:
        """Whether `load_runtime` may return None for these options on some platform. Only then
        is a verification `skipped` (the job did not ask for --no-verify) an honest outcome,
        which a host publishes from a container or a Ray node (see timmx.runners.accept)."""
        return False

    def inspect_artifact(self, artifact: Path, options: Any) -> dict[str, Any]:
        """Facts about the artifact for the report (ops, IO, compression); a `note` key, if
        present, explains what verification could not check."""
        return {}

    def verify_batch_sizes(self, job: ExportJob) -> list[int]:
        """Batch sizes the artifact must accept: the example's, and another when dynamic."""
        batch = job.input.batch_size
        if not job.input.dynamic_batch:
            return [batch]
        return [batch, 1 if batch > 1 else 3]
