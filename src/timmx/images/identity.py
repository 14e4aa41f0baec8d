"""An image's name and tag, derived from everything that goes into it.

tag = hash(recipe files and locks, timmx source, build arguments): unchanged inputs give the same
tag (nothing to rebuild), a changed pin or source file gives a new one. Build settings come from
flags, else from TIMMX_BASE_IMAGE, TIMMX_TORCH_INDEX_URL, TIMMX_TORCH_WHEELS, TIMMX_REGISTRY.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from timmx import __version__
from timmx.errors import InvalidInputError
from timmx.images.recipes import Recipe
from timmx.images.source import source_hash

DEFAULT_BASE_IMAGE = "python:3.11-slim-bookworm"
DEFAULT_TORCH_INDEX_URL = "https://download.pytorch.org/whl/cpu"
LABEL_TOOLCHAIN = "ai.timmx.toolchain"
LABEL_INPUTS = "ai.timmx.inputs-hash"
LABEL_LOCK = "ai.timmx.lock-hash"
LABEL_CONTENT = "ai.timmx.content-hash"  # the inputs less the build arguments
LABEL_BASE = "ai.timmx.base-image"
LABEL_TORCH_INDEX = "ai.timmx.torch-index-url"
LABEL_TORCH_WHEELS = "ai.timmx.torch-wheels"
LABEL_VERSION = "org.opencontainers.image.version"  # the timmx that built it (the Dockerfile too)
BUILD_FIELDS = ("base_image", "torch_index_url", "torch_wheels")
_TAG_CHARS = 16
# "": pip's own index (PyPI, or the mirror pip is configured with)
PYPI_INDEXES = ("", "https://pypi.org/simple")


@dataclass(frozen=True)
class BuildSettings:
    base_image: str = DEFAULT_BASE_IMAGE
    torch_index_url: str = DEFAULT_TORCH_INDEX_URL  # "" for none (a wheel folder only)
    torch_wheels: Path | None = None
    registry: str | None = None  # e.g. ghcr.io/team: images are named <registry>/timmx-<name>
    # The build fields set by a flag or a TIMMX_* variable; the others may follow an earlier build.
    chosen: frozenset[str] = frozenset(BUILD_FIELDS)

    @classmethod
    def resolve(
        cls,
        base_image: str | None = None,
        torch_index_url: str | None = None,
        torch_wheels: Path | None = None,
        registry: str | None = None,
    ) -> BuildSettings:
        """Flags first, then the TIMMX_* environment, then the defaults."""
        env = os.environ
        flags = {"base_image": base_image, "torch_index_url": torch_index_url}
        flags["torch_wheels"] = torch_wheels
        chosen = frozenset(
            name
            for name in BUILD_FIELDS
            if flags[name] is not None or env.get(f"TIMMX_{name.upper()}") is not None
        )
        wheels = torch_wheels or (
            Path(env["TIMMX_TORCH_WHEELS"]) if env.get("TIMMX_TORCH_WHEELS") else None
        )
        if wheels is not None and not wheels.is_dir():
            raise InvalidInputError(f"the torch wheel folder {wheels} does not exist")
        index = torch_index_url if torch_index_url is not None else env.get("TIMMX_TORCH_INDEX_URL")
        if index is None:
            # A wheel folder replaces the torch index, unless one is named as well.
            index = "" if wheels is not None else DEFAULT_TORCH_INDEX_URL
        return cls(
            base_image=base_image or env.get("TIMMX_BASE_IMAGE") or DEFAULT_BASE_IMAGE,
            torch_index_url=index,
            torch_wheels=wheels,
            registry=(registry or env.get("TIMMX_REGISTRY") or "").rstrip("/") or None,
            chosen=chosen,
        )

    def follow(self, labels: dict[str, str]) -> BuildSettings:
        """These settings, with the fields nobody chose taken from an earlier image's labels."""
        if LABEL_BASE not in labels or LABEL_TORCH_INDEX not in labels:
            return self
        base_image, index, wheels = self.base_image, self.torch_index_url, self.torch_wheels
        if "base_image" not in self.chosen:
            base_image = labels[LABEL_BASE]
        if "torch_wheels" not in self.chosen:
            wheels = Path(labels[LABEL_TORCH_WHEELS]) if labels.get(LABEL_TORCH_WHEELS) else None
            if wheels is not None and not wheels.is_dir():
                wheels = None
        if not {"torch_index_url", "torch_wheels"} & self.chosen:
            index = labels[LABEL_TORCH_INDEX]
        return replace(self, base_image=base_image, torch_index_url=index, torch_wheels=wheels)

    def labels(self) -> dict[str, str]:
        return {
            LABEL_BASE: self.base_image,
            LABEL_TORCH_INDEX: self.torch_index_url,
            LABEL_TORCH_WHEELS: str(self.torch_wheels or ""),
        }

    @property
    def torch_from_pypi(self) -> bool:
        """Whether the torch layer comes from PyPI's wheels, whose hashes the torch locks hold
        (not the CPU index's +cpu wheels, nor a wheel folder's)."""
        return self.torch_wheels is None and self.torch_index_url.rstrip("/") in PYPI_INDEXES

    def build_args(self) -> dict[str, str]:
        return {
            "BASE_IMAGE": self.base_image,
            "TORCH_INDEX_URL": self.torch_index_url,
            "TORCH_HASHES": "1" if self.torch_from_pypi else "",
        }

    def wheel_files(self) -> list[Path]:
        if self.torch_wheels is None:
            return []
        return sorted(p for p in self.torch_wheels.iterdir() if p.suffix == ".whl" and p.is_file())


@dataclass(frozen=True)
class ImageIdentity:
    toolchain: str
    repository: str  # [registry/]timmx-<toolchain>
    tag: str
    inputs_hash: str  # recipe + source + build args: the full identity
    content_hash: str  # recipe + source: same pins and code, whatever the base or torch index
    lock_hash: str

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}"

    def labels(self) -> dict[str, str]:
        return {
            LABEL_TOOLCHAIN: self.toolchain,
            LABEL_VERSION: __version__,
            LABEL_INPUTS: self.inputs_hash,
            LABEL_CONTENT: self.content_hash,
            LABEL_LOCK: self.lock_hash,
        }


def identify(recipe: Recipe, settings: BuildSettings, source: str | None = None) -> ImageIdentity:
    """The image a recipe gives with these settings and this timmx source."""
    content = {
        "recipe": {name: _file_hash(path) for name, path in recipe.files.items()},
        "source": source or source_hash(),
        "version": __version__,
    }
    args = {
        "args": settings.build_args(),
        "wheels": [(p.name, p.stat().st_size) for p in settings.wheel_files()],
    }
    inputs = _json_hash({**content, **args})
    repository = f"timmx-{recipe.name}"
    if settings.registry:
        repository = f"{settings.registry}/{repository}"
    return ImageIdentity(
        toolchain=recipe.name,
        repository=repository,
        tag=inputs[:_TAG_CHARS],
        inputs_hash=inputs,
        content_hash=_json_hash(content),
        lock_hash=lock_hash(recipe),
    )


def lock_hash(recipe: Recipe) -> str:
    digest = hashlib.sha256()
    for name, path in recipe.lock_files.items():
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:_TAG_CHARS]


def _json_hash(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
