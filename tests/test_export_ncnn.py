"""ncnn exports through pnnx: the folder, fp16 weights and refusals; the numbers in the ncnn
runtime against timm are tests/test_conformance.py's (both precisions)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import require
from timmx.backends.ncnn import files_of

ncnn = require("ncnn", "the ncnn backend needs: pip install 'timmx[ncnn]'")


def run_ncnn(folder, x: np.ndarray, fp16: bool) -> np.ndarray:
    net = ncnn.Net()
    net.opt.num_threads = 1
    net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = fp16
    param, weights = files_of(folder)  # NAME.ncnn/NAME.*, or upstream's model.ncnn.*
    net.load_param(str(param))
    net.load_model(str(weights))
    extractor = net.create_extractor()
    extractor.input("in0", ncnn.Mat(np.ascontiguousarray(x[0])))
    return np.array(extractor.extract("out0")[1])[None]


def test_fp16_halves_the_weights(cli, workdir):
    args = ("export", "ncnn", "mobilenetv3_small_100", "--input-size", 3, 32, 32)
    assert cli(*args, "--fp16", "-o", "h.ncnn").code == 0
    assert cli(*args, "--no-fp16", "-o", "f.ncnn").code == 0
    half = (workdir / "h.ncnn/h.bin").stat().st_size
    assert half < 0.6 * (workdir / "f.ncnn/f.bin").stat().st_size
    # the folder holds the two files, and the report lists them (numbers: test_conformance.py)
    assert sorted(p.name for p in (workdir / "h.ncnn").iterdir()) == ["h.bin", "h.param"]
    report = json.loads((workdir / "h.ncnn.json").read_text())
    assert report["verification"]["status"] == "passed"
    assert report["verification"]["details"]["layers"]["Convolution"] > 0
    assert {a["path"] for a in report["artifacts"]} == {"h.ncnn/h.bin", "h.ncnn/h.param"}


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
