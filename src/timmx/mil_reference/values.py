"""Decode MIL values: immediate values inside the protobuf and blobs in the weight files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from timmx.mil_reference.dtypes import SUB_BYTE_BITS, from_proto_name, unpack_bits


class ValueDecoder:
    """Turns `MIL_pb2.Value` messages into numpy arrays (lists and dicts for those types)."""

    def __init__(self, weights_dir: Path) -> None:
        self.weights_dir = weights_dir
        self._readers: dict[Path, Any] = {}

    def decode(self, value: Any) -> Any:
        kind = value.type.WhichOneof("type")
        if kind == "tensorType":
            dtype, np_type = from_proto_name(proto_type_name(value.type.tensorType.dataType))
            shape = tensor_shape(value.type.tensorType)
            if shape is None or None in shape:
                raise ValueError("a constant value has no fixed shape")
            if np_type is None:
                raise ValueError(f"values of type {dtype} are not supported")
            if value.WhichOneof("value") == "blobFileValue":
                flat = self._read_blob(value.blobFileValue, dtype)
            else:
                flat = _immediate_tensor(value.immediateValue.tensor, dtype, np_type, shape)
            if dtype == "string":
                return np.array(list(flat), dtype=object).reshape(shape)
            return np.asarray(flat).astype(np_type, copy=False).reshape(shape)
        if kind == "listType":
            element = value.immediateValue.list.values
            return [self.decode(v) for v in element]
        if kind == "dictionaryType":
            return {
                _scalar(self.decode(e.key)): self.decode(e.value)
                for e in value.immediateValue.dictionary.values
            }
        raise ValueError(f"values of kind {kind} are not supported")

    def _read_blob(self, blob: Any, dtype: str) -> np.ndarray:
        path = self.weights_dir / blob.fileName.removeprefix("@model_path/")
        reader = self._readers.get(path)
        if reader is None:
            if not path.is_file():
                raise FileNotFoundError(f"weight file {path.name} is missing")
            from coremltools.libmilstoragepython import _BlobStorageReader

            reader = self._readers[path] = _BlobStorageReader(str(path))
        read = {"fp32": "float", "fp16": "fp16"}.get(dtype, dtype)
        method = getattr(reader, f"read_{read}_data", None)
        if method is None:
            raise ValueError(f"weights of type {dtype} cannot be read")
        data = np.asarray(method(blob.offset))
        if dtype == "fp16":  # the reader hands back the raw 16-bit words
            data = data.view(np.float16)
        return data


def proto_type_name(value: int) -> str:
    from coremltools.proto import MIL_pb2

    return MIL_pb2.DataType.Name(value)


def tensor_shape(tensor_type: Any) -> tuple[int | None, ...] | None:
    """Constant sizes, None for a flexible dimension; None for a tensor of unknown rank."""
    if tensor_type.rank < 0:
        return None
    dims = []
    for dim in tensor_type.dimensions:
        dims.append(dim.constant.size if dim.WhichOneof("dimension") == "constant" else None)
    return tuple(dims)


def _immediate_tensor(tensor: Any, dtype: str, np_type: type, shape: tuple) -> Any:
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    field = tensor.WhichOneof("value")
    if field == "bytes":
        raw = np.frombuffer(tensor.bytes.values, dtype=np.uint8)
        if dtype in SUB_BYTE_BITS:
            return unpack_bits(raw, SUB_BYTE_BITS[dtype], count, signed=dtype == "int4")
        return np.frombuffer(tensor.bytes.values, dtype=np_type)[:count]
    if field is None:
        return np.zeros(count, dtype=np_type)
    values = list(getattr(tensor, field).values)
    if field == "strings":
        return values
    return np.array(values)


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.ndarray) and value.size == 1 else value
