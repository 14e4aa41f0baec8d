"""Core ML (.mlpackage, or .mlmodel for neural networks) through coremltools.

Core ML predicts only on Apple platforms. On macOS the artifact is verified with
`MLModel.predict`; elsewhere an ML program is evaluated with timmx's numpy reference of its ops
(timmx.mil_reference), read back from the saved package, and compared with PyTorch like every
other backend. Neural networks (the older format) get structural checks only off macOS.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from timmx.backends import register
from timmx.backends._coreml.targets import (
    COMPRESSION_MIN,
    MLPROGRAM_MIN,
    PER_BLOCK_MIN,
    SPEC_VERSION,
    Target,
    same_year,
)
from timmx.backends.base import (
    FP16,
    FP32,
    Backend,
    BackendOptions,
    ExportContext,
    Runtime,
    Tolerance,
)
from timmx.contract import ExportJob
from timmx.errors import ExportFailedError, InvalidInputError, first_line

PALETTE_BITS = (1, 2, 3, 4, 6, 8)

# Compressed weights: the error is the weights' rounding, checked relative to the output's
# scale. Measured on resnet18 at 64x64 with random weights and norms (the worst case: no
# structure for a table to keep), max error / max |output| and top-1 agreement on 16 inputs:
# int8 0.019 / 100% (0.020 with float16 compute), int4-linear per-block 0.28 / 88%, palettes of
# 8 bits 0.025 / 94%, 6 bits 0.079 / 88%, 4 bits 0.30 / 88%, 2 bits 0.82 / 88%. The bounds
# leave headroom; only int8 keeps a top-1 requirement: verification checks one or two inputs,
# and the random inputs it uses give low-margin predictions that a table may flip.
_COMPRESSED_RTOL = {8: 0.05, 6: 0.15, 4: 0.5, 3: 0.75, 2: 1.5, 1: 1.5}
DEFAULT_UPPER_BOUND = 64  # an mlprogram's flexible batch must be bounded


class CoremlOptions(BackendOptions):
    convert_to: Literal["mlprogram", "neuralnetwork"] = Field(
        "mlprogram",
        description="Model type: mlprogram (iOS15+, a .mlpackage) or neuralnetwork (older "
        "devices; .mlpackage or .mlmodel).",
    )
    compute_precision: Literal["float16", "float32"] | None = Field(
        None, description="mlprogram compute precision (default float16, Core ML's default)."
    )
    source: Literal["auto", "trace", "torch-export"] = Field(
        "auto",
        description="What coremltools converts: a TorchScript trace, a torch.export program, or "
        "auto (the trace, and torch.export where the trace fails; the report says which).",
    )
    batch_upper_bound: int | None = Field(
        None,
        ge=2,
        description=f"Largest batch a --dynamic-batch model accepts (default: "
        f"{DEFAULT_UPPER_BOUND} for an mlprogram, which must have one; any for neuralnetwork).",
    )
    minimum_deployment_target: Target | None = Field(
        None,
        description="Oldest OS the model must run on (default: coremltools' own; iOS16 for "
        "--int8/--int4/--palettize, iOS18 for --int4-linear).",
    )
    int8: bool = Field(False, description="Quantize weights to int8 (linear, per channel).")
    int4: bool = Field(
        False,
        description="4-bit k-means palettization: a table of 16 values per tensor (mlprogram, "
        "iOS16+); upstream timmx's --int4, the same as --palettize 4.",
    )
    int4_linear: bool = Field(
        False, description="Quantize weights to int4 in blocks of 32 (linear; mlprogram, iOS18+)."
    )
    palettize: int | None = Field(
        None,
        description="Palettize weights: a k-means table of 2^BITS values per tensor "
        "(BITS: 1, 2, 3, 4, 6 or 8; mlprogram).",
    )
    half: bool = Field(False, description="Store neuralnetwork weights in float16.")
    image_input: bool = Field(
        False,
        description="Take an image (Vision framework) instead of a tensor: 0-255 pixels, "
        "normalised with the model's mean/std by the input's scale and bias.",
    )
    labels: Path | None = Field(
        None,
        description="Class labels, one per line in class order: makes a classifier that "
        "returns the top label and each class's score (also --class-labels).",
        json_schema_extra={"aliases": ["class_labels"]},
    )
    verify_compute_units: Literal["cpu", "all", "cpu-gpu", "cpu-ne"] = Field(
        "cpu",
        description="macOS: the compute units Core ML verifies on (float16 results differ "
        "between the Neural Engine and the CPU); elsewhere unused.",
    )

    @field_validator("palettize")
    @classmethod
    def _bits(cls, value: int | None) -> int | None:
        if value is not None and value not in PALETTE_BITS:
            raise ValueError(f"must be one of {', '.join(map(str, PALETTE_BITS))}, got {value}")
        return value


@register
class CoremlBackend(Backend):
    name = "coreml"
    help = "Core ML (.mlpackage / .mlmodel), verified by evaluating the saved program."
    suffix = ".mlpackage"
    other_suffixes = (".mlmodel",)
    folder_suffixes = (".mlpackage",)
    noisy_loggers = ("coremltools",)
    requires = ("torch", "timm", "coremltools")
    supported = ("coremltools>=9.0",)  # the oldest tried or shipped
    Options = CoremlOptions

    @property
    def runtime_name(self) -> str:  # type: ignore[override]
        return "Core ML (MLModel.predict)" if _on_core_ml() else "timmx.mil_reference (numpy)"

    def owns_existing(self, path: Path) -> bool:
        """A .mlmodel file, or an .mlpackage folder: Manifest.json and its Data/ tree alone."""
        if not path.is_dir():
            return path.is_file()
        names = {p.name for p in path.iterdir()}
        return "Manifest.json" in names and names <= {"Manifest.json", "Data"}

    def default_suffix(self, options: CoremlOptions) -> str:
        return ".mlpackage" if options.convert_to == "mlprogram" else ".mlmodel"

    def check(self, job: ExportJob, options: CoremlOptions) -> None:
        _check_compression(options)
        _check_target(options)
        _check_input(job, options)
        if options.convert_to == "mlprogram" and job.output.endswith(".mlmodel"):
            raise InvalidInputError(
                "an mlprogram is saved as a .mlpackage (its weights live beside the program): "
                "use --output NAME.mlpackage, or --convert-to neuralnetwork for a .mlmodel"
            )

    def tolerance(self, options: CoremlOptions) -> Tolerance:
        bits = (
            8 if options.int8 else 4 if options.int4 or options.int4_linear else options.palettize
        )
        if bits is not None:
            top1 = 0.9 if options.int8 else None
            return Tolerance(atol=1e-2, rtol=_COMPRESSED_RTOL[bits], min_top1=top1)
        half = options.half or (
            options.convert_to == "mlprogram" and options.compute_precision != "float32"
        )
        if half or (options.image_input and _on_core_ml()):  # 8-bit pixels on macOS
            return FP16
        return FP32

    def fallback(self, options: CoremlOptions) -> tuple[CoremlOptions, str] | None:
        """float16 compute, the default, overflows or misses its bound on some models (large
        activations after reparameterization, large norm statistics): float32 then."""
        if options.convert_to != "mlprogram" or options.compute_precision is not None:
            return None
        return options.model_copy(update={"compute_precision": "float32"}), (
            "float16 compute failed verification, so this package computes in float32 "
            "(--compute-precision float16 insists on float16)"
        )

    def nonfinite_fix(self, options: CoremlOptions) -> str | None:
        if options.convert_to == "mlprogram" and options.compute_precision != "float32":
            return (
                "float16 overflowed (activations beyond 65504, common after reparameterization "
                "or with large norm statistics): export with --compute-precision float32"
            )
        return None

    def verify_batch_sizes(self, job: ExportJob) -> list[int]:
        batch = job.input.batch_size
        if not job.input.dynamic_batch:
            return [batch]
        upper = job.options.get("batch_upper_bound") or DEFAULT_UPPER_BOUND
        other = 1 if batch > 1 else min(3, upper)
        return [batch] if other == batch else [batch, other]

    def export(self, ctx: ExportContext, options: CoremlOptions) -> list[Path]:
        from timmx.backends._coreml.compress import compress
        from timmx.backends._coreml.convert import module_to_convert
        from timmx.backends._coreml.inspect import check_saved
        from timmx.backends._coreml.metadata import annotate
        from timmx.backends._coreml.plan import make_plan
        from timmx.backends._coreml.versions import import_coremltools

        ct, warning = import_coremltools()
        if warning:
            # Say it is verified only where numerics are compared: not a neuralnetwork off macOS.
            checked = options.convert_to == "mlprogram" or _on_core_ml()
            ctx.warn(warning + (" (this export is verified numerically)" if checked else ""))
        plan = make_plan(ctx, options)
        module = module_to_convert(ctx.model, ctx.timm_model, plan)
        mlmodel = _convert_from_a_source(ctx, ct, module, plan, options.source)
        mlmodel = compress(ct, mlmodel, plan)
        annotate(mlmodel, plan)
        mlmodel.save(str(ctx.artifact))
        check_saved(ctx.artifact, plan)
        return [ctx.artifact]

    def may_lack_runtime(self, options: CoremlOptions) -> bool:
        # Off macOS: no runtime for a neuralnetwork model, and an ML program runs only where
        # timmx's MIL evaluator knows every op.
        return True

    def load_runtime(self, artifact: Path, options: CoremlOptions) -> Runtime | None:
        from timmx.backends._coreml import runtime

        if _on_core_ml():
            return runtime.core_ml_runtime(
                artifact, options.image_input, options.verify_compute_units
            )
        if options.convert_to != "mlprogram":
            return None
        run, _ = runtime.reference_runtime(artifact, options.image_input)
        return run

    def inspect_artifact(self, artifact: Path, options: CoremlOptions) -> dict[str, Any]:
        from timmx.backends._coreml.inspect import describe

        details = describe(artifact)
        if options.labels is not None:
            from timmx.backends._coreml.inspect import read_spec
            from timmx.backends._coreml.runtime import class_labels

            details["classifier"]["labels"] = len(class_labels(artifact, read_spec(artifact)))
        details["note"] = _note(options, details)
        return details


def _convert_from_a_source(ctx: ExportContext, ct, module, plan, chosen: str):
    """Convert from the chosen frontend; with `auto`, from the TorchScript trace and, where
    that fails, from a torch.export program (the report's details say which one)."""
    from timmx.backends._coreml.convert import SOURCE_NAMES, convert, source_program

    sources = ["trace", "torch-export"] if chosen == "auto" else [chosen]
    failures: list[str] = []
    for source in sources:
        try:
            program = source_program(module, ctx.example_input, plan, source)
            mlmodel = convert(ct, program, plan, source, hint=len(sources) == 1)
        except Exception as exc:
            if len(sources) == 1:
                raise
            failures.append(f"{SOURCE_NAMES[source]}: {first_line(exc, 160)}")
            continue
        ctx.details["source"] = source
        if failures:
            ctx.warn(f"converted from a {SOURCE_NAMES[source]}; the {failures[0]}")
        return mlmodel
    raise ExportFailedError(
        f"coremltools could not convert {plan.model_name} from either frontend "
        f"({'; '.join(failures)}): export it to another format (onnx, litert); both Core ML "
        "formats read these frontends, so --convert-to does not help"
    )


def _on_core_ml() -> bool:
    """Core ML predictions need macOS and coremltools' native module."""
    if sys.platform != "darwin":
        return False
    try:
        from coremltools import libcoremlpython  # noqa: F401
    except ImportError:
        return False
    return True


def _note(options: CoremlOptions, details: dict[str, Any]) -> str:
    if _on_core_ml():
        units = options.verify_compute_units
        details["evaluator"] = f"Core ML (MLModel.predict, compute units: {units})"
        return f"verified with Core ML itself (MLModel.predict, compute units: {units})"
    if options.convert_to != "mlprogram":
        return (
            "Core ML cannot run off macOS and timmx's reference evaluator reads ML programs "
            "only: this neural network's inputs, outputs, layers and weight storage were "
            "checked, its numerics were not"
        )
    from timmx.mil_reference import supported_ops

    known = {*supported_ops(), "const"}
    unsupported = {op: n for op, n in sorted(details["ops"].items()) if op not in known}
    if unsupported:
        details["unsupported_ops"] = unsupported
        names = ", ".join(f"{name} (x{count})" for name, count in unsupported.items())
        return (
            f"numerics not checked: timmx's reference evaluator has no implementation of "
            f"{names}; inputs, outputs, ops and weight compression were checked"
        )
    details["evaluator"] = "timmx.mil_reference: the saved ML program run op by op in numpy"
    pixels = " (image input fed exact 0-255 pixel values)" if options.image_input else ""
    return (
        "Core ML cannot run off macOS: numerics were checked by evaluating the saved ML "
        f"program with timmx's numpy reference of its ops{pixels}, float16 results rounded "
        "to float16 after every op"
    )


def _check_compression(options: CoremlOptions) -> None:
    chosen = [
        flag
        for flag, on in (
            ("--int8", options.int8),
            ("--int4", options.int4),
            ("--int4-linear", options.int4_linear),
            ("--palettize", options.palettize is not None),
            ("--half", options.half),
        )
        if on
    ]
    if len(chosen) > 1:
        raise InvalidInputError(
            f"{' and '.join(chosen)} exclude each other: choose one weight compression"
        )
    if options.convert_to == "mlprogram":
        if options.half:
            raise InvalidInputError(
                "--half is for neuralnetwork weights: an mlprogram stores float16 weights with "
                "--compute-precision float16 (its default)"
            )
        return
    if options.compute_precision is not None:
        raise InvalidInputError(
            "--compute-precision applies to mlprogram only: a neuralnetwork computes in "
            "float32 (add --half for float16 weights)"
        )
    if options.int4_linear:
        raise InvalidInputError("--int4-linear (per-block) needs --convert-to mlprogram")
    if options.int4:
        raise InvalidInputError(
            "--int4 (4-bit k-means palettization) needs --convert-to mlprogram (coremltools' "
            "neural-network k-means quantizer fails with a TypeError)"
        )
    if options.palettize is not None:
        raise InvalidInputError(
            "--palettize needs --convert-to mlprogram (coremltools' neural-network k-means "
            "quantizer fails with a TypeError)"
        )


def _check_target(options: CoremlOptions) -> None:
    target = options.minimum_deployment_target
    if target is None:
        if options.palettize == 3:
            raise InvalidInputError(
                "--palettize 3 needs --minimum-deployment-target iOS18 (or macOS15...): older "
                "targets take tables of 2, 4, 16, 64 or 256 values"
            )
        return
    version = SPEC_VERSION[target]
    mlprogram = options.convert_to == "mlprogram"
    if mlprogram and version < MLPROGRAM_MIN:
        raise InvalidInputError(
            f"an mlprogram needs --minimum-deployment-target "
            f"{same_year(target, MLPROGRAM_MIN)} or later: use --convert-to neuralnetwork "
            f"for {target}"
        )
    if not mlprogram and version >= MLPROGRAM_MIN:
        raise InvalidInputError(
            f"coremltools makes no neuralnetwork for {target} (iOS15 and later take "
            "mlprogram): drop --convert-to neuralnetwork or choose an older target"
        )
    needs = (
        ("--int4-linear (per-block)", PER_BLOCK_MIN, options.int4_linear),
        ("--int4", COMPRESSION_MIN, options.int4),
        ("--palettize 3", PER_BLOCK_MIN, options.palettize == 3),
        ("--int8", COMPRESSION_MIN, options.int8 and mlprogram),
        ("--palettize", COMPRESSION_MIN, options.palettize is not None),
    )
    for flag, minimum, on in needs:
        if on and version < minimum:
            raise InvalidInputError(
                f"{flag} needs --minimum-deployment-target {same_year(target, minimum)} or "
                f"later, not {target}"
            )


def _check_input(job: ExportJob, options: CoremlOptions) -> None:
    if options.batch_upper_bound is not None:
        if not job.input.dynamic_batch:
            raise InvalidInputError("--batch-upper-bound needs --dynamic-batch")
        if job.input.batch_size > options.batch_upper_bound:
            raise InvalidInputError(
                f"--batch-size {job.input.batch_size} is above --batch-upper-bound "
                f"{options.batch_upper_bound}"
            )
    if not options.image_input:
        return
    if job.input.dynamic_batch or job.input.batch_size != 1:
        raise InvalidInputError(
            "--image-input takes one image at a time: drop --dynamic-batch and --batch-size"
        )
    if job.input.size is not None and job.input.size[0] not in (1, 3):
        raise InvalidInputError(
            f"--image-input needs 1 (grayscale) or 3 (RGB) channels, not {job.input.size[0]}"
        )
