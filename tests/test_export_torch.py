"""torch.export (.pt2) with a dynamic batch, checked in its own loader. Both torch backends' plain
exports (torchscript trace and script too) are tests/test_conformance.py's."""

from __future__ import annotations

import torch

from tests.conftest import assert_matches, reference_model


def test_torch_export_dynamic_batch(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("efficientnet_b0", num_classes=10)
    result = cli(
        "export", "torch-export", "efficientnet_b0", "-c", ckpt, "--num-classes", 10,
        "--input-size", 3, 64, 64, "--batch-size", 2, "--dynamic-batch", "-o", "m.pt2",
    )  # fmt: skip
    assert result.code == 0, result.err
    report = result.report(workdir / "m.pt2")
    assert [c["batch_size"] for c in report["verification"]["checks"]] == [2, 1]

    program = torch.export.load(workdir / "m.pt2").module()
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    expected = reference_model("efficientnet_b0", ckpt, num_classes=10)(x)
    assert_matches(program(x).detach(), expected.detach())
