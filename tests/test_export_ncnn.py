"""ncnn exports through pnnx, checked in the ncnn runtime against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import assert_matches, reference_model

ncnn = pytest.importorskip("ncnn", reason="the ncnn backend needs: pip install 'timmx[ncnn]'")


def run_ncnn(folder, x: np.ndarray, fp16: bool) -> np.ndarray:
    net = ncnn.Net()
    net.opt.num_threads = 1
    net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = fp16
    net.load_param(str(folder / f"{folder.stem}.param"))
    net.load_model(str(folder / f"{folder.stem}.bin"))
    extractor = net.create_extractor()
    extractor.input("in0", ncnn.Mat(np.ascontiguousarray(x[0])))
    return np.array(extractor.extract("out0")[1])[None]


@pytest.mark.parametrize(("fp16", "rel"), [(False, 1e-4), (True, 1e-2)])
def test_resnet_matches_pytorch(cli, workdir, make_checkpoint, fp16, rel):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    result = cli(
        "export", "ncnn", "resnet18", "-c", ckpt, "--num-classes", 10,
        "--input-size", 3, 64, 64, "--fp16" if fp16 else "--no-fp16", "-o", "out/r.ncnn",
    )  # fmt: skip
    assert result.code == 0, result.err
    folder = workdir / "out/r.ncnn"
    assert sorted(p.name for p in folder.iterdir()) == ["r.bin", "r.param"]
    report = result.report(folder)
    assert report["verification"]["status"] == "passed"
    assert report["verification"]["details"]["layers"]["Convolution"] > 0
    assert {a["path"] for a in report["artifacts"]} == {"r.ncnn/r.bin", "r.ncnn/r.param"}

    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    expected = reference_model("resnet18", ckpt, num_classes=10)(x).detach().numpy()
    assert_matches(run_ncnn(folder, x.numpy(), fp16), expected, rel=rel)


def test_fp16_halves_the_weights(cli, workdir):
    args = ("export", "ncnn", "mobilenetv3_small_100", "--input-size", 3, 32, 32)
    assert cli(*args, "--fp16", "-o", "h.ncnn").code == 0
    assert cli(*args, "--no-fp16", "-o", "f.ncnn").code == 0
    half = (workdir / "h.ncnn/h.bin").stat().st_size
    assert half < 0.6 * (workdir / "f.ncnn/f.bin").stat().st_size


def test_architecture_pnnx_cannot_lower_is_refused(cli, workdir):
    result = cli(
        "export", "ncnn", "vit_tiny_patch16_224", "--model-kwarg", "img_size=32",
        "--input-size", 3, 32, 32, "-o", "vit.ncnn",
    )  # fmt: skip
    assert result.code == 2
    assert result.err.count("\n") == 1 and "could not lower" in result.err
    assert "Tensor.reshape" in result.err
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize("flags", [("--dynamic-batch",), ("--batch-size", "2")])
def test_batch_flags_are_refused(cli, workdir, flags):
    result = cli("export", "ncnn", "resnet18", "--input-size", 3, 32, 32, *flags)
    assert result.code == 2
    assert "one image at a time" in result.err
