"""What ran an export: Python, platform and package versions, for the report."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from timmx import __version__
from timmx.contract import Environment

_CORE = ("torch", "torchvision", "timm", "numpy")


def package_versions(names: tuple[str, ...] | list[str]) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def describe(extra_packages: tuple[str, ...] = ()) -> Environment:
    return Environment(
        python=platform.python_version(),
        platform=f"{platform.system()}-{platform.machine()}",
        timmx=__version__,
        packages=package_versions(list(dict.fromkeys((*_CORE, *extra_packages)))),
    )
