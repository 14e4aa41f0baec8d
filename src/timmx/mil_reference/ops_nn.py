"""Convolution, pooling, linear layers, matmul, einsum and nearest-neighbour upsampling."""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from timmx.mil_reference.args import as_bool, as_float, as_int, as_ints, as_str
from timmx.mil_reference.registry import VARIADIC, op

VARIADIC.add(("einsum", "values"))


def _spatial_pads(
    pad_type, pad, sizes: tuple[int, ...], kernel: list[int], strides: list[int]
) -> list[tuple[int, int]]:
    """(before, after) padding per spatial dim; `kernel` is the dilated (effective) kernel."""
    kind = as_str(pad_type).lower() if pad_type is not None else "valid"
    if kind == "valid":
        return [(0, 0)] * len(sizes)
    if kind == "custom":
        values = as_ints(pad) if pad is not None else [0] * 2 * len(sizes)
        return [(values[2 * i], values[2 * i + 1]) for i in range(len(sizes))]
    if kind in ("same", "same_lower"):
        pads = []
        for size, k, s in zip(sizes, kernel, strides, strict=True):
            total = max(0, s * math.ceil(size / s) - size + k - s)
            small, large = total // 2, total - total // 2
            pads.append((small, large) if kind == "same" else (large, small))
        return pads
    raise ValueError(f"unknown pad_type {kind}")


def _windows(x: np.ndarray, kernel: list[int], strides: list[int], dilations: list[int]):
    """A view (N, C, *out, *kernel) of every window of an already padded `x`."""
    nsp = len(kernel)
    effective = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    view = sliding_window_view(x, effective, axis=tuple(range(2, 2 + nsp)))
    index = (slice(None), slice(None))
    index += tuple(slice(None, None, s) for s in strides)
    index += tuple(slice(None, None, d) for d in dilations)
    return view[index]


@op("conv")
def conv(x, weight, bias=None, strides=None, pad_type=None, pad=None, dilations=None, groups=1):
    x, weight = np.asarray(x), np.asarray(weight)
    nsp = x.ndim - 2
    kernel = list(weight.shape[2:])
    strides = as_ints(strides) if strides is not None else [1] * nsp
    dilations = as_ints(dilations) if dilations is not None else [1] * nsp
    effective = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    pads = _spatial_pads(pad_type, pad, x.shape[2:], effective, strides)
    padded = np.pad(x, [(0, 0), (0, 0), *pads])
    windows = _windows(padded, kernel, strides, dilations)  # N, C, *O, *K
    groups = as_int(groups)
    n, c = x.shape[:2]
    out_c, in_per_group = weight.shape[:2]
    if c != in_per_group * groups:
        raise ValueError(f"input has {c} channels, weight expects {in_per_group} x {groups}")
    sp = "".join(chr(ord("h") + i) for i in range(nsp))  # output positions
    kp = "".join(chr(ord("p") + i) for i in range(nsp))  # kernel positions
    if groups == 1:
        k_axes = list(range(2 + nsp, 2 + 2 * nsp))
        out = np.tensordot(windows, weight, axes=([1, *k_axes], [1, *range(2, 2 + nsp)]))
        out = np.moveaxis(out, -1, 1)
    elif in_per_group == 1:  # depthwise, with a channel multiplier
        w = weight.reshape(groups, out_c // groups, *kernel)
        out = np.einsum(f"nc{sp}{kp},cm{kp}->ncm{sp}", windows, w, optimize=True)
        out = out.reshape(n, out_c, *out.shape[3:])
    else:
        per_out = out_c // groups
        parts = []
        for g in range(groups):
            part = windows[:, g * in_per_group : (g + 1) * in_per_group]
            w = weight[g * per_out : (g + 1) * per_out]
            k_axes = list(range(2 + nsp, 2 + 2 * nsp))
            res = np.tensordot(part, w, axes=([1, *k_axes], [1, *range(2, 2 + nsp)]))
            parts.append(np.moveaxis(res, -1, 1))
        out = np.concatenate(parts, axis=1)
    if bias is not None:
        out = out + np.asarray(bias).reshape((1, -1) + (1,) * nsp)
    return out.astype(np.result_type(x.dtype, weight.dtype), copy=False)


def _pool_geometry(x, kernel_sizes, strides, pad_type, pad, ceil_mode):
    nsp = x.ndim - 2
    kernel = as_ints(kernel_sizes)
    strides = as_ints(strides) if strides is not None else [1] * nsp
    pads = _spatial_pads(pad_type, pad, x.shape[2:], kernel, strides)
    extra = [0] * nsp  # ceil mode: room for a last, partial window (never counted)
    if ceil_mode is not None and as_bool(ceil_mode):
        for i, (size, k, s, (before, after)) in enumerate(
            zip(x.shape[2:], kernel, strides, pads, strict=True)
        ):
            total = before + after
            out = (size + total - k + s - 1) // s + 1
            if (out - 1) * s >= size + total / 2 and total > 0:
                out -= 1
            extra[i] = max(0, (out - 1) * s + k - (size + total))
    return kernel, strides, pads, extra


def _pool(x, kernel, strides, pads, extra, fill):
    widths = [(0, 0), (0, 0)] + [(b, a + e) for (b, a), e in zip(pads, extra, strict=True)]
    padded = np.pad(x, widths, constant_values=fill)
    return _windows(padded, kernel, strides, [1] * len(kernel)), widths


@op("max_pool")
def max_pool(x, kernel_sizes, pad_type, strides=None, pad=None, ceil_mode=None):
    geometry = _pool_geometry(x, kernel_sizes, strides, pad_type, pad, ceil_mode)
    windows, _ = _pool(x, *geometry, fill=-np.inf)
    nsp = x.ndim - 2
    return windows.max(axis=tuple(range(-nsp, 0)))


@op("avg_pool")
def avg_pool(
    x,
    kernel_sizes,
    pad_type,
    strides=None,
    pad=None,
    exclude_padding_from_average=None,
    ceil_mode=None,
):
    kernel, strides, pads, extra = _pool_geometry(
        x, kernel_sizes, strides, pad_type, pad, ceil_mode
    )
    nsp = x.ndim - 2
    k_axes = tuple(range(-nsp, 0))
    windows, _ = _pool(x, kernel, strides, pads, extra, fill=0.0)
    sums = windows.sum(axis=k_axes, dtype=np.float64)
    exclude = exclude_padding_from_average is not None and as_bool(exclude_padding_from_average)
    ones = np.ones((1, 1, *x.shape[2:]))
    # explicit padding counts unless excluded; the room ceil mode adds never does
    explicit = [(0, 0), (0, 0), *pads]
    counted = np.pad(ones, explicit, constant_values=0.0 if exclude else 1.0)
    counted = np.pad(counted, [(0, 0), (0, 0)] + [(0, e) for e in extra])
    counts = _windows(counted, kernel, strides, [1] * nsp).sum(axis=k_axes)
    return (sums / counts).astype(x.dtype)


@op("l2_pool")
def l2_pool(x, kernel_sizes, pad_type, strides=None, pad=None, ceil_mode=None):
    geometry = _pool_geometry(x, kernel_sizes, strides, pad_type, pad, ceil_mode)
    windows, _ = _pool(x, *geometry, fill=0.0)
    nsp = x.ndim - 2
    return np.sqrt(np.square(windows).sum(axis=tuple(range(-nsp, 0))))


@op("linear")
def linear(x, weight, bias=None):
    out = np.matmul(x, np.asarray(weight).T)
    return out if bias is None else out + bias


@op("matmul")
def matmul(x, y, transpose_x=None, transpose_y=None):
    x, y = np.asarray(x), np.asarray(y)
    if transpose_x is not None and as_bool(transpose_x):
        x = np.swapaxes(x, -1, -2)
    if transpose_y is not None and as_bool(transpose_y):
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


@op("einsum")
def einsum(values, equation):
    return np.einsum(as_str(equation), *values, optimize=True)


def _nearest(x: np.ndarray, axis: int, out_size: int, scale: float) -> np.ndarray:
    index = np.floor(np.arange(out_size) / scale).astype(np.int64)
    return np.take(x, np.minimum(index, x.shape[axis] - 1), axis=axis)


@op("upsample_nearest_neighbor")
def upsample_nearest_neighbor(x, scale_factor_height=1, scale_factor_width=1):
    sh, sw = as_float(scale_factor_height), as_float(scale_factor_width)
    h, w = x.shape[-2:]
    out = _nearest(x, -2, math.floor(h * sh), sh)
    return _nearest(out, -1, math.floor(w * sw), sw)


@op("resize_nearest_neighbor")
def resize_nearest_neighbor(x, target_size_height, target_size_width):
    h, w = x.shape[-2:]
    th, tw = as_int(target_size_height), as_int(target_size_width)
    return _nearest(_nearest(x, -2, th, th / h), -1, tw, tw / w)


@op("scaled_dot_product_attention")
def scaled_dot_product_attention(query, key, value, attn_mask=None):
    q, k, v = (np.asarray(t, dtype=np.float64) for t in (query, key, value))
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) / math.sqrt(q.shape[-1])
    if attn_mask is not None:
        mask = np.asarray(attn_mask)
        scores = np.where(mask, scores, -np.inf) if mask.dtype == bool else scores + mask
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights = scores / scores.sum(axis=-1, keepdims=True)
    return np.matmul(weights, v).astype(np.asarray(query).dtype)
