"""ExecuTorch and ncnn in their own images: two torch pins, one CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import assert_matches, reference_model
from tests.isolated.helpers import build_image

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
        "export", "executorch", "resnet18", "-c", ckpt, "--num-classes", 10, *SIZE,
        "-o", "m.pte", "--isolated",
    )  # fmt: skip
    assert result.code == 0, result.err
    report = result.report(workdir / "m.pte")
    assert report["environment"]["runner"] == "docker"
    assert report["environment"]["packages"]["torch"].startswith("2.13.")
    assert report["environment"]["packages"]["executorch"] == "1.5.1"
    verification = report["verification"]
    assert verification["status"] == "passed"
    assert verification["checks"][0]["max_abs_error"] < 1e-4
    assert verification["details"]["delegated_subgraphs"] >= 1


def test_executorch_int8_calibrated_through_the_mount(
    cli, workdir, make_checkpoint, executorch_image, no_leftovers
):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    torch.save(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2)), "c.pt")
    result = cli(
        "export", "executorch", "resnet18", "-c", ckpt, "--num-classes", 10, *SIZE,
        "--mode", "int8", "--calibration-data", "c.pt", "-o", "q.pte", "--isolated",
    )  # fmt: skip
    assert result.code == 0, result.err
    check = result.report(workdir / "q.pte")["verification"]["checks"][0]
    assert check["passed"]
    assert check["max_abs_error"] > 1e-4  # really quantized


def test_ncnn_matches_pytorch(cli, workdir, make_checkpoint, ncnn_image, no_leftovers):
    ncnn = pytest.importorskip("ncnn")
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
