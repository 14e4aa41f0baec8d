"""LiteRT full int8 in its own image, the calibration tensor coming in through a read-only mount."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import reference_model, require
from tests.isolated.helpers import build_image

pytestmark = pytest.mark.isolated

SIZE = ("--input-size", "3", "32", "32")


@pytest.fixture(scope="module")
def litert_image(docker_client) -> float:
    return build_image("litert")


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    require("ai_edge_litert", "comparing on the host needs ai-edge-litert here")
    from tests.test_export_litert import run_tflite

    return run_tflite(path, x)


def test_isolated_int8_calibrated_through_the_mount(
    cli, workdir, make_checkpoint, litert_image, no_leftovers
):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    (workdir / "calib").mkdir()
    calib = workdir / "calib" / "calib.pt"
    torch.save(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(11)), calib)
    before = calib.read_bytes()
    result = cli(
        "export", "litert", "resnet18", "-c", ckpt, "--num-classes", 10, *SIZE, "--mode", "int8",
        "--calibration-data", "calib/calib.pt", "-o", "iso/q.tflite", "--isolated",
    )  # fmt: skip
    assert result.code == 0, result.err

    artifact = workdir / "iso" / "q.tflite"
    report = result.report(artifact)
    assert report["environment"]["runner"] == "docker"
    assert report["environment"]["image"].split("/")[-1].startswith("timmx-litert:")
    assert report["verification"]["status"] == "passed"
    assert report["verification"]["details"]["constant_types"]["int8"] >= 20
    assert report["job"]["calibration"]["path"] == "calib/calib.pt"  # the host's path
    assert report["warnings"] == []
    assert calib.read_bytes() == before
    assert sorted(p.name for p in (workdir / "iso").iterdir()) == ["q.tflite", "q.tflite.json"]
    assert artifact.stat().st_uid == os.getuid()

    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    expected = reference_model("resnet18", ckpt, num_classes=10)(x).detach().numpy()
    error = float(np.abs(_run(artifact, x.numpy()) - expected).max())
    assert error <= 0.1 * float(np.abs(expected).max()), error


def test_isolated_bad_calibration_names_the_host_path(cli, workdir, litert_image, no_leftovers):
    (workdir / "calib").mkdir()
    torch.save(torch.randn(4, 1, 32, 32), workdir / "calib" / "gray.pt")
    result = cli(
        "export", "litert", "resnet18", *SIZE, "--mode", "int8", "--calibration-data",
        "calib/gray.pt", "-o", "q.tflite", "--isolated",
    )  # fmt: skip
    assert result.code == 2
    error = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(error) == 1, result.err
    assert "calib/gray.pt" in error[0] and "in/calibration" not in error[0], error[0]
    assert "(N, 3, 32, 32) float32" in error[0]
    assert sorted(p.name for p in workdir.iterdir()) == ["calib"]
