"""`timmx bench` in the toolchains' images: an ExecuTorch program (whose runtime this venv cannot
hold) is benched in its image, and `--isolated` moves an ONNX artifact there too; the figures
must be those of the same artifact run here, against the same eager model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.bench_digits import CLASSES, MODEL, SIZE, Digits, digits_fixture  # noqa: F401
from tests.isolated.helpers import build_image, run_containers

pytestmark = pytest.mark.isolated

RUNS = {"warmup": 1, "runs": 3}  # timings are not what these tests check


@pytest.fixture(scope="module")
def exported(docker_client, digits: Digits) -> dict[str, Path]:
    from timmx import export

    build_image("executorch")
    build_image("onnx")
    previous = Path.cwd()
    os.chdir(digits.checkpoint.parent)
    try:
        common = {"checkpoint": "digits.pth", "num_classes": CLASSES, "input_size": (3, SIZE, SIZE)}
        export("executorch", MODEL, output="isolated/digits.pte", isolated=True, **common)
        export("onnx", MODEL, output="isolated/digits.onnx", **common)
    finally:
        os.chdir(previous)
    folder = digits.checkpoint.parent / "isolated"
    return {"pte": folder / "digits.pte", "onnx": folder / "digits.onnx"}


def test_executorch_is_benched_in_its_image(docker_client, digits, exported) -> None:
    import timmx

    report = timmx.bench(exported["pte"], data=digits.test, limit=200, **RUNS)
    (row,) = report.rows
    assert row.backend == "executorch" and row.images == 200
    assert "executorch" in row.runtime.lower(), row.runtime
    assert row.eager_top1 >= 0.9  # the trained model
    assert abs(row.top1_delta) <= 0.01 and row.disagreement <= 0.01  # fp32: eager's classes
    assert row.latency_ms_p50 is not None and row.latency_ms_p50 > 0
    assert not run_containers(docker_client)  # the bench container removed itself


def test_isolated_gives_the_figures_of_the_same_artifact_here(docker_client, digits, exported):
    import timmx

    here = timmx.bench(exported["onnx"], data=digits.test, limit=200, **RUNS).rows[0]
    there = timmx.bench(exported["onnx"], data=digits.test, limit=200, isolated=True, **RUNS)
    (row,) = there.rows
    # One onnxruntime version in both: the same scores, so the same accuracy to the image.
    assert (row.top1, row.top5, row.disagreement) == (here.top1, here.top5, here.disagreement)
    assert row.eager_top1 == here.eager_top1
    assert np.isclose(row.top1_delta, here.top1_delta)
    leftovers = [p.name for p in exported["onnx"].parent.iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers  # the exchange folder is gone
