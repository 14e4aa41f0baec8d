"""Run a loaded ML program op by op with the numpy implementations in this package."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from timmx.mil_reference.dtypes import numpy_type
from timmx.mil_reference.program import Function, Operation, Program, TensorType
from timmx.mil_reference.registry import VARIADIC, load_all


class EvaluationError(RuntimeError):
    """An op could not be evaluated, or gave a result the program does not declare."""


class UnsupportedOpsError(EvaluationError):
    def __init__(self, unsupported: dict[str, int]) -> None:
        names = ", ".join(f"{name} (x{count})" for name, count in unsupported.items())
        super().__init__(f"no reference implementation for {names}")
        self.unsupported = unsupported


def is_constant(op: Operation) -> bool:
    return op.type == "const" or op.type.startswith("constexpr_")


class Evaluator:
    """Evaluates one function of a program. Float16 tensors are computed in float32 and each
    op's result is cast to the type the program declares, so fp16 storage is reproduced."""

    def __init__(self, program: Program, function: str = "main") -> None:
        self.ops = load_all()
        self.function: Function = program.functions[function]
        missing: Counter[str] = Counter()
        for op in self.function.operations:
            if op.type not in self.ops and op.type != "const":
                missing[op.type] += 1
            elif op.nested_blocks:
                missing[f"{op.type} with nested blocks"] += 1
        self.unsupported: dict[str, int] = dict(sorted(missing.items()))
        self._constants: dict[str, Any] | None = None

    @property
    def input_names(self) -> list[str]:
        return [name for name, _ in self.function.inputs]

    def op_counts(self) -> dict[str, int]:
        counts = Counter(op.type for op in self.function.operations)
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def constants(self) -> dict[str, Any]:
        """Every const and constexpr (decompressed) value, computed once."""
        if self._constants is None:
            if self.unsupported:
                raise UnsupportedOpsError(self.unsupported)
            env: dict[str, Any] = {}
            for op in self.function.operations:
                if is_constant(op):
                    self._run_op(op, env)
            self._constants = env
        return self._constants

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        if self.unsupported:
            raise UnsupportedOpsError(self.unsupported)
        env = dict(self.constants())
        for name, declared in self.function.inputs:
            if name not in feeds:
                raise EvaluationError(f"no value given for the program input '{name}'")
            env[name] = _conform(np.asarray(feeds[name]), declared, f"input '{name}'")
        for op in self.function.operations:
            if not is_constant(op):
                self._run_op(op, env)
        return {name: env[name] for name in self.function.outputs}

    def _run_op(self, op: Operation, env: dict[str, Any]) -> None:
        if op.type == "const":
            result: Any = op.attributes["val"]
        else:
            kwargs = {k: v for k, v in op.attributes.items() if k != "name"}
            for key, bindings in op.inputs.items():
                values = [
                    _compute(env[b.name] if b.name is not None else b.value) for b in bindings
                ]
                variadic = (op.type, key) in VARIADIC or len(values) != 1
                kwargs[key] = values if variadic else values[0]
            try:
                result = self.ops[op.type](**kwargs)
            except EvaluationError:
                raise
            except Exception as exc:
                raise EvaluationError(f"{op.type} '{op.name}' failed: {exc}") from exc
        results = result if isinstance(result, tuple) else (result,)
        if len(results) != len(op.outputs):
            raise EvaluationError(
                f"{op.type} '{op.name}' gave {len(results)} outputs, the program declares "
                f"{len(op.outputs)}"
            )
        for (name, declared), value in zip(op.outputs, results, strict=True):
            where = f"{op.type} '{op.name}'"
            env[name] = value if declared is None else _conform(value, declared, where)


def _compute(value: Any) -> Any:
    """Half-precision tensors are computed in single precision."""
    if isinstance(value, np.ndarray) and value.dtype == np.float16:
        return value.astype(np.float32)
    return value


def _conform(value: Any, declared: TensorType, where: str) -> Any:
    array = np.asarray(value)
    np_type = numpy_type(declared.dtype)
    if np_type is not None and np_type is not np.object_ and array.dtype != np_type:
        array = array.astype(np_type)
    shape = declared.shape
    if shape is not None and (
        array.ndim != len(shape)
        or any(
            want is not None and want != got for want, got in zip(shape, array.shape, strict=False)
        )
    ):
        wanted = ["?" if d is None else d for d in shape]
        raise EvaluationError(
            f"{where}: computed shape {list(array.shape)}, the program declares {wanted}"
        )
    return array
