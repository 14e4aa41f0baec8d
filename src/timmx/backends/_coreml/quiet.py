"""Keep coremltools' progress bars, log lines and warnings off the terminal (and off stdout,
which carries `--json` reports)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

_LOGGERS = ("coremltools", "torch.utils._pytree", "torch._export", "torch.export")


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    captured = io.StringIO()
    levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    try:
        for name in _LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stderr(captured),
            contextlib.redirect_stdout(captured),
        ):
            warnings.simplefilter("ignore")
            yield captured
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def import_coremltools():
    """Import coremltools quietly; returns (module, a warning about the torch version or None)."""
    with quiet():
        import coremltools as ct
        import torch

        try:
            from coremltools._deps import _TORCH_MAX_VERSION as tested
        except ImportError:
            tested = None
    warning = None
    if tested is not None and _newer(torch.__version__, tested):
        warning = (
            f"coremltools {ct.__version__} was tested with torch up to {tested}; this is torch "
            f"{torch.__version__.split('+')[0]} (this export is verified numerically)"
        )
    return ct, warning


def _newer(version: str, than: str) -> bool:
    def parts(text: str) -> tuple[int, ...]:
        numbers = []
        for piece in text.split("+")[0].split(".")[:3]:
            digits = "".join(ch for ch in piece if ch.isdigit())
            numbers.append(int(digits or 0))
        return tuple(numbers)

    return parts(version) > parts(than)
