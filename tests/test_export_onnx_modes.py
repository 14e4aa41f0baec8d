"""ONNX exports in fp16, dynamic int8 and static int8, checked in onnxruntime against PyTorch.

Each comparison here is independent of timmx's own verification: this file loads the artifact
in onnxruntime itself (float16 inputs where the model takes them) and compares it with the
checkpoint loaded into a fresh timm model; it also reads the artifact's tensors and nodes to
check that the precision asked for is really there.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tests.conftest import reference_model
from tests.test_errors import assert_refused

SIZE = 32


def run_onnx(path: Path, x: np.ndarray) -> tuple[np.ndarray, str]:
    """The artifact's float32 outputs on `x` (in batches of its fixed batch size, if it has
    one), and the input type it declares."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    source = session.get_inputs()[0]
    dtype = np.float16 if source.type == "tensor(float16)" else np.float32
    batch = source.shape[0] if isinstance(source.shape[0], int) else len(x)
    outputs = [
        session.run(None, {source.name: x[i : i + batch].astype(dtype)})[0]
        for i in range(0, len(x), batch)
    ]
    return np.concatenate(outputs).astype(np.float32), source.type


def compare(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """Max abs error over the output's scale, top-1 agreement."""
    relative = float(np.abs(actual - expected).max() / np.abs(expected).max())
    return relative, float(np.mean(actual.argmax(-1) == expected.argmax(-1)))


def contents(path: Path) -> tuple[Counter, Counter]:
    """Op types and stored tensor types of the artifact, read with onnx."""
    graph = onnx.load(str(path)).graph
    ops = Counter(node.op_type for node in graph.node)
    types = Counter(
        onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name for t in graph.initializer
    )
    return ops, types


def export(cli, workdir: Path, ckpt: Path, out: str, *flags, model: str = "resnet18") -> dict:
    result = cli(
        "export", "onnx", model, "-c", ckpt, "--num-classes", 10,
        "--input-size", 3, SIZE, SIZE, "-o", out, *flags,
    )  # fmt: skip
    assert result.code == 0, result.err
    report = result.report(workdir / out)
    assert report["status"] == "success"
    assert report["verification"]["status"] == "passed"
    return report


def inputs(count: int, seed: int = 5) -> torch.Tensor:
    return torch.randn(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fp16_io", [False, True], ids=["float32-io", "fp16-io"])
def test_fp16(cli, workdir, make_checkpoint, fp16_io):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    # --fp16-io also with --dynamic-batch: verified at batch 1 and 3, run here at 3 and 5.
    flags = ["--fp16-io", "--dynamic-batch"] if fp16_io else []
    report = export(cli, workdir, ckpt, "h.onnx", "--mode", "fp16", *flags)
    details = report["verification"]["details"]
    io = "float16" if fp16_io else "float32"
    assert details["mode"] == "fp16" and details["inputs"][0]["dtype"] == io
    assert details["outputs"][0]["dtype"] == io
    assert [c["batch_size"] for c in report["verification"]["checks"]] == [1, 3][: 1 + fp16_io]

    ops, types = contents(workdir / "h.onnx")
    assert types["float16"] >= 40 and not types["float32"]  # every weight is float16
    assert ops["Cast"] == (0 if fp16_io else 2)  # float32 IO: one Cast at each edge

    model = reference_model("resnet18", ckpt, num_classes=10)
    for count in (3, 5) if fp16_io else (8,):
        x = inputs(count)
        expected = model(x).detach().numpy()
        actual, declared = run_onnx(workdir / "h.onnx", x.numpy())
        assert declared == f"tensor({'float16' if fp16_io else 'float'})"
        relative, top1 = compare(actual, expected)
        assert relative <= 5e-3 and top1 == 1.0, (relative, top1)


def test_dynamic_int8_with_dynamic_batch(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    report = export(cli, workdir, ckpt, "d.onnx", "--mode", "dynamic-int8", "--dynamic-batch")
    verification = report["verification"]
    assert verification["inputs"] == "seeded normal N(0, 1) (16)"  # no calibration to hold out
    assert [c["batch_size"] for c in verification["checks"]] == [1, 3]
    details = verification["details"]
    assert details["quantized_ops"]["DynamicQuantizeLinear"] >= 10
    assert details["quantized_ops"]["ConvInteger"] == 20
    # onnxruntime scales ConvInteger weights per tensor; the classifier's MatMul per channel.
    assert details["weight_scales"] == {"per_channel": 1, "per_tensor": 20}

    ops, types = contents(workdir / "d.onnx")
    assert ops["ConvInteger"] == 20 and ops["MatMulInteger"] == 1 and types["int8"] >= 21
    assert not ops["Conv"] and not ops["Gemm"]  # every weighted op runs on int8 weights

    x = inputs(6)
    model = reference_model("resnet18", ckpt, num_classes=10)
    expected = model(x).detach().numpy()
    actual, _ = run_onnx(workdir / "d.onnx", x.numpy())  # one batch of 6
    relative, top1 = compare(actual, expected)
    assert relative <= 0.1 and top1 >= 0.66, (relative, top1)


def test_int8_from_a_calibration_tensor(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    data = inputs(80, seed=11)
    torch.save(data, workdir / "calib.pt")
    report = export(
        cli, workdir, ckpt, "q.onnx", "--mode", "int8", "--calibration-data", "calib.pt"
    )
    assert report["warnings"] == []
    verification = report["verification"]
    # The last fifth of the tensor is held out of calibration and verified on.
    assert verification["inputs"] == "held-out calibration samples (16)"
    assert verification["min_top1"] == 0.8 and verification["rtol"] == 0.15
    details = verification["details"]
    assert details["mode"] == "int8" and details["quant_pre_process"] == "applied"
    assert details["weight_scales"] == {"per_channel": 21}  # 20 convolutions, the classifier
    assert details["quantized_ops"]["QuantizeLinear"] >= 20
    assert details["inputs"][0]["dtype"] == details["outputs"][0]["dtype"] == "float32"

    path = workdir / "q.onnx"
    ops, types = contents(path)
    assert ops["DequantizeLinear"] >= 40 and types["int8"] >= 21
    graph = onnx.load(str(path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    assert producer["output"].op_type == "Gemm"  # the logits are not quantized
    scales = {init.name: init for init in graph.initializer}
    for node in graph.node:  # each int8 weight has one scale per output channel
        if node.op_type == "DequantizeLinear" and node.input[0] in scales:
            weight, scale = scales[node.input[0]], scales[node.input[1]]
            if weight.data_type == onnx.TensorProto.INT8:
                assert list(scale.dims) == [weight.dims[0]]

    held_out = data[64:]
    model = reference_model("resnet18", ckpt, num_classes=10)
    expected = model(held_out).detach().numpy()
    actual, _ = run_onnx(path, held_out.numpy())
    relative, top1 = compare(actual, expected)
    assert relative <= 0.1 and top1 >= 0.8, (relative, top1)

    # The int8 tolerance still catches a broken graph: a sign flip in the logits.
    from timmx.backends.onnx import TOLERANCES
    from timmx.verification import compare as verify_compare

    assert not verify_compare(expected, -actual, TOLERANCES["int8"], 1).passed


def test_int8_random_calibration_gives_the_same_bytes(cli, workdir):
    args = (
        "export", "onnx", "resnet18", "--input-size", 3, SIZE, SIZE, "--seed", 3,
        "--mode", "int8", "--random-calibration", "--calibration-steps", 8, "--no-per-channel",
    )  # fmt: skip
    first = cli(*args, "-o", "a.onnx")
    assert first.code == 0, first.err
    assert cli(*args, "-o", "b.onnx").code == 0
    assert (workdir / "a.onnx").read_bytes() == (workdir / "b.onnx").read_bytes()

    report = first.report(workdir / "a.onnx")
    assert any("not for production" in w for w in report["warnings"])
    assert report["verification"]["inputs"] == "fresh random draws like the calibration's (16)"
    assert report["verification"]["details"]["weight_scales"] == {"per_tensor": 21}
    assert not [p.name for p in workdir.iterdir() if p.name.startswith(".")]  # no scratch left


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--fp16-io"], ["--fp16-io needs --mode fp16"]),
        (["--random-calibration"], ["--random-calibration only applies to --mode int8"]),
        (["--mode", "int8"], ["--mode int8 needs calibration", "--calibration-data"]),
        (["--mode", "fp16", "--no-per-channel"], ["--no-per-channel", "--mode fp16 has none"]),
        (
            ["--mode", "int8", "--random-calibration", "--opset", 12],
            ["--opset 13 or later", "--no-per-channel"],
        ),
        (["--mode", "dynamic-int8", "--opset", 10], ["--opset 11 or later"]),
        (["--mode", "int4"], ["--mode"]),
    ],
)
def test_refusals(cli, workdir, flags, needles):
    result = cli(
        "export", "onnx", "resnet18", "--input-size", 3, SIZE, SIZE, "-o", "m.onnx", *flags
    )
    assert_refused(result, *needles)
    assert list(workdir.iterdir()) == []


def test_a_mode_that_stored_no_converted_weights_fails(tmp_path):
    """The precision check on its own: a float32 artifact is no fp16 or int8 export."""
    from onnx import TensorProto, helper, numpy_helper

    from timmx.backends._onnx.inspect import check_precision
    from timmx.errors import ExportFailedError

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), path)
    check_precision(path, "fp32")
    for mode, needle in (("fp16", "no float16 weights"), ("int8", "no int8 or uint8 weights")):
        with pytest.raises(ExportFailedError, match=needle):
            check_precision(path, mode)
