"""What ran an export: Python, platform and package versions, for the report."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from timmx import __version__
from timmx.contract import Environment

_CORE = ("torch", "torchvision", "timm", "numpy")


def newer_release(version: str, than: str) -> bool:
    """Whether release `version` is past `than`, by major.minor.patch; local labels (+cu130)
    and pre-release letters aside: what a converter's "tested up to" torch pin needs."""

    def parts(text: str) -> tuple[int, ...]:
        numbers = []
        for piece in text.split("+")[0].split(".")[:3]:
            digits = "".join(ch for ch in piece if ch.isdigit())
            numbers.append(int(digits or 0))
        return tuple(numbers)

    return parts(version) > parts(than)


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
