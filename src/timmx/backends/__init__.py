"""Backend registry: each module in this package registers its backend with `@register`.

Third-party packages can add backends through the `timmx.backends` entry-point group.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import sys
import types
from importlib.metadata import entry_points
from typing import TypeVar

from timmx.backends._load_order import load_triton_before_tensorflow
from timmx.backends.base import Backend
from timmx.errors import InvalidInputError

load_triton_before_tensorflow()  # before any backend imports TensorFlow: see _load_order

B = TypeVar("B", bound=type[Backend])

_REGISTRY: dict[str, Backend] = {}
_discovered = False


def register(cls: B) -> B:
    """Class decorator: make `cls` the backend of its `name`; a second one of that name is a
    mistake (two packages claiming one backend), refused rather than silently replacing it."""
    existing = _REGISTRY.get(cls.name)
    if existing is not None:
        if type(existing).__qualname__ == cls.__qualname__ and (
            type(existing).__module__ == cls.__module__
        ):
            return cls  # the same class, registered again by a reloaded module
        raise ValueError(
            f"backend '{cls.name}' is already registered by "
            f"{type(existing).__module__}.{type(existing).__qualname__}"
        )
    _REGISTRY[cls.name] = cls()
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    for entry in entry_points(group="timmx.backends"):
        entry.load()


def all_backends() -> list[Backend]:
    _discover()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get_backend(name: str) -> Backend:
    _discover()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"choose one of {', '.join(_REGISTRY)}"
        raise InvalidInputError(f"unknown backend '{name}': {hint}")
    return _REGISTRY[name]


class _Package(types.ModuleType):
    """Upstream timmx's API has a function `timmx.backends()` listing the backend names, and
    `timmx.backends` is also this package: calling the package lists them, so both hold."""

    def __call__(self) -> list[str]:
        return [backend.name for backend in all_backends()]


sys.modules[__name__].__class__ = _Package
