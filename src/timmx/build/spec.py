"""The build file: `timmx.toml`, or `[tool.timmx]` in `pyproject.toml`.

    [build]            output folder, parallel jobs
    [defaults]         options for every job
    [[models]]         name (a timm model), id, options, exclude, overrides.<target>
    [[targets]]        backend, name, that backend's options

Keys are the CLI's flag names without the dashes (`num-classes`, `dynamic-batch`); each means
what the flag means (one definition: `timmx.job_builder`). A bad file is one line naming the key and
its place, e.g. `timmx.toml: models[1] (mnv3): unknown key 'num-clases': did you mean...`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from timmx.errors import InvalidInputError
from timmx.toolchains import ToolchainEntry

BUILD_FILE = "timmx.toml"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BuildSection(_Strict):
    output: str = Field("dist", description="Folder the artifacts and the manifest go to.")
    jobs: int | None = Field(None, ge=1, description="Jobs run at once (default: from cores).")


class ModelEntry(BaseModel):
    """One model; any other key is an export option for every target of this model."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="A timm model name, or hf-hub:org/name.")
    id: str | None = Field(None, description="Its folder under the output (default: from name).")
    exclude: list[str] = Field(default_factory=list, description="Target names to skip.")
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Options for one target of this model: {target: {...}}."
    )

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def key(self) -> str:
        return self.id or safe_name(self.name)


class TargetEntry(BaseModel):
    """One output format; any other key is an option of its backend (or a shared one)."""

    model_config = ConfigDict(extra="allow")

    backend: str = Field(description="A timmx backend: onnx, litert, coreml...")
    name: str | None = Field(None, description="Its folder name (default: the backend's name).")
    toolchain: str | None = Field(
        None, description="A [toolchains.<name>] variant to export in (isolated, in its image)."
    )

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def key(self) -> str:
        return self.name or self.backend


class BenchSection(_Strict):
    """`[bench]`: bench every artifact after the build (see `timmx bench`); `--check` gates."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    data: str = Field(description="Labelled images (one sub-folder per class), file-relative.")
    limit: int | None = Field(None, ge=1, description="A fixed, seeded subset of this many.")
    max_accuracy_drop: float | None = Field(
        None,
        ge=0,
        alias="max-accuracy-drop",
        description="`timmx build --check` fails an artifact whose top-1 is more than this "
        "many percentage points under eager's.",
    )


class BuildFile(_Strict):
    build: BuildSection = Field(default_factory=BuildSection)
    bench: BenchSection | None = Field(None, description="Bench the artifacts after the build.")
    defaults: dict[str, Any] = Field(default_factory=dict)
    models: list[ModelEntry] = Field(min_length=1)
    targets: list[TargetEntry] = Field(min_length=1)
    toolchains: dict[str, ToolchainEntry] = Field(
        default_factory=dict, description="Variants of the built-in toolchains: pinned versions."
    )


def safe_name(name: str) -> str:
    """A model name as a folder name: `hf-hub:timm/resnet18.a1_in1k` -> `resnet18.a1_in1k`."""
    stem = name.split(":", 1)[-1].rstrip("/").split("/")[-1]
    return _SAFE.sub("_", stem) or "model"


def find_build_file(path: Path | None) -> Path:
    """The file given, else `timmx.toml`, else `pyproject.toml` with `[tool.timmx]`, here."""
    if path is not None:
        if path.is_dir():
            return find_build_file_in(path)
        if not path.is_file():
            raise InvalidInputError(f"build file not found: {path}")
        return path
    return find_build_file_in(Path.cwd())


def find_build_file_in(folder: Path) -> Path:
    for name in (BUILD_FILE, "pyproject.toml"):
        candidate = folder / name
        if candidate.is_file() and (name == BUILD_FILE or _has_tool_table(candidate)):
            return candidate
    raise InvalidInputError(
        f"no {BUILD_FILE} (or [tool.timmx] in pyproject.toml) in {folder}: write one (see "
        "`timmx schema build`) or pass its path"
    )


def _has_tool_table(path: Path) -> bool:
    try:
        return "timmx" in tomllib.loads(path.read_text()).get("tool", {})
    except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError):
        return False


def load_build_file(path: Path) -> BuildFile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"{path.name} is not valid TOML: {exc}") from None
    if path.name == "pyproject.toml":
        data = data.get("tool", {}).get("timmx")
        if not isinstance(data, dict):
            raise InvalidInputError(f"{path} has no [tool.timmx] table")
    try:
        return BuildFile.model_validate(data)
    except ValidationError as exc:
        raise InvalidInputError(f"{path.name}: {_where(exc, data)}") from None


def _where(exc: ValidationError, data: dict[str, Any]) -> str:
    """The first problem, with its place: `models[1] (mnv3): ...`."""
    first = exc.errors()[0]
    loc = list(first["loc"])
    place = loc[0] if loc else "file"
    if len(loc) >= 2 and isinstance(loc[1], int):
        place = f"{loc[0]}[{loc[1]}]"
        entry = data.get(loc[0], [])[loc[1]] if isinstance(data.get(loc[0]), list) else {}
        label = entry.get("name") or entry.get("backend") if isinstance(entry, dict) else None
        if label:
            place += f" ({label})"
        loc = loc[2:]
    else:
        loc = loc[1:]
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        if not loc:  # a top-level table: [biuld]
            tables = "build, bench, defaults, models, targets, toolchains"
            return f"unknown table '{place}' (tables: {tables})"
        return f"{place}: unknown key '{'.'.join(map(str, loc))}'"
    if first["type"] == "missing":
        return f"{place}: '{'.'.join(map(str, loc))}' is required"
    key = ".".join(map(str, loc))
    return f"{place}: {key}: {message}" if key else f"{place}: {message}"
