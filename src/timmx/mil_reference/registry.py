"""The table of op implementations, keyed by MIL op type."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

OpFunction = Callable[..., Any]

# op type -> implementation; an implementation takes the op's inputs and attributes as keyword
# arguments (numpy arrays, lists for variadic inputs) and returns an array or a tuple of them.
OPS: dict[str, OpFunction] = {}
# inputs that take a list of tensors, always passed as a list
VARIADIC = {("concat", "values"), ("stack", "values")}


def op(*names: str) -> Callable[[OpFunction], OpFunction]:
    def register(fn: OpFunction) -> OpFunction:
        for name in names:
            OPS[name] = fn
        return fn

    return register


def load_all() -> dict[str, OpFunction]:
    from timmx.mil_reference import (  # noqa: F401 - each module registers its ops
        constexpr,
        ops_elementwise,
        ops_nn,
        ops_norm,
        ops_tensor,
    )

    return OPS


def supported_ops() -> list[str]:
    return sorted(load_all())
