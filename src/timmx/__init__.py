"""timmx: export timm image models to deployment formats, verified against PyTorch.

    from timmx import export
    result = export("onnx", "resnet18", checkpoint="ft.pth", num_classes=10, output="m.onnx")

`export`, `export_model` and `backends` are loaded on first use, so `import timmx` imports
neither torch nor any backend.
"""

from typing import Any

from timmx.errors import ConfigurationError, ExportError, TimmxError

__all__ = [
    "ConfigurationError",
    "ExportError",
    "TimmxError",
    "__version__",
    "backends",
    "bench",
    "export",
    "export_model",
]

_API = ("export", "export_model")


def __getattr__(name: str) -> Any:
    if name == "__version__":  # read on first use: importlib.metadata costs start-up time
        global __version__
        from importlib.metadata import PackageNotFoundError, version

        try:
            __version__ = version("timmx")
        except PackageNotFoundError:  # running from a source tree without an install
            __version__ = "0.0.0+source"
        return __version__
    if name in _API:
        from timmx import api

        return getattr(api, name)
    # Subpackages, callable: `timmx.backends()` lists the names, `timmx.bench(...)` benches.
    if name in ("backends", "bench"):
        import importlib

        return importlib.import_module(f"timmx.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
