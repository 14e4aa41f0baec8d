"""MIL data types: their short names and the numpy types that hold their values."""

from __future__ import annotations

import numpy as np

# proto DataType name -> (MIL short name, numpy dtype holding the values)
_BY_PROTO_NAME: dict[str, tuple[str, type | None]] = {
    "BOOL": ("bool", np.bool_),
    "STRING": ("string", np.object_),
    "FLOAT16": ("fp16", np.float16),
    "FLOAT32": ("fp32", np.float32),
    "FLOAT64": ("fp64", np.float64),
    "BFLOAT16": ("bf16", None),
    "FLOAT8E4M3FN": ("fp8e4m3fn", None),
    "FLOAT8E5M2": ("fp8e5m2", None),
    "INT4": ("int4", np.int8),
    "INT8": ("int8", np.int8),
    "INT16": ("int16", np.int16),
    "INT32": ("int32", np.int32),
    "INT64": ("int64", np.int64),
    "UINT1": ("uint1", np.uint8),
    "UINT2": ("uint2", np.uint8),
    "UINT3": ("uint3", np.uint8),
    "UINT4": ("uint4", np.uint8),
    "UINT6": ("uint6", np.uint8),
    "UINT8": ("uint8", np.uint8),
    "UINT16": ("uint16", np.uint16),
    "UINT32": ("uint32", np.uint32),
    "UINT64": ("uint64", np.uint64),
}

SUB_BYTE_BITS = {"int4": 4, "uint1": 1, "uint2": 2, "uint3": 3, "uint4": 4, "uint6": 6}
FLOATS = ("fp16", "fp32", "fp64")

# the dtype strings a `cast` op takes
CAST_TARGETS = {
    "fp16": np.float16,
    "fp32": np.float32,
    "fp64": np.float64,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "int64": np.int64,
    "bool": np.bool_,
}


def from_proto_name(name: str) -> tuple[str, type | None]:
    if name not in _BY_PROTO_NAME:
        raise ValueError(f"unknown MIL data type {name}")
    return _BY_PROTO_NAME[name]


def numpy_type(dtype: str) -> type | None:
    for short, np_type in _BY_PROTO_NAME.values():
        if short == dtype:
            return np_type
    return None


def unpack_bits(packed: np.ndarray, nbits: int, count: int, signed: bool = False) -> np.ndarray:
    """Elements packed least significant bit first, as Core ML stores sub-byte data."""
    bits = np.unpackbits(packed.astype(np.uint8).reshape(-1), bitorder="little")
    if bits.size < count * nbits:
        raise ValueError(f"{bits.size} bits cannot hold {count} elements of {nbits} bits")
    bits = bits[: count * nbits].reshape(count, nbits).astype(np.int32)
    values = (bits << np.arange(nbits, dtype=np.int32)).sum(axis=1)
    if signed:
        values = np.where(values >= 1 << (nbits - 1), values - (1 << nbits), values)
        return values.astype(np.int8)
    return values.astype(np.uint8)
