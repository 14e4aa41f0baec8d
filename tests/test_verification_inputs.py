"""Quantized exports are verified on the data they were calibrated for, and the report says on
what: held-out calibration samples, fresh random draws, or seeded noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import reference_model
from tests.test_errors import assert_refused
from tests.test_export_litert import run_tflite

SMALL = ("--input-size", 3, 48, 48)


def int8(cli, ckpt, *flags):
    return cli(
        "export", "litert", "resnet18", "-c", ckpt, "--num-classes", 10, *SMALL,
        "--mode", "int8", "-o", "q.tflite", *flags,
    )  # fmt: skip


def test_pixels_in_0_1_calibrate_and_verify_on_held_out_samples(cli, workdir, make_checkpoint):
    """The issue's case: a model fed [0, 1] pixels, calibrated on them, was refused (0.806)."""
    ckpt = make_checkpoint("resnet18", num_classes=10)
    data = torch.rand(80, 3, 48, 48, generator=torch.Generator().manual_seed(5))
    torch.save(data, workdir / "calib.pt")
    result = int8(cli, ckpt, "--calibration-data", "calib.pt")
    assert result.code == 0, result.err
    verification = result.report(workdir / "q.tflite")["verification"]
    assert verification["inputs"] == "held-out calibration samples (16)"  # the last fifth
    assert verification["min_top1"] == 0.8 and verification["checks"][0]["top1_agreement"] >= 0.8

    # Independently: the held-out samples (never calibrated on) through the artifact.
    held = data[64:]
    expected = reference_model("resnet18", ckpt, num_classes=10)(held).detach().numpy()
    actual = run_tflite(workdir / "q.tflite", held.numpy())
    scale = float(np.abs(expected).max())
    assert float(np.abs(actual - expected).max()) <= 0.15 * scale
    assert float(np.mean(actual.argmax(-1) == expected.argmax(-1))) >= 0.8


def test_samples_past_the_limit_are_held_out(cli, workdir, make_checkpoint):
    torch.save(torch.randn(20, 3, 48, 48), workdir / "calib.pt")
    ckpt = make_checkpoint("resnet18", num_classes=10)
    result = int8(cli, ckpt, "--calibration-data", "calib.pt", "--calibration-samples", 12)
    assert result.code == 0, result.err
    report = result.report(workdir / "q.tflite")
    assert report["verification"]["inputs"] == (
        "held-out calibration samples (8); top-1 not required with fewer than 16"
    )
    assert report["verification"]["min_top1"] is None  # too few for top-1 to mean much


def test_too_few_samples_verify_on_the_calibration_set_and_say_so(cli, workdir, make_checkpoint):
    torch.save(torch.randn(1, 3, 48, 48), workdir / "calib.pt")
    result = int8(
        cli, make_checkpoint("resnet18", num_classes=10), "--calibration-data", "calib.pt"
    )
    assert result.code == 0, result.err
    inputs = result.report(workdir / "q.tflite")["verification"]["inputs"]
    assert inputs == (
        "the calibration samples themselves (1, too few to hold out); "
        "top-1 not required with fewer than 16"
    )


def test_random_calibration_verifies_on_fresh_draws(cli, workdir, make_checkpoint):
    result = int8(cli, make_checkpoint("resnet18", num_classes=10), "--random-calibration")
    assert result.code == 0, result.err
    inputs = result.report(workdir / "q.tflite")["verification"]["inputs"]
    assert inputs == "fresh random draws like the calibration's (16)"


@pytest.mark.parametrize(
    ("flags", "inputs"),
    [
        ((), "seeded normal N(0, 1)"),
        (("--normalize",), "seeded uniform [0, 1]"),
        (("--mode", "dynamic-int8"), "seeded normal N(0, 1) (16)"),
    ],
)
def test_the_report_names_the_inputs(cli, workdir, make_checkpoint, flags, inputs):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    result = cli("export", "litert", "resnet18", "-c", ckpt, "--num-classes", 10, *SMALL, *flags)
    assert result.code == 0, result.err
    verification = result.report(workdir / "resnet18.tflite")["verification"]
    assert verification["inputs"] == inputs


def test_top1_below_the_threshold_is_a_failure_that_states_both_bounds():
    from timmx.backends.base import INT8
    from timmx.contract import Verification
    from timmx.verification import compare, describe_failure

    reference = np.tile(np.eye(10, dtype=np.float32)[:4] * 0.02, (2, 1))  # 8 samples
    actual = np.roll(reference, 1, axis=-1)  # small errors, every class wrong
    check = compare(reference, actual, INT8, batch_size=1)
    assert check.top1_agreement == 0.0 and check.max_abs_error <= INT8.atol
    assert not check.passed
    message = describe_failure(
        Verification(
            status="failed",
            runtime="r",
            inputs="held-out calibration samples (8)",
            atol=INT8.atol,
            rtol=INT8.rtol,
            min_top1=INT8.min_top1,
            checks=[check],
        )
    )
    assert "top-1 >= 80%" in message and "on held-out calibration samples (8)" in message


def test_refusal_names_the_inputs(cli, workdir, make_checkpoint):
    torch.save(torch.randn(80, 3, 48, 48), workdir / "calib.pt")
    result = int8(
        cli, make_checkpoint("resnet18", num_classes=10), "--calibration-data", "calib.pt",
        "--atol", 0, "--rtol", 0,
    )  # fmt: skip
    assert_refused(result, "on held-out calibration samples (16)", "top-1 >= 80%")
