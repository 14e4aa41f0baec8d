"""Read scalar and list arguments of ops (constants arrive as numpy arrays)."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_int(value: Any) -> int:
    return int(np.asarray(value).reshape(-1)[0])


def as_ints(value: Any) -> list[int]:
    return [int(v) for v in np.asarray(value).reshape(-1)]


def as_float(value: Any) -> float:
    return float(np.asarray(value, dtype=np.float64).reshape(-1)[0])


def as_str(value: Any) -> str:
    return str(np.asarray(value, dtype=object).reshape(-1)[0])


def as_bool(value: Any) -> bool:
    return bool(np.asarray(value).reshape(-1)[0])


def as_bools(value: Any, count: int) -> list[bool]:
    if value is None:
        return [False] * count
    return [bool(v) for v in np.asarray(value).reshape(-1)]


def normalize_axis(value: Any, rank: int) -> int:
    index = as_int(value)
    return index + rank if index < 0 else index


def normalize_axes(value: Any, rank: int) -> tuple[int, ...]:
    if value is None:
        return tuple(range(rank))
    return tuple(sorted(a + rank if a < 0 else a for a in as_ints(value)))


def channel_view(values: Any, rank: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast over axis 1 of a rank-`rank` tensor."""
    vector = np.asarray(values).reshape(-1)
    return vector.reshape((1, -1) + (1,) * (rank - 2))
