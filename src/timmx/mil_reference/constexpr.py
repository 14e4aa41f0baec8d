"""Compressed-weight ops: affine / block-wise dequantisation, look-up tables, sparsity.

Each is evaluated once, when the evaluator materialises its constants. Both the iOS16 and the
iOS18 forms are handled: iOS16 `constexpr_lut_to_dense` packs its indices in bytes and has a
1-D table; the iOS18 one takes unpacked sub-byte indices and a table per block.
"""

from __future__ import annotations

import numpy as np

from timmx.mil_reference.args import as_int, as_ints, as_str
from timmx.mil_reference.dtypes import CAST_TARGETS, unpack_bits
from timmx.mil_reference.registry import op


def _promote(values, data: np.ndarray, axis: int) -> np.ndarray:
    """A scalar or per-axis vector shaped to broadcast against `data` along `axis`."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0 or values.size == 1:
        return values.reshape(())
    shape = [1] * data.ndim
    shape[axis] = -1
    return values.reshape(shape)


@op("constexpr_affine_dequantize")
def constexpr_affine_dequantize(quantized_data, zero_point, scale, axis):
    data = np.asarray(quantized_data)
    dim = as_int(axis) % data.ndim
    out = (data.astype(np.float64) - _promote(zero_point, data, dim)) * _promote(scale, data, dim)
    return out.astype(np.asarray(scale).dtype)


def _repeat_blocks(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != len(shape):
        raise ValueError(f"rank {values.ndim} does not match the data's rank {len(shape)}")
    for dim, (size, blocks) in enumerate(zip(shape, values.shape, strict=True)):
        if size % blocks:
            raise ValueError(f"dim {dim}: {blocks} blocks do not divide {size}")
        if size != blocks:
            values = np.repeat(values, size // blocks, axis=dim)
    return values


@op("constexpr_blockwise_shift_scale")
def constexpr_blockwise_shift_scale(data, scale, offset=None):
    data = np.asarray(data)
    out = data.astype(np.float64)
    if offset is not None:
        out = out - _repeat_blocks(np.asarray(offset, dtype=np.float64), data.shape)
    out = out * _repeat_blocks(np.asarray(scale, dtype=np.float64), data.shape)
    return out.astype(np.asarray(scale).dtype)


@op("constexpr_cast")
def constexpr_cast(source_val, output_dtype):
    return np.asarray(source_val).astype(CAST_TARGETS[as_str(output_dtype)])


@op("constexpr_lut_to_dense")
def constexpr_lut_to_dense(indices, lut, shape=None, vector_axis=None):
    lut = np.asarray(lut)
    if shape is not None:  # iOS16: packed indices into one table
        shape = as_ints(shape)
        nbits = int(np.log2(lut.size))
        count = int(np.prod(shape))
        unpacked = unpack_bits(np.asarray(indices), nbits, count).astype(np.int64)
        return lut.reshape(-1)[unpacked].reshape(shape)
    return _lut_blocks(np.asarray(indices).astype(np.int64), lut, vector_axis)


def _lut_blocks(indices: np.ndarray, lut: np.ndarray, vector_axis) -> np.ndarray:
    """iOS18: lut has shape (*blocks, palettes, vector); each block of indices has its table."""
    rank = indices.ndim
    blocks, vector = lut.shape[:rank], lut.shape[-1]
    # the table of each element: repeat every block's table over its block
    block_index = np.indices(indices.shape)
    for dim in range(rank):
        block_index[dim] //= indices.shape[dim] // blocks[dim]
    values = lut[(*block_index, indices)]  # (*indices.shape, vector)
    if vector == 1:
        return values[..., 0]
    dim = as_int(vector_axis) % rank
    values = np.moveaxis(values, -1, dim + 1)  # vectors follow their index along `dim`
    shape = list(indices.shape)
    shape[dim] *= vector
    return values.reshape(shape)


@op("constexpr_sparse_to_dense")
def constexpr_sparse_to_dense(nonzero_data, mask, shape=None):
    nonzero = np.asarray(nonzero_data)
    if shape is not None:  # iOS16: a packed bit mask
        shape = as_ints(shape)
        bits = np.unpackbits(np.asarray(mask, dtype=np.uint8), bitorder="little")
        bits = bits[: int(np.prod(shape))]
    else:  # iOS18: a uint1 mask of the output's shape
        shape = list(np.shape(mask))
        bits = np.asarray(mask).reshape(-1)
    dense = np.zeros(int(np.prod(shape)), dtype=nonzero.dtype)
    dense[bits != 0] = nonzero.reshape(-1)
    return dense.reshape(shape)


@op("constexpr_lut_to_sparse")
def constexpr_lut_to_sparse(indices_mask, indices_nonzero_data, lut, vector_axis=None):
    mask = np.asarray(indices_mask)
    lut = np.asarray(lut)
    nonzero = np.asarray(indices_nonzero_data).astype(np.int64)
    dense_indices = np.zeros(mask.size, dtype=np.int64)
    dense_indices[mask.reshape(-1) != 0] = nonzero.reshape(-1)
    dense = _lut_blocks(dense_indices.reshape(mask.shape), lut, vector_axis)
    if lut.shape[-1] != 1:
        raise ValueError("vector palettization of sparse weights is not supported")
    return mask, dense[mask != 0]


@op("constexpr_sparse_blockwise_shift_scale")
def constexpr_sparse_blockwise_shift_scale(data_mask, nonzero_data, scale, offset=None):
    mask = np.asarray(data_mask)
    dense = np.zeros(mask.size, dtype=np.float64)
    dense[mask.reshape(-1) != 0] = np.asarray(nonzero_data, dtype=np.float64).reshape(-1)
    dense = dense.reshape(mask.shape)
    out = dense
    if offset is not None:
        out = out - _repeat_blocks(np.asarray(offset, dtype=np.float64), mask.shape)
    out = out * _repeat_blocks(np.asarray(scale, dtype=np.float64), mask.shape)
    return mask, out[mask != 0].astype(np.asarray(scale).dtype)
