"""ExecuTorch exports, checked in the ExecuTorch runtime against PyTorch.

ExecuTorch links one exact torch release, so these run where it is installed (its image, or a
venv made for it); tests/isolated/ runs the same backend through its Docker image.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import assert_matches, reference_model

pytest.importorskip("executorch.runtime", reason="executorch is not installed in this environment")


def run_pte(path, x: torch.Tensor):
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")
    return method.execute([x])[0]


def test_xnnpack_fp32_matches_pytorch(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    result = cli(
        "export", "executorch", "resnet18", "-c", ckpt, "--num-classes", 10,
        "--input-size", 3, 64, 64, "-o", "m.pte",
    )  # fmt: skip
    assert result.code == 0, result.err
    details = result.report(workdir / "m.pte")["verification"]["details"]
    assert details["delegate"] == "xnnpack"
    assert details["delegated_subgraphs"] >= 1
    assert details["non_delegated_ops"] == {}

    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    expected = reference_model("resnet18", ckpt, num_classes=10)(x).detach()
    assert_matches(run_pte(workdir / "m.pte", x), expected)


def test_vit_with_dynamic_batch(cli, workdir):
    result = cli(
        "export", "executorch", "vit_tiny_patch16_224", "--model-kwarg", "img_size=32",
        "--input-size", 3, 32, 32, "--batch-size", 2, "--dynamic-batch", "-o", "vit.pte",
    )  # fmt: skip
    assert result.code == 0, result.err
    checks = result.report(workdir / "vit.pte")["verification"]["checks"]
    assert [c["batch_size"] for c in checks] == [2, 1]


def test_portable_kernels(cli, workdir):
    result = cli(
        "export", "executorch", "mobilenetv3_small_100", "--input-size", 3, 32, 32,
        "--delegate", "portable", "-o", "p.pte",
    )  # fmt: skip
    assert result.code == 0, result.err
    details = result.report(workdir / "p.pte")["verification"]["details"]
    assert details["delegated_subgraphs"] == 0
    assert any("convolution" in op for op in details["non_delegated_ops"])


def test_int8_with_random_calibration(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    result = cli(
        "export", "executorch", "resnet18", "-c", ckpt, "--num-classes", 10,
        "--input-size", 3, 64, 64, "--mode", "int8", "--random-calibration", "-o", "q.pte",
    )  # fmt: skip
    assert result.code == 0, result.err
    report = result.report(workdir / "q.pte")
    check = report["verification"]["checks"][0]
    assert check["max_abs_error"] > 0
    assert check["passed"]
    assert (workdir / "q.pte").stat().st_size < 0.4 * 44_000_000, "int8 weights expected"
