"""Elementwise ops: arithmetic, comparisons, unary math, activations, softmax and cast."""

from __future__ import annotations

import numpy as np

from timmx.mil_reference.args import as_float, as_str, channel_view, normalize_axis
from timmx.mil_reference.dtypes import CAST_TARGETS
from timmx.mil_reference.registry import op

_BINARY = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "real_div": np.true_divide,
    "floor_div": np.floor_divide,
    "mod": np.mod,
    "pow": np.power,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "equal": np.equal,
    "not_equal": np.not_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "logical_and": np.logical_and,
    "logical_or": np.logical_or,
    "logical_xor": np.logical_xor,
}


def _binary(fn):
    def apply(x, y):
        x, y = np.asarray(x), np.asarray(y)
        if fn in (np.true_divide, np.power) and x.dtype.kind in "iu" and y.dtype.kind in "iu":
            return fn(x.astype(np.float32), y.astype(np.float32))
        return fn(x, y)

    return apply


for _name, _fn in _BINARY.items():
    op(_name)(_binary(_fn))


def erf(x: np.ndarray) -> np.ndarray:
    """Error function, absolute error below 1.2e-7 (Numerical Recipes' erfc, in float64)."""
    x = np.asarray(x, dtype=np.float64)
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -1.26551223 + t * (
        1.00002368
        + t
        * (
            0.37409196
            + t
            * (
                0.09678418
                + t
                * (
                    -0.18628806
                    + t
                    * (
                        0.27886807
                        + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))
                    )
                )
            )
        )
    )
    return np.sign(x) * (1.0 - t * np.exp(-z * z + poly))


def _sigmoid(x):
    x = np.asarray(x)
    out = np.empty_like(x, dtype=np.result_type(x.dtype, np.float32))
    positive = x >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-x[positive]))
    e = np.exp(x[~positive])
    out[~positive] = e / (1.0 + e)
    return out


_UNARY = {
    "abs": np.abs,
    "acos": np.arccos,
    "asin": np.arcsin,
    "atan": np.arctan,
    "atanh": np.arctanh,
    "ceil": np.ceil,
    "cos": np.cos,
    "cosh": np.cosh,
    "exp": np.exp,
    "exp2": np.exp2,
    "floor": np.floor,
    "logical_not": np.logical_not,
    "round": np.round,
    "sign": np.sign,
    "sin": np.sin,
    "sinh": np.sinh,
    "sqrt": np.sqrt,
    "square": np.square,
    "tan": np.tan,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.clip(x, 0, 6),
    "sigmoid": _sigmoid,
    "silu": lambda x: x * _sigmoid(x),
    "softsign": lambda x: x / (1 + np.abs(x)),
    "softplus": lambda x: np.logaddexp(0, x),
    "erf": lambda x: erf(x).astype(np.asarray(x).dtype),
    "identity": lambda x: x,
}

for _name, _fn in _UNARY.items():
    op(_name)(lambda x, _fn=_fn: _fn(np.asarray(x)))


@op("inverse")
def inverse(x, epsilon=1e-4):
    return 1.0 / (x + as_float(epsilon))


@op("rsqrt")
def rsqrt(x, epsilon=1e-12):
    return 1.0 / np.sqrt(x + as_float(epsilon))


@op("log")
def log(x, epsilon=1e-45):
    return np.log(x + as_float(epsilon))


@op("clip")
def clip(x, alpha, beta):
    return np.minimum(np.maximum(x, as_float(alpha)), as_float(beta))


@op("threshold")
def threshold(x, alpha):
    return np.maximum(x, as_float(alpha))


@op("gelu")
def gelu(x, mode="EXACT"):
    mode = as_str(mode)
    x64 = np.asarray(x, dtype=np.float64)
    if mode == "TANH_APPROXIMATION":
        inner = np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3)
        out = 0.5 * x64 * (1 + np.tanh(inner))
    elif mode == "SIGMOID_APPROXIMATION":
        out = x64 * _sigmoid(1.702 * x64)
    elif mode == "EXACT":
        out = 0.5 * x64 * (1 + erf(x64 / np.sqrt(2)))
    else:
        raise ValueError(f"unknown gelu mode {mode}")
    return out.astype(np.asarray(x).dtype)


@op("sigmoid_hard")
def sigmoid_hard(x, alpha, beta):
    return np.clip(as_float(alpha) * x + as_float(beta), 0, 1)


@op("thresholded_relu")
def thresholded_relu(x, alpha):
    return np.where(x >= as_float(alpha), x, 0).astype(np.asarray(x).dtype)


@op("leaky_relu")
def leaky_relu(x, alpha):
    return np.where(x >= 0, x, as_float(alpha) * x)


@op("elu")
def elu(x, alpha):
    return np.where(x > 0, x, as_float(alpha) * np.expm1(np.minimum(x, 0)))


@op("clamped_relu")
def clamped_relu(x, alpha, beta):
    return np.minimum(np.where(x >= 0, x, as_float(alpha) * x), as_float(beta))


@op("linear_activation")
def linear_activation(x, alpha, beta):
    return as_float(alpha) * x + as_float(beta)


@op("scaled_tanh")
def scaled_tanh(x, alpha, beta):
    return as_float(alpha) * np.tanh(as_float(beta) * x)


@op("prelu")
def prelu(x, alpha):
    return np.where(x >= 0, x, channel_view(alpha, x.ndim) * x)


@op("softplus_parametric")
def softplus_parametric(x, alpha, beta):
    a, b = channel_view(alpha, x.ndim), channel_view(beta, x.ndim)
    return a * np.logaddexp(0, b * x)


@op("softmax")
def softmax(x, axis=-1):
    dim = normalize_axis(axis, x.ndim)
    shifted = np.exp(x - np.max(x, axis=dim, keepdims=True))
    return shifted / np.sum(shifted, axis=dim, keepdims=True)


@op("cast")
def cast(x, dtype):
    target = as_str(dtype)
    if target not in CAST_TARGETS:
        raise ValueError(f"cast to {target} is not supported")
    x = np.asarray(x)
    if np.dtype(CAST_TARGETS[target]).kind in "iu" and x.dtype.kind == "f":
        x = np.trunc(x)
    return x.astype(CAST_TARGETS[target])


@op("select")
def select(cond, a, b):
    return np.where(np.asarray(cond).astype(bool), a, b)
