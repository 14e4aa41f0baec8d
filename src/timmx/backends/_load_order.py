"""TensorFlow and torch's triton in one process: triton's LLVM library loaded after TensorFlow's
crashes the process (signal 11, their LLVM symbols clash); loaded before it, both work. Where
both are installed, triton is loaded first, when the backends package is imported: before
coremltools (which imports TensorFlow whenever it is installed) and the saved-model backend.
torch's CUDA wheels bring triton (torchvision.ops and torch.compile load it)."""

from __future__ import annotations

import contextlib
from importlib.util import find_spec


def load_triton_before_tensorflow() -> None:
    if find_spec("tensorflow") is None or find_spec("triton") is None:
        return
    with contextlib.suppress(ImportError):
        import triton._C.libtriton  # noqa: F401
