"""torch.export (.pt2) and TorchScript (.pt) exports, checked in their own loaders."""

from __future__ import annotations

import torch

from tests.conftest import assert_matches, reference_model


def test_torch_export_dynamic_batch(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("efficientnet_b0", num_classes=10)
    result = cli(
        "export",
        "torch-export",
        "efficientnet_b0",
        "-c",
        ckpt,
        "--num-classes",
        10,
        "--input-size",
        3,
        64,
        64,
        "--batch-size",
        2,
        "--dynamic-batch",
        "-o",
        "m.pt2",
    )
    assert result.code == 0, result.err
    report = result.report(workdir / "m.pt2")
    assert [c["batch_size"] for c in report["verification"]["checks"]] == [2, 1]

    program = torch.export.load(workdir / "m.pt2").module()
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    expected = reference_model("efficientnet_b0", ckpt, num_classes=10)(x)
    assert_matches(program(x).detach(), expected.detach())


def test_torchscript_trace(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    result = cli(
        "export",
        "torchscript",
        "resnet18",
        "-c",
        ckpt,
        "--num-classes",
        10,
        "--input-size",
        3,
        64,
        64,
        "-o",
        "m.pt",
    )
    assert result.code == 0, result.err
    module = torch.jit.load(workdir / "m.pt")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    expected = reference_model("resnet18", ckpt, num_classes=10)(x)
    assert_matches(module(x).detach(), expected.detach())


def test_torchscript_script(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("resnet18")
    result = cli(
        "export", "torchscript", "resnet18", "-c", ckpt, "--input-size", 3, 32, 48,
        "--method", "script", "-o", "s.pt",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert result.report(workdir / "s.pt")["verification"]["status"] == "passed"
    scripted = torch.jit.load(str(workdir / "s.pt"))
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    expected = reference_model("resnet18", ckpt)(x).detach().numpy()
    assert_matches(scripted(x).detach().numpy(), expected)
