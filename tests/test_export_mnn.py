"""MNN exports through MNN's converter: the weights each mode stores, MNN's native output kept
off a `--json` report on stdout, and refusals; the numbers in MNN's runtime against timm, per
mode, are tests/test_conformance.py's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import require

MNN = require("MNN", "the mnn backend needs: pip install 'timmx[mnn]'")

ARGS = ("export", "mnn", "mobilenetv3_small_100", "--input-size", 3, 32, 32)


def run_mnn(path, x: np.ndarray) -> np.ndarray:
    """The .mnn in MNN's own runtime (its Module API, on the CPU), apart from timmx."""
    import MNN.expr as F
    import MNN.nn as nn

    module = nn.load_module_from_file(str(path), ["input"], ["output"], thread_num=1)
    x = np.ascontiguousarray(x, dtype=np.float32)
    output = module.forward([F.const(x, list(x.shape), F.NCHW)])[0]
    return np.array(F.convert(output, F.NCHW).read(), dtype=np.float32).reshape(x.shape[0], -1)


def test_modes_shrink_the_weights_and_json_stays_clean(cli_fd, workdir):
    for mode in ("fp32", "fp16", "int8"):
        # at the file descriptors: MNN prints from C++ ("The device supports: ..."), past
        # sys.stdout
        result = cli_fd(*ARGS, "--mode", mode, "-o", f"{mode}.mnn", "--json")
        code, out, err = result.code, result.out, result.err
        assert code == 0, err
        report = json.loads(out)  # the --json report on stdout, and nothing else
        assert report["verification"]["status"] == "passed"
        assert report["verification"]["details"]["mode"] == mode
        assert report["verification"]["details"]["converter"][-1] == "Converted Success!"
        assert "device supports" not in out + err

    full, half, quarter = ((workdir / f"{m}.mnn").stat().st_size for m in ("fp32", "fp16", "int8"))
    assert half < 0.6 * full and quarter < 0.35 * full
    assert sorted(p.name for p in workdir.iterdir()) == sorted(
        f"{m}.mnn{s}" for m in ("fp32", "fp16", "int8") for s in ("", ".json")
    )  # the intermediate .onnx is not left behind
    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    base, fp16, int8 = (run_mnn(workdir / f"{m}.mnn", x) for m in ("fp32", "fp16", "int8"))
    scale = np.abs(base).max()
    assert np.abs(int8 - base).max() > 1e-3 * scale  # the weights really changed
    assert np.abs(fp16 - base).max() > 0


def test_an_op_the_converter_lacks_is_refused(cli, workdir):
    """VOLO's outlooker folds patches back (F.fold: ONNX's Col2Im), which MNN has no op for."""
    result = cli(*ARGS[:2], "volo_d1_224", "--model-kwarg", "img_size=32", *ARGS[3:], "-o", "v.mnn")
    assert result.code == 2
    assert result.err.count("\n") == 1, result.err
    assert "Col2Im" in result.err and "onnx" in result.err
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize(
    ("flags", "words"),
    [(("--mode", "int4"), "--mode"), (("--opset", "12"), "--opset")],
)
def test_bad_options_are_one_line(cli, workdir, flags, words):
    result = cli(*ARGS, *flags)
    assert result.code == 2
    assert result.err.count("\n") == 1 and words in result.err
    assert list(workdir.iterdir()) == []
