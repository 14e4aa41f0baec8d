"""What every backend with a calibrated (static int8) mode shares, declared once: its options
(`CalibratedOptions`, `per_channel_field`), its rules and their messages
(`CalibratingBackend.check`: calibration data only for that mode, upstream's --mean/--std
without --normalize only where an image folder is read, --no-per-channel only with int8
weights), and the batches themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from pydantic import Field

from timmx.backends.base import Backend, BackendOptions, ExportContext
from timmx.contract import ExportJob
from timmx.errors import InvalidInputError

# The modes with int8 weights, the only ones whose weight scales --no-per-channel sets.
INT8_WEIGHT_MODES = ("int8", "dynamic-int8")

# --mean/--std without --normalize (upstream timmx's meaning on the backends that calibrate):
# how an image folder is normalised for calibration. Set by the job builder from those flags,
# not flags of their own.
CALIBRATION_MEAN = Field(
    None,
    description="--mean without --normalize: the mean a calibration image folder is "
    "normalised with (the graph is not normalised).",
    json_schema_extra={"flag": False},
)
CALIBRATION_STD = Field(
    None,
    description="--std without --normalize: as calibration_mean.",
    json_schema_extra={"flag": False},
)


def per_channel_field(note: str = "") -> Any:
    """The --per-channel/--no-per-channel option; `note` adds what the backend does otherwise."""
    return Field(
        True,
        description="int8 modes: weight scales per output channel (--no-per-channel: one per "
        "tensor)." + note,
    )


class CalibratedOptions(BackendOptions):
    """Options of a backend with a calibrated mode. Each backend declares its own `mode`."""

    calibration_mean: tuple[float, ...] | None = CALIBRATION_MEAN
    calibration_std: tuple[float, ...] | None = CALIBRATION_STD

    @property
    def resolved_mode(self) -> str:
        """The mode the export runs in (a backend whose `mode` may be unset says how)."""
        return self.mode  # type: ignore[attr-defined]


class CalibratingBackend(Backend):
    """A backend whose `calibrated_modes` read calibration data: the CLI adds the calibration
    flags, and `check` applies the rules every such backend shares."""

    Options: ClassVar[type[CalibratedOptions]] = CalibratedOptions
    uses_calibration = True
    calibrated_modes = ("int8",)

    def check(self, job: ExportJob, options: CalibratedOptions) -> None:
        mode = options.resolved_mode
        check_calibration(job, mode, self.calibrated_modes)
        check_calibration_stats(job, options, mode, self.calibrated_modes)
        if not getattr(options, "per_channel", True) and mode not in INT8_WEIGHT_MODES:
            raise InvalidInputError(
                f"--no-per-channel sets int8 weight scales (--mode int8 or dynamic-int8), "
                f"--mode {mode} has none: add one of those modes or drop it"
            )

    def calibration_batches(self, ctx: ExportContext, options: CalibratedOptions) -> list[Any]:
        """The calibration batches, an image folder normalised as the options say."""
        return calibration_batches(ctx, options.calibration_mean, options.calibration_std)


def int8_advice(what_passes: str) -> str:
    """A quantized artifact that failed verification: what passed on the models that fail so,
    measured by benchmarks/quantized_refusals.py (its table is in benchmarks/results/)."""
    return (
        "int8 loses too much on this model. On mobilenetv3 and mobilenetv4, which fail so, "
        f"{what_passes} passed, while 3x the calibration samples, dynamic-int8 and the other "
        "backend's int8 failed too (benchmarks/results/quantized_refusals.md)"
    )


def require_mode(flag: str, mode: str, wanted: str, reason: str) -> None:
    """A flag that only means something in one mode: refused in any other, saying why."""
    if mode != wanted:
        raise InvalidInputError(
            f"{flag} needs --mode {wanted} (--mode {mode} {reason}): add --mode {wanted} or "
            f"drop {flag}"
        )


def check_calibration(job: ExportJob, mode: str, calibrated_modes: Iterable[str]) -> None:
    """A mode that calibrates needs calibration data; every other mode refuses it."""
    calibration = job.calibration
    calibrated = tuple(calibrated_modes)
    wanted = " or ".join(f"--mode {m}" for m in calibrated)
    if mode in calibrated and calibration is None:
        raise InvalidInputError(
            f"--mode {mode} needs calibration: --calibration-data PATH (a torch-saved "
            "(N, C, H, W) tensor or an image folder), or --random-calibration to try it on noise"
        )
    if mode not in calibrated and calibration is not None:
        flag = "--calibration-data" if calibration.path else "--random-calibration"
        raise InvalidInputError(
            f"{flag} only applies to {wanted} (--mode {mode} needs no calibration): "
            f"add {wanted} or drop it"
        )


def check_calibration_stats(
    job: ExportJob, options: CalibratedOptions, mode: str, calibrated_modes: tuple[str, ...]
) -> None:
    """--mean/--std without --normalize preprocess a calibration image folder: refused where
    nothing is read from one."""
    if options.calibration_mean is None and options.calibration_std is None:
        return
    if mode not in calibrated_modes:
        modes = " or ".join(f"--mode {m}" for m in calibrated_modes)
        raise InvalidInputError(
            f"--mean/--std without --normalize set how calibration images are preprocessed "
            f"({modes}), and --mode {mode} calibrates nothing: add --normalize to bake "
            "them into the graph, or drop them"
        )
    if job.calibration is not None and job.calibration.random:
        raise InvalidInputError(
            "--mean/--std without --normalize preprocess a calibration image folder, and "
            "--random-calibration reads none: pass --calibration-data FOLDER, add --normalize "
            "to bake them into the graph, or drop them"
        )


def calibration_batches(
    ctx: ExportContext, mean: tuple[float, ...] | None, std: tuple[float, ...] | None
) -> list[Any]:
    """The calibration batches; an image folder normalised with `mean`/`std` where given
    (upstream timmx's --mean/--std without --normalize) instead of the model's own."""
    if mean is None and std is None:
        return ctx.calibration_batches()
    spec = ctx.job.calibration
    if spec is not None and spec.path and not (ctx.workspace / spec.path).is_dir():
        raise InvalidInputError(
            f"--calibration-data {spec.path} is a tensor, calibrated on as it is: --mean/--std "
            "without --normalize preprocess an image folder only; drop them, or add --normalize "
            "to bake them into the graph"
        )
    chans = ctx.summary.input_size[0]
    stats = {"mean": mean, "std": std}
    for name, values in stats.items():
        if values is not None and len(values) != chans and not (chans == 1 and len(values) == 3):
            raise InvalidInputError(
                f"--{name} has {len(values)} values but the model takes {chans} channels"
            )
    if std is not None and any(v == 0 for v in std):
        raise InvalidInputError("--std values must be non-zero")
    saved = ctx.data_config
    ctx.data_config = {**saved, **{k: v for k, v in stats.items() if v is not None}}
    try:
        return ctx.calibration_batches()
    finally:
        ctx.data_config = saved
