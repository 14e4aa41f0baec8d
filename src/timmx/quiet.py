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
import sys
import warnings
from collections.abc import Iterator

# torch's own loggers that log while tracing: every converter traces with torch. Each
# converter's own loggers and environment variables are declared on its backend
# (`Backend.noisy_loggers`, `Backend.quiet_environment`).
_TORCH_LOGGERS = ("torch.utils._pytree", "torch._export", "torch.export")


def _declared() -> tuple[list[str], dict[str, str]]:
    """Every backend's noisy loggers (torch's first) and quiet environment. The backends'
    modules import only pydantic, so this loads no converter."""
    from timmx.backends import all_backends

    loggers, environment = list(_TORCH_LOGGERS), {}
    for backend in all_backends():
        loggers += [name for name in backend.noisy_loggers if name not in loggers]
        environment.update(backend.quiet_environment)
    return loggers, environment


@contextlib.contextmanager
def converters_quiet(verbose: bool = False) -> Iterator[None]:
    if verbose:
        yield
        return
    loggers, environment = _declared()
    levels = {name: logging.getLogger(name).level for name in loggers}
    previous_env = {name: os.environ.get(name) for name in environment}
    try:
        for name in loggers:
            logging.getLogger(name).setLevel(logging.ERROR)
        # Read at each call; tqdm reads its own variables once at import, so its bars are
        # caught with stderr instead.
        os.environ.update(environment)
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


def debug_output() -> bool:
    """--debug (the CLI's, where it runs) or TIMMX_DEBUG: other programs' log lines shown as
    they come (a container's stderr, Ray's), not kept in a log file."""
    console = sys.modules.get("timmx.cli.console")
    return bool(os.environ.get("TIMMX_DEBUG")) or bool(console and console.debug_enabled())
