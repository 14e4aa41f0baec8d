"""Around every call into a converter: its warnings, log lines and progress output kept off the
terminal, in one place; and (`fewer_collections`) less garbage-collector work.

The runner wraps every call into a backend's converter or runtime (export, load, inspect) in
`converters_quiet()`; the caller's warning filters, logger levels, stdout and environment are
restored afterwards. stdout matters most: it carries `--json` reports; stderr carries progress
bars (coremltools' tqdm). `verbose` (--debug) lets everything through.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator

# Loggers of converters that log at INFO/WARNING while they work.
_LOGGERS = (
    "coremltools",
    "torch.utils._pytree",
    "torch._export",
    "torch.export",
    "torch.onnx",
    "onnxscript",
    "absl",
)
# Progress output that converters switch off through the environment (read at each call; tqdm
# reads its own variables once at import, so its bars are caught with stderr instead).
_ENVIRONMENT = {"LITERT_TORCH_SHOW_PROGRESS": "n"}


@contextlib.contextmanager
def converters_quiet(verbose: bool = False) -> Iterator[None]:
    if verbose:
        yield
        return
    levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    previous_env = {name: os.environ.get(name) for name in _ENVIRONMENT}
    try:
        for name in _LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        os.environ.update(_ENVIRONMENT)
        captured = io.StringIO()
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(captured),
            contextlib.redirect_stderr(captured),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for name, value in previous_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Importing torch and timm, and the converters (torch.export, the ONNX exporter), allocate
    millions of small objects that live on; CPython's cyclic collector scans them again and
    again. Collect less often meanwhile (measured on 2 cores: importing timm and the ONNX stack
    4.2-4.5 s instead of 5.2-6.6 s, an ONNX export of resnet18 about 15% faster), and restore
    the caller's thresholds afterwards."""
    import gc

    previous = gc.get_threshold()
    gc.set_threshold(50_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*previous)
