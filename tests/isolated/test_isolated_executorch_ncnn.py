"""ExecuTorch and ncnn in their own images: two torch pins, one CLI. Each artifact is also run
by us, apart from timmx: ExecuTorch's in its own image (its runtime links its own torch), ncnn's
here, and compared with timm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import assert_matches, reference_model, require
from tests.isolated.helpers import build_image
from tests.isolated.in_image import run_pte
from tests.report_files import assert_report_lists_the_files

pytestmark = pytest.mark.isolated

SIZE = ("--input-size", "3", "32", "32")


@pytest.fixture(scope="module")
def executorch_image(docker_client) -> float:
    return build_image("executorch")


@pytest.fixture(scope="module")
def ncnn_image(docker_client) -> float:
    return build_image("ncnn")


def test_executorch_xnnpack_in_its_own_torch(
    cli, workdir, make_checkpoint, executorch_image, no_leftovers
):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    result = cli(
        "export", "executorch", "resnet18", "-c", ckpt, "--num-classes", 10,
        "--input-size", 3, 32, 48, "-o", "out/m.pte", "--isolated",
    )  # fmt: skip
    assert result.code == 0, result.err
    report = result.report(workdir / "out/m.pte")
    assert report["environment"]["runner"] == "docker"
    assert report["environment"]["packages"]["torch"].startswith("2.13.")
    assert report["environment"]["packages"]["executorch"] == "1.5.1"
    details = report["verification"]["details"]
    assert details["delegate"] == "xnnpack" and details["delegated_subgraphs"] >= 1
    assert details["non_delegated_ops"] == {}

    # Our own check: the .pte in ExecuTorch's runtime (in its image) against timm here.
    x = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(6))  # non-square
    expected = reference_model("resnet18", ckpt, num_classes=10)(x).detach().numpy()
    assert_matches(run_pte(workdir / "out/m.pte", {"x": x.numpy()})["x"], expected)
    assert_report_lists_the_files(workdir / "out/m.pte")


def _top1_agreement(actual: np.ndarray, expected: np.ndarray) -> float:
    return float((actual.argmax(-1) == expected.argmax(-1)).mean())


def test_executorch_int8_calibrated_through_the_mount(
    cli, workdir, make_checkpoint, executorch_image, no_leftovers
):
    """Calibrated on pixels in [0, 1]; checked here on 16 other images of that distribution."""
    ckpt = make_checkpoint("resnet18", num_classes=10)
    torch.save(torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(2)), "c.pt")
    result = cli(
        "export", "executorch", "resnet18", "-c", ckpt, "--num-classes", 10, *SIZE,
        "--mode", "int8", "--calibration-data", "c.pt", "-o", "out/q.pte", "--isolated",
    )  # fmt: skip
    assert result.code == 0, result.err
    check = result.report(workdir / "out/q.pte")["verification"]["checks"][0]
    assert check["passed"]

    held_out = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(77))
    model = reference_model("resnet18", ckpt, num_classes=10)
    inputs = {f"x{i}": held_out[i : i + 1].numpy() for i in range(16)}
    outputs = run_pte(workdir / "out/q.pte", inputs)
    actual = np.concatenate([outputs[f"x{i}"] for i in range(16)])
    expected = model(held_out).detach().numpy()
    error = float(np.abs(actual - expected).max())
    assert 1e-4 < error <= 0.15 * float(np.abs(expected).max())  # quantized, and close
    # A random model's ten logits on such inputs lie close together (top-1 margins of a few
    # hundredths), so int8 noise flips some: measured 0.69 here, against 0.0-0.1 for a broken
    # graph (a sign flip, wrong scales).
    assert _top1_agreement(actual, expected) >= 0.6


def test_executorch_dynamic_batch_runs_at_another_batch_size(
    cli, workdir, make_checkpoint, executorch_image, no_leftovers
):
    ckpt = make_checkpoint("vit_tiny_patch16_224", img_size=32)
    result = cli(
        "export", "executorch", "vit_tiny_patch16_224", "-c", ckpt, "--model-kwarg",
        "img_size=32", *SIZE, "--batch-size", 2, "--dynamic-batch", "-o", "out/vit.pte",
        "--isolated",
    )  # fmt: skip
    assert result.code == 0, result.err
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    expected = reference_model("vit_tiny_patch16_224", ckpt, img_size=32)(x).detach().numpy()
    actual = run_pte(workdir / "out/vit.pte", {"x": x.numpy()})["x"]
    assert actual.shape == (3, 1000)
    assert_matches(actual, expected)


def test_executorch_portable_kernels(cli, workdir, make_checkpoint, executorch_image, no_leftovers):
    ckpt = make_checkpoint("mobilenetv3_small_100")
    result = cli(
        "export", "executorch", "mobilenetv3_small_100", "-c", ckpt, *SIZE,
        "--delegate", "portable", "-o", "out/p.pte", "--isolated",
    )  # fmt: skip
    assert result.code == 0, result.err
    details = result.report(workdir / "out/p.pte")["verification"]["details"]
    assert details["delegated_subgraphs"] == 0
    assert any("convolution" in op for op in details["non_delegated_ops"])
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    expected = reference_model("mobilenetv3_small_100", ckpt)(x).detach().numpy()
    assert_matches(run_pte(workdir / "out/p.pte", {"x": x.numpy()})["x"], expected)


def test_ncnn_matches_pytorch(cli, workdir, make_checkpoint, ncnn_image, no_leftovers):
    ncnn = require("ncnn")
    ckpt = make_checkpoint("resnet18", num_classes=10)
    result = cli(
        "export", "ncnn", "resnet18", "-c", ckpt, "--num-classes", 10, *SIZE, "--no-fp16",
        "-o", "out/r.ncnn", "--isolated",
    )  # fmt: skip
    assert result.code == 0, result.err
    folder = workdir / "out/r.ncnn"
    assert result.report(folder)["environment"]["runner"] == "docker"

    net = ncnn.Net()
    net.opt.num_threads = 1
    net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False
    net.load_param(str(folder / "r.param"))
    net.load_model(str(folder / "r.bin"))
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    extractor = net.create_extractor()
    extractor.input("in0", ncnn.Mat(np.ascontiguousarray(x[0].numpy())))
    actual = np.array(extractor.extract("out0")[1])[None]
    expected = reference_model("resnet18", ckpt, num_classes=10)(x).detach().numpy()
    assert_matches(actual, expected)


def test_ncnn_refusal_crosses_the_container(cli, workdir, ncnn_image, no_leftovers):
    result = cli(
        "export", "ncnn", "vit_tiny_patch16_224", "--model-kwarg", "img_size=32", *SIZE,
        "-o", "v.ncnn", "--isolated",
    )  # fmt: skip
    assert result.code == 2
    assert "could not lower" in result.err
    assert sorted(p.name for p in workdir.iterdir()) == []


def test_executorch_coreml_delegate_says_numerics_were_not_checked(
    cli, workdir, executorch_image, no_leftovers
):
    result = cli(
        "export", "executorch", "resnet18", *SIZE, "--delegate", "coreml", "-o", "c.pte",
        "--isolated",
    )  # fmt: skip
    assert result.code == 0, result.err
    verification = result.report(workdir / "c.pte")["verification"]
    assert verification["status"] == "skipped"
    assert "Apple" in verification["note"]
    assert verification["details"]["delegated_subgraphs"] >= 1
