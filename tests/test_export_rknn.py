"""The rknn backend's refusals, here without rknn-toolkit2 (it runs only in its image): each bad
input is one line, exit code 2, nothing left behind. Exports and their numbers in the toolkit's
simulator are tests/isolated/test_isolated_rknn.py's and tests/test_conformance.py's."""

from __future__ import annotations

import pytest

from timmx.backends.rknn import PLATFORMS

ARGS = ("export", "rknn", "test_resnet", "--num-classes", 10, "--input-size", 3, 32, 48)


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        ((), ["--target-platform", *PLATFORMS]),
        (("--target-platform", "rk9999"), ["--target-platform", "rk3588", "rv1106b", "rk2118"]),
        (("--target-platform", "rk3588", "--mode", "int4"), ["--mode", "fp16", "int8"]),
        (("--target-platform", "rk3588", "--mode", "int8"), ["--mode int8 needs calibration"]),
        (
            ("--target-platform", "rk3588", "--random-calibration"),
            ["--random-calibration only applies to --mode int8"],
        ),
        (
            ("--target-platform", "rk3588", "--mode", "fp16", "--no-per-channel"),
            ["--no-per-channel"],
        ),
        (("--target-platform", "rk3588", "--dynamic-batch"), ["--dynamic-batch"]),
        (("--target-platform", "rk3588", "--opset", "20"), ["--opset"]),
    ],
    ids=[
        "no-platform",
        "unknown-platform",
        "int4",
        "int8-uncalibrated",
        "fp16-calibrated",
        "per-tensor-fp16",
        "dynamic-batch",
        "opset",
    ],
)
def test_bad_options_are_one_line(cli, workdir, flags, words):
    result = cli(*ARGS, *flags)
    assert result.code == 2, result.err
    assert result.err.count("\n") == 1, result.err
    for word in words:
        assert word in result.err, (word, result.err)
    assert list(workdir.iterdir()) == []


def test_in_process_export_is_refused_naming_isolated(cli, workdir, monkeypatch):
    """rknn-toolkit2 pins torch 2.4 and numpy 1.26: without --isolated the export says why it
    runs only in its image, before any model is built."""
    monkeypatch.delenv("TIMMX_ISOLATED", raising=False)
    result = cli(*ARGS, "--target-platform", "rk3588")
    assert result.code == 2, result.err
    assert result.err.count("\n") == 1, result.err
    assert "--isolated" in result.err and "torch<=2.4.0" in result.err
    assert list(workdir.iterdir()) == []
