"""ONNX exports of real timm models, checked in onnxruntime against PyTorch."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.conftest import assert_matches, reference_model


def run_onnx(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize(
    ("model", "size", "kwargs"),
    [
        ("resnet18", 64, {}),
        ("mobilenetv3_small_100", 64, {}),
        ("vit_tiny_patch16_224", 32, {"img_size": 32}),
    ],
)
def test_export_matches_pytorch(cli, workdir, make_checkpoint, model, size, kwargs):
    ckpt = make_checkpoint(model, num_classes=10, **kwargs)
    extra = [a for k, v in kwargs.items() for a in ("--model-kwarg", f"{k}={v}")]
    result = cli(
        "export", "onnx", model, "--checkpoint", ckpt, "--num-classes", 10, "--input-size", 3,
        size, size, "-o", "out/m.onnx", *extra,
    )  # fmt: skip
    assert result.code == 0, result.err
    artifact = workdir / "out/m.onnx"
    report = result.report(artifact)
    assert report["status"] == "success"
    assert report["verification"]["status"] == "passed"
    assert report["verification"]["checks"][0]["max_abs_error"] < 1e-4

    # An independent comparison, not timmx's own verification.
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    expected = reference_model(model, ckpt, num_classes=10, **kwargs)(x).detach().numpy()
    actual = run_onnx(artifact, x[:1].numpy())
    assert_matches(actual, expected[:1])
    assert np.abs(expected).max() > 1e-2  # the weights are not trivial


def test_dynamic_batch_normalize_softmax(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("resnet18", num_classes=5)
    result = cli(
        "export", "onnx", "resnet18", "-c", ckpt, "--num-classes", 5, "--input-size", 3, 48, 48,
        "--dynamic-batch", "--normalize", "--softmax", "-o", "m.onnx",
    )  # fmt: skip
    assert result.code == 0, result.err
    report = result.report(workdir / "m.onnx")
    assert [c["batch_size"] for c in report["verification"]["checks"]] == [1, 3]

    pixels = torch.rand(4, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    model = reference_model("resnet18", ckpt, num_classes=5)
    expected = model((pixels - mean) / std).softmax(-1).detach().numpy()
    actual = run_onnx(workdir / "m.onnx", pixels.numpy())
    assert actual.shape == (4, 5)
    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_reparameterizable_model_is_fused(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("repvgg_a0", num_classes=10)
    result = cli(
        "export", "onnx", "repvgg_a0", "-c", ckpt, "--num-classes", 10, "--input-size", 3, 64, 64,
        "-o", "rep.onnx",
    )  # fmt: skip
    assert result.code == 0, result.err
    report = result.report(workdir / "rep.onnx")
    assert report["model"]["reparameterized"] is True
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    expected = reference_model("repvgg_a0", ckpt, num_classes=10)(x).detach().numpy()
    assert_matches(run_onnx(workdir / "rep.onnx", x.numpy()), expected)


def test_legacy_exporter_without_slim(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("resnet18")
    result = cli(
        "export", "onnx", "resnet18", "-c", ckpt, "--input-size", 3, 32, 32,
        "--exporter", "torchscript", "--no-slim", "--opset", 17, "-o", "legacy.onnx",
    )  # fmt: skip
    assert result.code == 0, result.err
    import onnx

    assert onnx.load(workdir / "legacy.onnx").opset_import[0].version == 17
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(12))
    expected = reference_model("resnet18", ckpt)(x).detach().numpy()
    assert_matches(run_onnx(workdir / "legacy.onnx", x.numpy()), expected)


def test_same_job_gives_the_same_bytes(cli, workdir):
    args = ("export", "onnx", "resnet18", "--input-size", 3, 32, 32)
    assert cli(*args, "-o", "a.onnx").code == 0
    assert cli(*args, "-o", "b.onnx").code == 0
    assert (workdir / "a.onnx").read_bytes() == (workdir / "b.onnx").read_bytes()


def test_report_lists_files_versions_and_timings(cli, workdir):
    result = cli("export", "onnx", "resnet18", "--input-size", 3, 32, 32, "--json")
    assert result.code == 0, result.err
    report = result.report(workdir / "resnet18.onnx")
    assert report["artifacts"][0]["path"] == "resnet18.onnx"
    assert len(report["artifacts"][0]["sha256"]) == 64
    assert {"torch", "timm", "onnx", "onnxruntime"} <= set(report["environment"]["packages"])
    assert report["timings"]["total_s"] > 0
    assert '"status": "success"' in result.out
