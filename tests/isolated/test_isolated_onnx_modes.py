"""ONNX static int8 in its own image: calibrated on a tensor that comes in through a read-only
mount, quantized with onnxruntime's temporary models kept in the (writable) staging folder, and
run here in the host's onnxruntime against the checkpoint in a fresh timm model."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tests.conftest import reference_model
from tests.report_files import assert_report_lists_the_files

pytestmark = pytest.mark.isolated

SIZE = 32


def test_isolated_int8_matches_pytorch_in_host_onnxruntime(
    cli, workdir, make_checkpoint, images, no_leftovers
):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    (workdir / "calib").mkdir()
    calib = workdir / "calib" / "calib.pt"
    data = torch.randn(80, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(11))
    torch.save(data, calib)
    before = calib.read_bytes()
    result = cli(
        "export", "onnx", "resnet18", "-c", ckpt, "--num-classes", 10,
        "--input-size", 3, SIZE, SIZE, "--mode", "int8", "--calibration-data", "calib/calib.pt",
        "-o", "iso/q.onnx", "--isolated",
    )  # fmt: skip
    assert result.code == 0, result.err

    artifact = workdir / "iso" / "q.onnx"
    report = assert_report_lists_the_files(artifact)
    assert report["environment"]["runner"] == "docker"
    assert report["environment"]["image"].split("/")[-1].startswith("timmx-onnx:")
    assert report["job"]["calibration"]["path"] == "calib/calib.pt"  # the host's path
    assert report["job"]["options"]["mode"] == "int8"
    verification = report["verification"]
    assert verification["status"] == "passed"
    assert verification["inputs"] == "held-out calibration samples (16)"
    details = verification["details"]
    assert details["quant_pre_process"] == "applied"
    assert details["weight_scales"] == {"per_channel": 21}
    assert details["constant_types"]["int8"] >= 21
    assert report["warnings"] == []
    assert calib.read_bytes() == before
    # No scratch folder of onnxruntime's temporary models is left beside the artifact.
    assert sorted(p.name for p in (workdir / "iso").iterdir()) == ["q.onnx", "q.onnx.json"]
    assert artifact.stat().st_uid == os.getuid()

    ops = {node.op_type for node in onnx.load(str(artifact)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops

    held_out = data[64:]
    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    actual = np.concatenate([session.run(None, {name: x[None].numpy()})[0] for x in held_out])
    with torch.no_grad():
        expected = reference_model("resnet18", ckpt, num_classes=10)(held_out).numpy()
    error = float(np.abs(actual - expected).max())
    assert error <= 0.1 * float(np.abs(expected).max()), error
    assert np.mean(actual.argmax(-1) == expected.argmax(-1)) >= 0.8
