"""Core ML deployment targets and what each feature needs, without importing coremltools.

The numbers are Core ML specification versions (coremltools' `ct.target` values); one number
covers the iOS, macOS, tvOS and watchOS releases of the same year.
"""

from __future__ import annotations

from typing import Literal

Target = Literal[
    "iOS13",
    "iOS14",
    "iOS15",
    "iOS16",
    "iOS17",
    "iOS18",
    "iOS26",
    "macOS10_15",
    "macOS11",
    "macOS12",
    "macOS13",
    "macOS14",
    "macOS15",
    "macOS26",
    "tvOS13",
    "tvOS14",
    "tvOS15",
    "tvOS16",
    "tvOS17",
    "tvOS18",
    "tvOS26",
    "watchOS6",
    "watchOS7",
    "watchOS8",
    "watchOS9",
    "watchOS10",
    "watchOS11",
    "watchOS26",
]

_YEARS = {  # spec version: the releases of that year
    4: ("iOS13", "macOS10_15", "tvOS13", "watchOS6"),
    5: ("iOS14", "macOS11", "tvOS14", "watchOS7"),
    6: ("iOS15", "macOS12", "tvOS15", "watchOS8"),
    7: ("iOS16", "macOS13", "tvOS16", "watchOS9"),
    8: ("iOS17", "macOS14", "tvOS17", "watchOS10"),
    9: ("iOS18", "macOS15", "tvOS18", "watchOS11"),
    10: ("iOS26", "macOS26", "tvOS26", "watchOS26"),
}
SPEC_VERSION = {name: version for version, names in _YEARS.items() for name in names}

MLPROGRAM_MIN = 6  # iOS15: ML programs exist from here; neural networks end before it
COMPRESSION_MIN = 7  # iOS16: constexpr ops (int8, palettization)
PER_BLOCK_MIN = 9  # iOS18: per-block int4, per-block look-up tables


def name_for(version: int) -> str:
    return _YEARS[version][0]


def same_year(target: str, version: int) -> str:
    """The release of the same platform as `target` for spec `version` (iOS16 -> macOS13...)."""
    platform = next(i for i, n in enumerate(_YEARS[SPEC_VERSION[target]]) if n == target)
    return _YEARS[version][platform]
