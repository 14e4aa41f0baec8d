"""OpenVINO IR (.xml + .bin) through openvino.convert_model, fp32, fp16 weights or NNCF int8,
verified in OpenVINO's CPU plugin.

The CPU plugin chooses its own inference precision unless told (INFERENCE_PRECISION_HINT: f32
on most x86, bf16 on AVX512-BF16/AMX x86, f16 on ARM), and it ignores a hint stored in the IR.
Verification compiles the IR at f32, the precision its numbers are judged at; the platform's
default hint is run too, and the report says whether it matches as well, and how to load the IR
at f32 where it does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from timmx.backends import register
from timmx.backends._calibrating import CalibratedOptions, CalibratingBackend, int8_advice
from timmx.backends.base import FP32, INT8, ExportContext, Runtime, Tolerance
from timmx.contract import ExportJob
from timmx.errors import ExportFailedError, InvalidInputError, first_line

Mode = Literal["fp32", "fp16", "int8"]
DEFAULT_MODE = "fp16"  # upstream timmx's default: weights compressed to fp16 in the saved IR

# Tolerances fit for each mode (relative to max |reference|), judged at INFERENCE_PRECISION_HINT
# f32. Measured on resnet18, mobilenetv3_small_100, efficientnet_b0 and vit_tiny (img_size=64)
# at 64x64, 1000 classes, random weights, randomised norms, max error over the output's scale:
# fp32 <= 2e-6; fp16 weights 3.9e-4 to 9.7e-4, top-1 100% on 16 inputs (litert's fp16 bound
# leaves 10x headroom); int8 on 16 held-out random-calibration samples 2.0-7.4% for the three
# convolutional nets with top-1 100%, vit_tiny (NNCF's transformer settings) 13% with top-1 81%
# at 10 classes but 16% / 69% at 1000, where it fails INT8: random weights give near-tied
# logits, and SmoothQuant (4.9% / 84% without it) suits real weights' outlier channels better
# than random ones. At the bf16 default of an AMX CPU the fp32 and fp16 IRs are 0.5-1.3% off.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": FP32,
    "fp16": Tolerance(atol=1e-2, rtol=1e-2, min_top1=0.9),
    "int8": INT8,
}


class OpenVINOOptions(CalibratedOptions):
    mode: Mode | None = Field(
        None,
        description="Precision: fp32; fp16 (the default: weights stored as fp16); int8 "
        "(NNCF post-training quantization of weights and activations, needs calibration).",
    )
    fp16: bool | None = Field(
        None,
        description="Upstream timmx's flag: --fp16 is --mode fp16, --no-fp16 is --mode fp32.",
    )

    @property
    def resolved_mode(self) -> str:
        """--mode, else what upstream's --fp16/--no-fp16 means, else the default."""
        if self.mode is not None:
            return self.mode
        if self.fp16 is not None:
            return "fp16" if self.fp16 else "fp32"
        return DEFAULT_MODE


@register
class OpenVINOBackend(CalibratingBackend):
    name = "openvino"
    help = "OpenVINO IR (.xml + .bin), fp32, fp16 weights or NNCF int8, verified in OpenVINO."
    suffix = ".xml"
    requires = ("torch", "timm", "openvino", "nncf")
    supported = ("openvino>=2026.4", "nncf>=3.4")  # the oldest tried or shipped
    Options = OpenVINOOptions
    runtime_name = "OpenVINO CPU (INFERENCE_PRECISION_HINT f32)"

    def owns_existing(self, path: Path) -> bool:
        """An IR's .xml (its root element is `<net>`), not any XML file such as a pom.xml."""
        if not path.is_file():
            return False
        with path.open("rb") as handle:
            head = handle.read(4096)
        return b"<net " in head or b"<net>" in head

    def side_files(self, artifact_name: str) -> tuple[str, ...]:
        return (Path(artifact_name).stem + ".bin",)  # NAME.xml's weights: NAME.bin

    def check(self, job: ExportJob, options: OpenVINOOptions) -> None:
        if options.fp16 is not None and options.mode is not None:
            implied = "fp16" if options.fp16 else "fp32"
            if options.mode != implied:
                flag = "--fp16" if options.fp16 else "--no-fp16"
                raise InvalidInputError(
                    f"{flag} (upstream timmx's flag) means --mode {implied}, which contradicts "
                    f"--mode {options.mode}: give only one"
                )
        super().check(job, options)

    def tolerance(self, options: OpenVINOOptions) -> Tolerance:
        return TOLERANCES[options.resolved_mode]

    def fallback(self, options: OpenVINOOptions) -> tuple[OpenVINOOptions, str] | None:
        """fp16 weights, the default, may lose a model (weights beyond fp16's range or
        precision): float32 weights then."""
        if options.mode is not None or options.fp16 is not None:
            return None
        return options.model_copy(update={"mode": "fp32"}), (
            "fp16 weights failed verification, so this IR keeps float32 weights (--mode fp16 "
            "insists on fp16)"
        )

    def nonfinite_fix(self, options: OpenVINOOptions) -> str | None:
        if options.resolved_mode == "fp16":
            return "fp16 weights overflowed: export with --mode fp32"
        return None

    def verification_advice(self, options: OpenVINOOptions) -> str | None:
        if options.resolved_mode != "int8":
            return None
        return int8_advice("--mode fp16 (the default: no calibration) or ONNX's --mode fp16")

    def export(self, ctx: ExportContext, options: OpenVINOOptions) -> list[Path]:
        from timmx.backends._openvino import convert

        mode = options.resolved_mode
        batches = None
        if mode == "int8":  # validated before anything is converted
            batches = self.calibration_batches(ctx, options)
        model, example = ctx.model.cpu().eval(), ctx.example_input.cpu()
        ov_model = convert.convert(model, example, ctx.job.input.dynamic_batch)
        if batches is not None:
            ov_model, ctx.details["nncf_model_type"] = convert.quantize(ov_model, batches)
        # int8 keeps its remaining float constants (scales, biases) in float32.
        weights = convert.save(
            ov_model, ctx.artifact, ctx.job.model.name, compress_to_fp16=mode == "fp16"
        )
        _check_precision(ctx.artifact, mode)
        if ctx.job.verify.enabled:
            self._check_default_hint(ctx, options)
        return [ctx.artifact, weights]

    def load_runtime(self, artifact: Path, options: OpenVINOOptions) -> Runtime:
        from timmx.backends._openvino.runtime import VERIFIED_HINT, cpu_runtime

        return cpu_runtime(artifact, VERIFIED_HINT)

    def inspect_artifact(self, artifact: Path, options: OpenVINOOptions) -> dict[str, Any]:
        from timmx.backends._openvino.runtime import VERIFIED_HINT, default_hint, describe

        facts = {"mode": options.resolved_mode, **describe(artifact)}
        if options.resolved_mode != "int8":
            del facts["fake_quantize"], facts["fake_convert"]
        facts["precision_hints"] = {"verified": VERIFIED_HINT, "platform_default": default_hint()}
        return facts

    def _check_default_hint(self, ctx: ExportContext, options: OpenVINOOptions) -> None:
        """Run the IR as it loads without a hint, on the inputs verification uses, against the
        same reference and tolerance; the result goes into the report (details and note), and
        a warning says how to load the IR where only f32 matches."""
        from timmx.backends._openvino.runtime import LOAD_F32, VERIFIED_HINT, cpu_runtime
        from timmx.backends._openvino.runtime import default_hint as platform_hint
        from timmx.verification import effective_tolerance, verify

        hint = platform_hint()
        if hint == VERIFIED_HINT:
            ctx.details["default_hint_check"] = {"hint": hint, "status": "same as verified"}
            ctx.details["note"] = (
                f"verified at INFERENCE_PRECISION_HINT {VERIFIED_HINT}, which is also this CPU's "
                "default: loaded without a hint, the IR computes as verified"
            )
            return
        try:
            result = verify(
                ctx.job,
                ctx.model,
                cpu_runtime(ctx.artifact, hint=None),
                f"OpenVINO CPU (default INFERENCE_PRECISION_HINT {hint})",
                ctx.summary.input_size,
                self.verify_batch_sizes(ctx.job),
                effective_tolerance(self.tolerance(options), ctx.job),
                samples=ctx.verification_inputs,
                samples_label=ctx.verification_label,
            )
        except Exception as exc:  # the authoritative f32 verification still decides
            ctx.details["default_hint_check"] = {"hint": hint, "status": "error"}
            ctx.details["note"] = (
                f"verified at INFERENCE_PRECISION_HINT {VERIFIED_HINT}; at this CPU's default, "
                f"{hint}, the IR failed to run ({first_line(exc, 160)}): load it with {LOAD_F32}"
            )
            ctx.warn(ctx.details["note"])
            return
        worst = {
            "max_abs_error": result.worst("max_abs_error"),
            "max_rel_error": result.worst("max_rel_error"),
            "top1_agreement": result.worst("top1_agreement"),
        }
        ctx.details["default_hint_check"] = {"hint": hint, "status": result.status, **worst}
        if result.status == "passed":
            ctx.details["note"] = (
                f"verified at INFERENCE_PRECISION_HINT {VERIFIED_HINT}; this CPU's default, "
                f"{hint}, matches PyTorch too (max rel error {worst['max_rel_error']:.2g})"
            )
            return
        ctx.details["note"] = (
            f"matches PyTorch only at INFERENCE_PRECISION_HINT {VERIFIED_HINT}: at this CPU's "
            f"default, {hint}, it misses the --mode {options.resolved_mode} tolerance (max rel "
            f"error {worst['max_rel_error']:.2g}, top-1 agreement {worst['top1_agreement']:.0%}); "
            f"load it with {LOAD_F32}"
        )
        ctx.warn(ctx.details["note"])


def _check_precision(artifact: Path, mode: str) -> None:
    """A mode that silently kept float32 weights, or int8 without quantize ops, is a failed
    export, not a success."""
    from timmx.backends._openvino.runtime import describe

    if mode == "fp32":
        return
    facts = describe(artifact)
    if mode == "fp16" and not facts["constant_types"].get("f16"):
        raise ExportFailedError(
            f"OpenVINO stored no fp16 constants for --mode fp16 "
            f"(constants: {facts['constant_types'] or 'none'}): export with --mode fp32"
        )
    if mode == "int8" and not (facts["fake_quantize"] or facts["fake_convert"]):
        raise ExportFailedError(
            "NNCF inserted no FakeQuantize ops for --mode int8: this model's ops may not be "
            "quantizable there; export with --mode fp16"
        )
