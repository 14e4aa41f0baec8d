"""`timmx build` with the build issue's file as written: in-process and isolated jobs mixed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.builds import ONNX_AND_TORCH_EXPORT, build_file, write_project
from tests.conftest import assert_matches, reference_model
from tests.isolated.helpers import build_image
from tests.test_export_onnx import run_onnx

pytestmark = pytest.mark.isolated

# The build issue's file: two models, two in-process targets and an isolated int8 one.
ISSUE_FILE = build_file(
    224,
    sizes={"mobilenetv3_small_100": (160, 160)},
    targets=ONNX_AND_TORCH_EXPORT
    + '\n[[targets]]\nbackend = "litert"\nmode = "int8"\ncalibration-data = "calib.pt"\n'
    + "isolated = true\n",
)


def test_the_issues_build_file_as_written(
    cli, workdir, make_checkpoint, docker_client, no_leftovers
):
    from tests.test_export_litert import run_tflite

    build_image("litert")
    write_project(workdir, make_checkpoint, ISSUE_FILE)
    calib = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    torch.save(calib, workdir / "calib.pt")

    result = cli("build", "--jobs", 2)
    assert result.code == 0, result.err
    jobs = json.loads((workdir / "dist/timmx-build.json").read_text())["jobs"]
    assert len(jobs) == 6 and all(j["verification"] == "passed" for j in jobs.values())
    lite = jobs["resnet18/litert"]
    assert lite["image"].startswith("timmx-litert") and lite["image_id"]
    assert jobs["resnet18/onnx"]["image"] is None  # in-process

    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    expected = reference_model("resnet18", workdir / "ckpt/resnet18.pth", num_classes=10)(x)
    expected = expected.detach().numpy()
    actual = run_tflite(workdir / "dist/resnet18/litert/resnet18.tflite", x.numpy())
    assert float(np.abs(actual - expected).max()) <= 0.15 * float(np.abs(expected).max())
    assert_matches(run_onnx(workdir / "dist/resnet18/onnx/resnet18.onnx", x.numpy()), expected)

    # mobilenetv3 is exported at 160: the 224-pixel calibration set was resized for it
    report = workdir / "dist/mobilenetv3_small_100/litert/mobilenetv3_small_100.tflite.json"
    warnings = json.loads(report.read_text())["warnings"]
    assert any("resized" in w and "160x160" in w for w in warnings), warnings

    again = cli("build", "--jobs", 2)
    assert again.code == 0 and again.out.count("cached") == 6, again.out
    assert cli("build", "--check").code == 0
