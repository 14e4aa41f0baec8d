"""Shape and layout ops: reshape, transpose, concat, split, slice, pad, gather..."""

from __future__ import annotations

import numpy as np

from timmx.mil_reference.args import (
    as_bool,
    as_bools,
    as_float,
    as_int,
    as_ints,
    as_str,
    normalize_axes,
    normalize_axis,
)
from timmx.mil_reference.registry import op


@op("reshape")
def reshape(x, shape):
    x = np.asarray(x)
    target = as_ints(shape)
    if len(target) == x.ndim:  # 0 keeps the input's size in that position
        target = [x.shape[i] if size == 0 else size for i, size in enumerate(target)]
    return x.reshape(target)


@op("transpose")
def transpose(x, perm):
    return np.transpose(x, as_ints(perm))


@op("concat")
def concat(values, axis, interleave=None):
    rank = np.ndim(values[0])
    dim = normalize_axis(axis, rank)
    if interleave is not None and as_bool(interleave):
        stacked = np.stack(values, axis=dim + 1)
        shape = list(values[0].shape)
        shape[dim] = sum(v.shape[dim] for v in values)
        return stacked.reshape(shape)
    return np.concatenate(values, axis=dim)


@op("stack")
def stack(values, axis):
    return np.stack(values, axis=normalize_axis(axis, np.ndim(values[0]) + 1))


@op("split")
def split(x, axis, num_splits=None, split_sizes=None):
    dim = normalize_axis(axis, x.ndim)
    if split_sizes is not None:
        sizes = as_ints(split_sizes)
    else:
        count = as_int(num_splits)
        if x.shape[dim] % count:
            raise ValueError(f"size {x.shape[dim]} does not split into {count} equal parts")
        sizes = [x.shape[dim] // count] * count
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=dim))


@op("squeeze")
def squeeze(x, axes=None):
    x = np.asarray(x)
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=normalize_axes(axes, x.ndim))


@op("expand_dims")
def expand_dims(x, axes):
    x = np.asarray(x)
    rank = x.ndim + len(as_ints(axes))
    return np.expand_dims(x, normalize_axes(axes, rank))


@op("slice_by_index")
def slice_by_index(x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    x = np.asarray(x)
    rank = x.ndim
    begin, end = as_ints(begin), as_ints(end)
    stride = as_ints(stride) if stride is not None else [1] * rank
    begin_mask, end_mask = as_bools(begin_mask, rank), as_bools(end_mask, rank)
    squeeze_mask = as_bools(squeeze_mask, rank)
    index: list = []
    for i in range(rank):
        if squeeze_mask[i]:
            index.append(begin[i])
            continue
        start = None if begin_mask[i] else begin[i]
        stop = None if end_mask[i] else end[i]
        index.append(slice(start, stop, stride[i]))
    return np.asarray(x[tuple(index)])


@op("slice_by_size")
def slice_by_size(x, begin, size):
    x = np.asarray(x)
    index = []
    for start, length, dim in zip(as_ints(begin), as_ints(size), x.shape, strict=True):
        start = start + dim if start < 0 else start
        index.append(slice(start, None if length == -1 else start + length))
    return x[tuple(index)]


@op("tile")
def tile(x, reps):
    return np.tile(x, as_ints(reps))


@op("pad")
def pad(x, pad, mode=None, constant_val=None):
    x = np.asarray(x)
    amounts = as_ints(pad)
    count = len(amounts) // 2
    widths = [(0, 0)] * (x.ndim - count)
    widths += [(amounts[2 * i], amounts[2 * i + 1]) for i in range(count)]
    kind = as_str(mode) if mode is not None else "constant"
    if kind == "constant":
        value = as_float(constant_val) if constant_val is not None else 0.0
        return np.pad(x, widths, mode="constant", constant_values=value)
    if kind == "reflect":
        return np.pad(x, widths, mode="reflect")
    if kind == "replicate":
        return np.pad(x, widths, mode="edge")
    raise ValueError(f"unknown pad mode {kind}")


@op("gather")
def gather(x, indices, axis=0, batch_dims=0, validate_indices=None):
    x, indices = np.asarray(x), np.asarray(indices).astype(np.int64)
    dim = normalize_axis(axis, x.ndim)
    if as_int(batch_dims) != 0:
        raise ValueError("gather with batch_dims is not supported")
    indices = np.where(indices < 0, indices + x.shape[dim], indices)
    return np.take(x, indices, axis=dim)


@op("gather_along_axis")
def gather_along_axis(x, indices, axis=0, validate_indices=None):
    x, indices = np.asarray(x), np.asarray(indices).astype(np.int64)
    dim = normalize_axis(axis, x.ndim)
    indices = np.where(indices < 0, indices + x.shape[dim], indices)
    return np.take_along_axis(x, indices, axis=dim)


@op("shape")
def shape(x):
    return np.array(np.shape(x), dtype=np.int32)


@op("range_1d")
def range_1d(start, end, step):
    return np.arange(np.asarray(start).item(), np.asarray(end).item(), np.asarray(step).item())


@op("fill")
def fill(shape, value=0.0):
    return np.full(as_ints(shape), np.asarray(value).item())


@op("flatten2d")
def flatten2d(x, axis=1):
    x = np.asarray(x)
    dim = normalize_axis(axis, x.ndim)
    return x.reshape(int(np.prod(x.shape[:dim])), -1)


@op("reverse")
def reverse(x, axes=None):
    return np.flip(x, axis=normalize_axes(axes, np.ndim(x)))


@op("pixel_shuffle")
def pixel_shuffle(x, upscale_factor):
    r = as_int(upscale_factor)
    n, c, h, w = x.shape
    out = x.reshape(n, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3)
    return out.reshape(n, c // (r * r), h * r, w * r)


@op("space_to_depth")
def space_to_depth(x, block_size):
    r = as_int(block_size)
    n, c, h, w = x.shape
    out = x.reshape(n, c, h // r, r, w // r, r).transpose(0, 3, 5, 1, 2, 4)
    return out.reshape(n, c * r * r, h // r, w // r)


@op("depth_to_space")
def depth_to_space(x, block_size):
    r = as_int(block_size)
    n, c, h, w = x.shape
    out = x.reshape(n, r, r, c // (r * r), h, w).transpose(0, 3, 4, 1, 5, 2)
    return out.reshape(n, c // (r * r), h * r, w * r)


@op("classify")
def classify(probabilities, classes):
    """Returns the top class label and, for the probabilities output, the vector itself."""
    vector = np.asarray(probabilities).reshape(-1)
    labels = [np.asarray(c).reshape(-1)[0] for c in classes]
    if len(labels) != vector.size:
        raise ValueError(f"{len(labels)} class labels for {vector.size} scores")
    return np.array(labels[int(np.argmax(vector))], dtype=object), np.asarray(probabilities)
