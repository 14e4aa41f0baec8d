"""Import coremltools and say when it was not tested with this torch release.

The runner's `converters_quiet()` keeps coremltools' import-time log lines and warnings quiet.
"""

from __future__ import annotations


def import_coremltools():
    """Import coremltools quietly; returns (module, a warning about the torch version or None)."""
    import coremltools as ct
    import torch

    from timmx.environment import newer_release

    try:
        from coremltools._deps import _TORCH_MAX_VERSION as tested
    except ImportError:
        tested = None
    warning = None
    if tested is not None and newer_release(torch.__version__, tested):
        warning = (
            f"coremltools {ct.__version__} was tested with torch up to {tested}; this is torch "
            f"{torch.__version__.split('+')[0]}"
        )
    return ct, warning
