"""Compare an artifact's outputs with PyTorch eager on fixed, seeded inputs."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from timmx.backends.base import Runtime, Tolerance
from timmx.contract import Verification, VerificationCheck

if TYPE_CHECKING:
    import torch
    from torch import nn

    from timmx.contract import ExportJob


def effective_tolerance(tolerance: Tolerance, job: ExportJob) -> Tolerance:
    """The backend's tolerance for its precision, with the job's --atol/--rtol overrides."""
    overrides = {"atol": job.verify.atol, "rtol": job.verify.rtol}
    return replace(tolerance, **{k: v for k, v in overrides.items() if v is not None})


def compare(
    reference: np.ndarray, actual: np.ndarray, tolerance: Tolerance, batch_size: int
) -> VerificationCheck:
    reference = np.asarray(reference, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64).reshape(reference.shape)
    if not np.all(np.isfinite(actual)):
        max_abs = float("inf")
    else:
        max_abs = float(np.max(np.abs(actual - reference))) if reference.size else 0.0
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    # Relative to the output's scale: elementwise ratios explode near zero logits.
    max_rel = max_abs / scale if scale > 0 else max_abs
    top1 = 1.0
    if reference.ndim >= 2 and reference.shape[-1] > 1:
        ref_top = reference.reshape(-1, reference.shape[-1]).argmax(-1)
        act_top = actual.reshape(-1, actual.shape[-1]).argmax(-1)
        top1 = float(np.mean(ref_top == act_top))
    passed = max_abs <= tolerance.atol + tolerance.rtol * scale
    if tolerance.min_top1 is not None:
        passed = passed and top1 >= tolerance.min_top1
    return VerificationCheck(
        batch_size=batch_size,
        max_abs_error=max_abs,
        max_rel_error=max_rel,
        top1_agreement=top1,
        passed=passed,
    )


def verify(
    job: ExportJob,
    module: nn.Module,
    runtime: Runtime,
    runtime_name: str,
    input_size: tuple[int, ...],
    batch_sizes: list[int],
    tolerance: Tolerance,
    known: dict[tuple[int, int], torch.Tensor] | None = None,
    samples: torch.Tensor | None = None,
    samples_label: str | None = None,
) -> Verification:
    """Run the artifact and `module` on the same inputs, one check per batch size: `samples`
    (e.g. held-out calibration data) in chunks of that batch size where there are enough, else
    seeded inputs like the example's. `known` holds outputs of `module` already computed for
    seeded inputs, by (seed, batch): they are not computed again."""
    import torch

    device = next(iter(module.buffers()), next(module.parameters())).device
    known = known or {}
    if samples is None and tolerance.samples > 1:  # seeded inputs, enough for top-1 to count
        batch = batch_sizes[0]
        count = -(-tolerance.samples // batch) * batch
        samples = _seeded(job, input_size, job.verify.seed, count)
        kind = "uniform [0, 1]" if job.preprocess.normalize else "normal N(0, 1)"
        samples_label = f"seeded {kind} ({count})"
    checks = []
    used_samples = False
    label = samples_label
    count = len(_chunks(samples, batch_sizes[0])) * batch_sizes[0]
    if tolerance.min_top1 is not None and 0 < count < tolerance.samples:
        # Top-1 on a handful of samples is mostly chance (one near-tie flips it): the error
        # bound still applies, and the report says why top-1 was not required.
        tolerance = replace(tolerance, min_top1=None)
        label = f"{samples_label}; top-1 not required with fewer than {tolerance.samples}"
    for i, batch in enumerate(batch_sizes):
        chunks = _chunks(samples, batch)
        if chunks:
            used_samples = True
        else:
            chunks = [_seeded(job, input_size, job.verify.seed + i, batch)]
        references, actuals = [], []
        for x in chunks:
            reference_out = known.get((job.verify.seed + i, batch)) if samples is None else None
            if reference_out is None:
                with torch.inference_mode():
                    reference_out = module(x.to(device))
            references.append(reference_out.float().cpu().numpy())
            actuals.append(np.asarray(runtime(x.numpy())).reshape(references[-1].shape))
        checks.append(
            compare(np.concatenate(references), np.concatenate(actuals), tolerance, batch)
        )
    seeded = "seeded uniform [0, 1]" if job.preprocess.normalize else "seeded normal N(0, 1)"
    return Verification(
        status="passed" if all(c.passed for c in checks) else "failed",
        runtime=runtime_name,
        inputs=label if used_samples else seeded,
        atol=tolerance.atol,
        rtol=tolerance.rtol,
        min_top1=tolerance.min_top1,
        checks=checks,
    )


def _chunks(samples: torch.Tensor | None, batch: int) -> list[torch.Tensor]:
    """`samples` as whole batches of `batch` (none when there are too few)."""
    if samples is None:
        return []
    count = len(samples) // batch
    return [samples[i * batch : (i + 1) * batch].contiguous() for i in range(count)]


def _seeded(job: ExportJob, input_size: tuple[int, ...], seed: int, batch: int) -> torch.Tensor:
    from timmx.modeling import make_input

    return make_input(job, input_size, seed=seed, batch=batch)


def describe_failure(
    result: Verification, nonfinite_fix: str | None = None, advice: str | None = None
) -> str:
    """One line for a failed verification. Outputs that are not finite (inf: an overflow) get
    the fix the backend names, not a tolerance that cannot help; `advice` (the backend's
    alternatives that pass, e.g. for a quantized mode) comes before loosening the tolerance."""
    failed = [c for c in result.checks if not c.passed] or result.checks
    worst = max(failed, key=lambda c: c.max_abs_error)
    on = f" on {result.inputs}" if result.inputs else ""
    if not np.isfinite(worst.max_abs_error):
        fix = nonfinite_fix or "check the export's precision; no tolerance can accept them"
        return (
            f"verification failed in {result.runtime}{on} (batch {worst.batch_size}): the "
            f"artifact's outputs are not finite (inf or NaN): {fix}. No artifact was written"
        )
    tol = f"atol {result.atol:g} + rtol {result.rtol:g} x max|reference|"
    if result.min_top1 is not None:
        tol += f", top-1 >= {result.min_top1:.0%}"
    return (
        f"verification failed in {result.runtime}{on} (batch {worst.batch_size}): max abs error "
        f"{worst.max_abs_error:.3g}, max rel error {worst.max_rel_error:.3g}, top-1 agreement "
        f"{worst.top1_agreement:.0%}; tolerance {tol}. No artifact was written: "
        + (f"{advice}; else " if advice else "")
        + "loosen with --atol/--rtol if this is expected, or --no-verify"
    )
