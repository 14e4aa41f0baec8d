"""A reference evaluator for Core ML ML programs: runs a saved `.mlpackage` with numpy.

Core ML itself only predicts on Apple platforms. This package reads the saved program (the
MIL protobuf inside the package and its `weight.bin`), walks its operations in order and runs
each with a plain numpy implementation of the op's documented semantics, so an ML program can
be checked numerically on Linux. Ops without an implementation are reported by name, never
skipped.

    program = load_program("model.mlpackage")
    evaluator = Evaluator(program)          # evaluator.unsupported lists missing op types
    outputs = evaluator.run({"input": x})   # {output name: np.ndarray}
"""

from timmx.mil_reference.evaluate import EvaluationError, Evaluator, UnsupportedOpsError
from timmx.mil_reference.program import (
    Function,
    MILFormatError,
    Operation,
    Program,
    TensorType,
    load_program,
)
from timmx.mil_reference.registry import supported_ops

__all__ = [
    "EvaluationError",
    "Evaluator",
    "Function",
    "MILFormatError",
    "Operation",
    "Program",
    "TensorType",
    "UnsupportedOpsError",
    "load_program",
    "supported_ops",
]
