"""timmx: export timm image models to deployment formats, verified against PyTorch."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("timmx")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
