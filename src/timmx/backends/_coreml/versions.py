"""Import coremltools and say when it was not tested with this torch release.

The runner's `converters_quiet()` keeps coremltools' import-time log lines and warnings quiet.
"""

from __future__ import annotations


def import_coremltools():
    """Import coremltools quietly; returns (module, a warning about the torch version or None)."""
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
            f"{torch.__version__.split('+')[0]}"
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
