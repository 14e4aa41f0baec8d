"""timm's model names, and what `timmx info` says of a model, without importing torch.

Reading timm's registry means importing timm, which imports torch and torchvision: seconds for a
list of names. The names are written once per installed timm version to a small JSON file in the
user's cache (built on first use) and `timmx list` reads that. `timmx info` of a model with its
random initialisation (no weights, classes or channels of the user's) is stored there too after
its first run, since nothing in it can change until timm does.
"""

from __future__ import annotations

import fnmatch
import json
import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

FORMAT = 1


def timm_version() -> str | None:
    """The installed timm's version, read from its metadata (no import); None if absent."""
    try:
        return metadata.version("timm")
    except metadata.PackageNotFoundError:
        return None


def cache_folder() -> Path:
    """$TIMMX_CACHE_DIR, else $XDG_CACHE_HOME/timmx, else ~/.cache/timmx."""
    if folder := os.environ.get("TIMMX_CACHE_DIR"):
        return Path(folder)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "timmx"


def index_path(version: str) -> Path:
    return cache_folder() / f"models-timm-{version}.json"


def info_path(version: str) -> Path:
    """Per timm version and timmx version: what `info` reports may change with either."""
    from timmx import __version__

    return cache_folder() / f"info-timm-{version}-timmx-{__version__}.json"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def _write(path: Path, data: dict[str, Any]) -> None:
    """Atomically, so a concurrent reader sees the old file or the new one; a cache that cannot
    be written (read-only home) is no error: the next run builds it again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as file:
            json.dump(data, file, separators=(",", ":"))
        os.replace(tmp, path)
    except OSError:
        pass


def build_index() -> dict[str, Any]:
    """The index, from timm's registry (imports timm)."""
    import timm

    return {
        "format": FORMAT,
        "timm": timm.__version__,
        "models": timm.list_models(),  # untagged, naturally sorted, deprecated names left out
        "pretrained": timm.list_models(pretrained=True),  # tagged: resnet18.a1_in1k
    }


def load_index() -> dict[str, Any]:
    """The index of the installed timm: read from the cache, or built and cached on first use."""
    version = timm_version()
    if version is not None and (index := _read(index_path(version))) is not None:
        return index
    index = build_index()
    _write(index_path(index["timm"]), index)
    return index


def list_names(index: dict[str, Any], pattern: str, pretrained: bool = False) -> list[str]:
    """What `timm.list_models(pattern, pretrained=pretrained)` returns, from the index: a glob
    over the untagged names, or over the tagged pretrained names (`vit_*` also matching
    `vit_*.*`) with `pretrained`. Natural order, as timm's."""
    if not pretrained:
        return fnmatch.filter(index["models"], pattern) if pattern else list(index["models"])
    patterns = [pattern] if "." in pattern else [f"{pattern}.*", pattern]
    names: list[str] = index["pretrained"]
    if not pattern:
        return list(names)
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def cached_info(name: str) -> dict[str, Any] | None:
    """`timmx info NAME`'s facts for the random-init model, if a previous run stored them."""
    version = timm_version()
    data = _read(info_path(version)) if version else None
    return None if data is None else data.get("models", {}).get(name)


def store_info(name: str, info: dict[str, Any]) -> None:
    version = timm_version()
    if version is None:
        return
    data = _read(info_path(version)) or {"format": FORMAT, "models": {}}
    data["models"][name] = info
    _write(info_path(version), data)
