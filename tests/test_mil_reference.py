"""timmx.mil_reference: saved ML programs evaluated in numpy, checked op by op against PyTorch,
against coremltools' own weight decompression, and on programs broken on purpose."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tests.conftest import require

ct = require("coremltools")

from timmx.mil_reference import (  # noqa: E402
    EvaluationError,
    Evaluator,
    UnsupportedOpsError,
    load_program,
)
from timmx.mil_reference.dtypes import unpack_bits  # noqa: E402
from timmx.mil_reference.program import spec_path  # noqa: E402


def save(mlmodel, folder: Path, name: str = "m.mlpackage") -> Path:
    path = folder / name
    with contextlib.redirect_stderr(io.StringIO()):
        mlmodel.save(str(path))
    return path


def convert(module: nn.Module, shape, folder: Path, precision="float32", target=None, **kw):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module.eval(), x, check_trace=False)
        mlmodel = ct.convert(
            traced,
            inputs=[ct.TensorType(name="input", shape=x.shape, dtype=np.float32)],
            outputs=[ct.TensorType(name="output", dtype=np.float32)],
            convert_to="mlprogram",
            compute_precision=getattr(ct.precision, precision.upper()),
            minimum_deployment_target=getattr(ct.target, target or "iOS16"),
            **kw,
        )
    return mlmodel, x


def evaluate(path: Path, x: torch.Tensor) -> np.ndarray:
    return Evaluator(load_program(path)).run({"input": x.numpy()})["output"]


def rel_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-6))


# ---- op zoos: each module exercises a family of ops; the program must contain them ----


class Convs(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.depthwise = nn.Conv2d(8, 16, 3, padding=2, dilation=2, groups=8)  # multiplier 2
        self.grouped = nn.Conv2d(16, 8, (1, 3), padding=(0, 1), groups=4, bias=False)
        self.valid = nn.Conv2d(8, 4, 2, stride=(1, 2))
        self.conv1d = nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, x):
        x = self.grouped(self.depthwise(self.stem(x)))
        parts = [
            F.max_pool2d(x, 3, 2, 1, ceil_mode=True),
            F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
            F.avg_pool2d(x, 2, 2),
            self.valid(x),
            self.conv1d(x.mean(-1)[:, :4]),
        ]
        return torch.cat([p.flatten(1) for p in parts], dim=1)


class NormsActivations(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(12)
        self.bn = nn.BatchNorm2d(4)
        self.inorm = nn.InstanceNorm2d(4, affine=True)
        self.prelu = nn.PReLU(4)
        with torch.no_grad():
            for p in (*self.ln.parameters(), *self.bn.parameters(), *self.inorm.parameters()):
                p.uniform_(0.5, 1.5)
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 1.5)
            self.prelu.weight.uniform_(0.1, 0.3)

    def forward(self, x):
        x = x * 2
        acts = [
            F.gelu(x),
            F.gelu(x, approximate="tanh"),
            F.silu(x),
            F.hardswish(x),
            F.hardsigmoid(x),
            F.elu(x),
            F.leaky_relu(x, 0.1),
            F.softplus(x),
            F.relu6(x),
            torch.tanh(x),
            torch.sigmoid(x),
            self.prelu(x),
            self.bn(torch.relu(x)),
            self.inorm(x),
            self.ln(x),
            F.softmax(x, dim=1),
            torch.erf(x),
        ]
        return torch.cat([a.flatten(1) for a in acts], dim=1)


class Shapes(nn.Module):
    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        seq = x.flatten(2).transpose(1, 2)  # N, HW, C
        attn = torch.softmax(torch.matmul(seq, x.flatten(2)) / 2.0, dim=-1) @ seq
        parts = [
            torch.cat([a, b * 2], dim=1),
            torch.stack([a, b], dim=2),
            x.permute(0, 2, 3, 1).reshape(2, -1, 2),
            x[:, 1:3, ::2, 1:-1],
            F.pad(x, (1, 2, 2, 1), mode="reflect"),
            F.pad(x, (1, 1, 0, 2), mode="replicate"),
            F.pad(x, (2, 0, 1, 1), value=0.5),
            F.interpolate(x, scale_factor=2, mode="nearest"),
            F.pixel_shuffle(x, 2),
            x.repeat(1, 1, 2, 1),
            attn,
            torch.einsum("nchw,nc->nhw", x, x.mean((2, 3))),
            x.unsqueeze(1).squeeze(1),
        ]
        return torch.cat([p.flatten(1) for p in parts], dim=1)


class Reductions(nn.Module):
    def forward(self, x):
        y = x.abs() + 0.5
        parts = [
            x.sum((2, 3)),
            x.amax(1),
            x.amin(-1),
            x.mean(1, keepdim=True),
            torch.linalg.vector_norm(x, dim=(2, 3)),
            torch.logsumexp(x, dim=1),
            torch.sqrt(y),
            torch.rsqrt(y),
            torch.log(y),
            torch.exp(x / 4),
            y.pow(1.5),
            x / y,
            x - y,
            torch.maximum(x, y - 1),
            torch.minimum(x, y - 1),
            x.clamp(-0.5, 0.5),
            torch.where(x > 0.2, x, y),
            torch.floor(x * 3),
            torch.ceil(x * 3),
        ]
        return torch.cat([p.flatten(1) for p in parts], dim=1)


ZOOS = [
    (Convs, (2, 3, 16, 16), {"conv", "max_pool", "avg_pool", "reduce_mean", "concat"}),
    (
        NormsActivations,
        (2, 4, 6, 12),
        {"gelu", "silu", "sigmoid_hard", "elu", "leaky_relu", "softplus", "tanh", "sigmoid"}
        | {"prelu", "batch_norm", "instance_norm", "layer_norm", "softmax", "erf", "relu6"},
    ),
    (
        Shapes,
        (2, 4, 6, 8),
        {"split", "concat", "stack", "transpose", "reshape", "slice_by_index", "pad", "tile"}
        | {"upsample_nearest_neighbor", "pixel_shuffle", "matmul", "softmax"},
    ),
    (
        Reductions,
        (2, 4, 6, 8),
        {"reduce_sum", "reduce_max", "reduce_min", "reduce_mean", "reduce_l2_norm"}
        | {"reduce_log_sum_exp", "sqrt", "rsqrt", "log", "exp", "pow"}
        | {"real_div", "sub", "maximum", "minimum", "clip", "select", "greater", "floor"},
    ),
]


@pytest.mark.parametrize(("zoo", "shape", "ops"), ZOOS, ids=[z[0].__name__ for z in ZOOS])
def test_ops_match_pytorch(tmp_path, zoo, shape, ops):
    torch.manual_seed(0)
    module = zoo()
    mlmodel, x = convert(module, shape, tmp_path)
    path = save(mlmodel, tmp_path)
    evaluator = Evaluator(load_program(path))
    assert evaluator.unsupported == {}
    assert ops <= set(evaluator.op_counts()), ops - set(evaluator.op_counts())
    with torch.no_grad():
        expected = module(x).numpy()
    actual = evaluator.run({"input": x.numpy()})["output"]
    assert actual.shape == expected.shape
    assert rel_error(actual, expected) < 1e-5


class Attention(nn.Module):
    def forward(self, x):
        q, k, v = x.chunk(3, dim=-1)
        mask = torch.ones(5, 5, dtype=torch.bool).tril()  # sequence length 5
        bias = torch.linspace(-1, 1, 25).view(5, 5)
        plain = F.scaled_dot_product_attention(q, k, v)
        masked = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        biased = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return torch.cat([plain, masked, biased], dim=-1)


def test_attention_of_ios18(tmp_path):
    module = Attention()
    mlmodel, x = convert(module, (2, 3, 5, 12), tmp_path, target="iOS18")
    path = save(mlmodel, tmp_path)
    evaluator = Evaluator(load_program(path))
    assert evaluator.op_counts()["scaled_dot_product_attention"] == 3
    with torch.no_grad():
        expected = module(x).numpy()
    assert rel_error(evaluator.run({"input": x.numpy()})["output"], expected) < 1e-5


def test_float16_program_is_rounded_per_op(tmp_path):
    torch.manual_seed(0)
    module = NormsActivations()
    mlmodel, x = convert(module, (2, 4, 6, 12), tmp_path, precision="float16")
    path = save(mlmodel, tmp_path)
    program = load_program(path)
    assert "cast" in {op.type for op in program.main.operations}
    with torch.no_grad():
        expected = module(x).numpy()
    error = rel_error(evaluate(path, x), expected)
    assert 1e-5 < error < 1e-2  # float16 rounding shows, and stays small


# ---- compressed weights: the constexpr ops against coremltools' own decompression ----


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 32, 3, padding=1)
        self.b = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.fc = nn.Linear(64, 40)

    def forward(self, x):
        x = torch.relu(self.b(torch.relu(self.a(x))))
        return self.fc(x.mean((2, 3)))


def _lut4(weight):
    flat = weight.reshape(-1)
    edges = np.quantile(flat, np.linspace(0, 1, 17)[1:-1])
    indices = np.searchsorted(edges, flat).astype(np.uint8)
    lut = np.array([flat[indices == i].mean() for i in range(16)], dtype=weight.dtype)
    return lut, indices


COMPRESSIONS = {
    "int8-iOS16": ("iOS16", "linear", {"dtype": "int8", "granularity": "per_channel"}),
    "int8-iOS18": ("iOS18", "linear", {"dtype": "int8", "granularity": "per_channel"}),
    "uint8-affine": ("iOS16", "linear", {"mode": "linear", "dtype": "uint8"}),
    "int4-block": ("iOS18", "linear", {"dtype": "int4", "granularity": "per_block"}),
    "lut4-iOS16": ("iOS16", "palettize", {"mode": "custom", "lut_function": _lut4}),
    "lut2-iOS18": ("iOS18", "palettize", {"mode": "uniform", "nbits": 2}),
    "lut-per-channel": (
        "iOS18",
        "palettize",
        {"mode": "uniform", "nbits": 4, "granularity": "per_grouped_channel", "group_size": 8},
    ),
    "sparse-iOS16": ("iOS16", "prune", {"target_sparsity": 0.5}),
    "sparse-iOS18": ("iOS18", "prune", {"target_sparsity": 0.5}),
}


@pytest.mark.parametrize("kind", list(COMPRESSIONS))
def test_decompression_matches_coremltools(tmp_path, kind):
    import coremltools.optimize.coreml as cto

    target, method, config = COMPRESSIONS[kind]
    torch.manual_seed(1)
    module = Tiny()
    mlmodel, x = convert(module, (2, 3, 12, 12), tmp_path, target=target)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if method == "linear":
            op_config = cto.OpLinearQuantizerConfig(**config)
            compressed = cto.linear_quantize_weights(
                mlmodel, cto.OptimizationConfig(global_config=op_config)
            )
        elif method == "palettize":
            op_config = cto.OpPalettizerConfig(**config)
            compressed = cto.palettize_weights(
                mlmodel, cto.OptimizationConfig(global_config=op_config)
            )
        else:
            op_config = cto.OpMagnitudePrunerConfig(**config)
            compressed = cto.prune_weights(mlmodel, cto.OptimizationConfig(global_config=op_config))
        dense = cto.decompress_weights(compressed)
    ours = Evaluator(load_program(save(compressed, tmp_path, "c.mlpackage")))
    assert any(t.startswith("constexpr_") for t in ours.op_counts()), ours.op_counts()
    theirs = Evaluator(load_program(save(dense, tmp_path, "d.mlpackage")))
    assert not any(t.startswith("constexpr_") for t in theirs.op_counts())
    actual = ours.run({"input": x.numpy()})["output"]
    np.testing.assert_allclose(actual, theirs.run({"input": x.numpy()})["output"], rtol=1e-5)
    with torch.no_grad():
        assert rel_error(actual, module(x).numpy()) < 1.0  # compressed, not garbage


def test_unpack_bits_matches_coremltools():
    from coremltools.optimize import _utils

    rng = np.random.default_rng(0)
    for nbits in (1, 2, 3, 4, 6):
        values = rng.integers(0, 1 << nbits, size=101).astype(np.uint8)
        packed = _utils.pack_elements_into_bits(values, nbits)
        np.testing.assert_array_equal(unpack_bits(packed, nbits, values.size), values)
    signed = rng.integers(-8, 8, size=33).astype(np.int8)
    packed = _utils.pack_elements_into_bits(signed, 4)
    np.testing.assert_array_equal(unpack_bits(packed, 4, 33, signed=True), signed)


# ---- broken programs: the evaluator must notice, or give a different answer ----


def _edit(path: Path, edit) -> None:
    from coremltools.proto import Model_pb2

    file = spec_path(path)
    spec = Model_pb2.Model()
    spec.ParseFromString(file.read_bytes())
    function = spec.mlProgram.functions["main"]
    edit(function.block_specializations[function.opset].operations)
    file.write_bytes(spec.SerializeToString())


@pytest.fixture
def tiny_program(tmp_path):
    torch.manual_seed(2)
    module = Tiny()
    mlmodel, x = convert(module, (1, 3, 12, 12), tmp_path)
    with torch.no_grad():
        expected = module(x).numpy()
    return save(mlmodel, tmp_path), x, expected


def _first(ops, op_type):
    return next(op for op in ops if op.type == op_type)


def test_edited_op_changes_the_result(tiny_program):
    path, x, expected = tiny_program
    assert rel_error(evaluate(path, x), expected) < 1e-5
    _edit(path, lambda ops: setattr(_first(ops, "relu"), "type", "sigmoid"))
    assert rel_error(evaluate(path, x), expected) > 1e-2


def test_unsupported_op_is_named(tiny_program):
    path, x, _ = tiny_program
    _edit(path, lambda ops: setattr(_first(ops, "relu"), "type", "relu_mystery"))
    evaluator = Evaluator(load_program(path))
    assert evaluator.unsupported == {"relu_mystery": 1}
    with pytest.raises(UnsupportedOpsError, match=r"relu_mystery \(x1\)"):
        evaluator.run({"input": x.numpy()})


def test_result_that_contradicts_the_declared_shape_is_caught(tiny_program):
    path, x, _ = tiny_program

    def widen(ops):
        conv = _first(ops, "conv")
        conv.outputs[0].type.tensorType.dimensions[1].constant.size += 1

    _edit(path, widen)
    with pytest.raises(EvaluationError, match="the program declares"):
        evaluate(path, x)


def test_wrong_input_shape_and_missing_input(tiny_program):
    path, _, _ = tiny_program
    evaluator = Evaluator(load_program(path))
    with pytest.raises(EvaluationError, match="no value given"):
        evaluator.run({})
    with pytest.raises(EvaluationError, match="input 'input'"):
        evaluator.run({"input": np.zeros((1, 3, 10, 12), np.float32)})


def test_not_an_ml_program(tmp_path):
    from timmx.mil_reference import MILFormatError

    (tmp_path / "junk.mlmodel").write_bytes(b"not a model at all")
    with pytest.raises(MILFormatError):
        load_program(tmp_path / "junk.mlmodel")
    with pytest.raises(MILFormatError, match="neither"):
        load_program(tmp_path)
