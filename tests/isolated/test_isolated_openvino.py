"""OpenVINO int8 in its own image (NNCF calibrating inside it), the IR checked on the host."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests.conftest import reference_model, require
from tests.isolated.helpers import build_image
from tests.report_files import assert_report_lists_the_files

pytestmark = pytest.mark.isolated

SIZE = ("--input-size", "3", "32", "32")


@pytest.fixture(scope="module")
def openvino_image(docker_client) -> float:
    return build_image("openvino")


def _run(path, x: np.ndarray) -> np.ndarray:
    """The IR on this host's OpenVINO at INFERENCE_PRECISION_HINT f32."""
    require("openvino", "comparing on the host needs openvino here")
    from tests.test_export_openvino import run_ir

    return run_ir(path, x)


def test_isolated_int8_matches_pytorch_on_the_host(
    cli, workdir, make_checkpoint, openvino_image, no_leftovers
):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    result = cli(
        "export", "openvino", "resnet18", "-c", ckpt, "--num-classes", 10, *SIZE, "--mode",
        "int8", "--random-calibration", "--calibration-steps", 8, "-o", "iso/q.xml", "--isolated",
    )  # fmt: skip
    assert result.code == 0, result.err

    artifact = workdir / "iso" / "q.xml"
    report = assert_report_lists_the_files(artifact)
    assert report["status"] == "success"
    assert report["environment"]["runner"] == "docker"
    assert report["environment"]["image"].split("/")[-1].startswith("timmx-openvino:")
    assert {"openvino", "nncf"} <= set(report["environment"]["packages"])
    verification = report["verification"]
    assert verification["status"] == "passed"
    assert verification["runtime"] == "OpenVINO CPU (INFERENCE_PRECISION_HINT f32)"
    assert verification["inputs"].startswith("fresh random draws like the calibration's")
    details = verification["details"]
    assert details["mode"] == "int8" and details["fake_quantize"] >= 20
    assert details["constant_types"]["i8"] >= 20
    assert details["default_hint_check"]["hint"] == details["precision_hints"]["platform_default"]
    assert sorted(a["path"] for a in report["artifacts"]) == ["q.bin", "q.xml"]
    assert sorted(p.name for p in (workdir / "iso").iterdir()) == ["q.bin", "q.xml", "q.xml.json"]
    assert artifact.stat().st_uid == os.getuid()

    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    expected = reference_model("resnet18", ckpt, num_classes=10)(x).detach().numpy()
    actual = _run(artifact, x.numpy())
    error = float(np.abs(actual - expected).max())
    assert error <= 0.1 * float(np.abs(expected).max()), error
    assert np.mean(actual.argmax(-1) == expected.argmax(-1)) >= 0.75
