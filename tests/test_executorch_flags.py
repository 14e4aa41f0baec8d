"""ExecuTorch flag combinations are refused before anything heavy runs (no executorch needed)."""

from __future__ import annotations

import pytest

from tests.test_errors import assert_refused

SMALL = ("--input-size", 3, 32, 32)


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (("--dynamic-batch",), "--batch-size 2"),
        (("--mode", "int8", "--delegate", "portable", "--random-calibration"), "xnnpack"),
        (("--mode", "int8"), "--calibration-data"),
        (("--random-calibration",), "--mode int8"),
    ],
)
def test_bad_combinations(cli, workdir, flags, needle):
    assert_refused(cli("export", "executorch", "resnet18", *SMALL, *flags), needle)


def test_calibration_counts_need_data(cli, workdir):
    assert_refused(
        cli("export", "executorch", "resnet18", *SMALL, "--mode", "int8", "--calibration-steps", 4),
        "--calibration-data",
    )
