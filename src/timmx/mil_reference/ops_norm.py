"""Normalisation layers and reductions."""

from __future__ import annotations

import numpy as np

from timmx.mil_reference.args import (
    as_bool,
    as_float,
    channel_view,
    normalize_axes,
    normalize_axis,
)
from timmx.mil_reference.registry import op


@op("batch_norm")
def batch_norm(x, mean, variance, gamma=None, beta=None, epsilon=1e-5):
    rank = x.ndim
    out = (x - channel_view(mean, rank)) / np.sqrt(channel_view(variance, rank) + as_float(epsilon))
    if gamma is not None:
        out = out * channel_view(gamma, rank)
    if beta is not None:
        out = out + channel_view(beta, rank)
    return out


def _normalize(x, axes, epsilon):
    x64 = np.asarray(x, dtype=np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = np.square(x64 - mean).mean(axis=axes, keepdims=True)
    return (x64 - mean) / np.sqrt(var + as_float(epsilon))


@op("layer_norm")
def layer_norm(x, axes=None, gamma=None, beta=None, epsilon=1e-5):
    dims = normalize_axes(axes, x.ndim)
    out = _normalize(x, dims, epsilon)
    shape = [x.shape[i] if i in dims else 1 for i in range(x.ndim)]
    if gamma is not None:
        out = out * np.asarray(gamma).reshape(shape)
    if beta is not None:
        out = out + np.asarray(beta).reshape(shape)
    return out.astype(x.dtype)


@op("instance_norm")
def instance_norm(x, gamma=None, beta=None, epsilon=1e-5):
    out = _normalize(x, tuple(range(2, x.ndim)), epsilon)
    if gamma is not None:
        out = out * channel_view(gamma, x.ndim)
    if beta is not None:
        out = out + channel_view(beta, x.ndim)
    return out.astype(x.dtype)


@op("l2_norm")
def l2_norm(x, axes=None, epsilon=1e-6):
    dims = normalize_axes(axes, x.ndim) if axes is not None else tuple(range(x.ndim - 3, x.ndim))
    x64 = np.asarray(x, dtype=np.float64)
    norm = np.sqrt(np.square(x64).sum(axis=dims, keepdims=True) + as_float(epsilon))
    return (x64 / norm).astype(x.dtype)


def _reduction(fn):
    def reduce(x, axes=None, keep_dims=None):
        dims = normalize_axes(axes, np.ndim(x))
        keep = keep_dims is not None and as_bool(keep_dims)
        return fn(np.asarray(x), dims, keep)

    return reduce


_REDUCTIONS = {
    "reduce_mean": lambda x, a, k: x.mean(axis=a, keepdims=k, dtype=np.float64).astype(x.dtype),
    "reduce_sum": lambda x, a, k: x.sum(axis=a, keepdims=k),
    "reduce_max": lambda x, a, k: x.max(axis=a, keepdims=k),
    "reduce_min": lambda x, a, k: x.min(axis=a, keepdims=k),
    "reduce_prod": lambda x, a, k: x.prod(axis=a, keepdims=k),
    "reduce_l1_norm": lambda x, a, k: np.abs(x).sum(axis=a, keepdims=k),
    "reduce_l2_norm": lambda x, a, k: np.sqrt(np.square(x).sum(axis=a, keepdims=k)),
    "reduce_sum_square": lambda x, a, k: np.square(x).sum(axis=a, keepdims=k),
    "reduce_log_sum": lambda x, a, k: np.log(x.sum(axis=a, keepdims=k)),
    "reduce_log_sum_exp": lambda x, a, k: _log_sum_exp(x, a, k),
}


def _log_sum_exp(x, axes, keep):
    peak = x.max(axis=axes, keepdims=True)
    out = np.log(np.exp(x - peak).sum(axis=axes, keepdims=True)) + peak
    return out if keep else np.squeeze(out, axis=axes)


for _name, _fn in _REDUCTIONS.items():
    op(_name)(_reduction(_fn))


def _arg_reduction(fn):
    def reduce(x, axis=-1, keep_dims=None):
        dim = normalize_axis(axis, np.ndim(x))
        out = fn(np.asarray(x), axis=dim)
        if keep_dims is not None and as_bool(keep_dims):
            out = np.expand_dims(out, dim)
        return out.astype(np.int32)

    return reduce


op("reduce_argmax")(_arg_reduction(np.argmax))
op("reduce_argmin")(_arg_reduction(np.argmin))
