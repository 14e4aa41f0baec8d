"""The JSON Schema of the build file (`timmx schema build`), made from the option tables, so
it lists every key each backend takes with its type, default and help."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from timmx.build.spec import BenchSection, BuildSection
from timmx.toolchains import ToolchainEntry


def build_schema() -> dict[str, Any]:
    from timmx.backends import all_backends
    from timmx.job_builder import CALIBRATION_FLAGS, JOB_FLAGS, RUN_FLAGS

    shared = {
        name: flag
        for name, flag in {**JOB_FLAGS, **RUN_FLAGS, **CALIBRATION_FLAGS}.items()
        if name != "output"
    }
    shared_props = _properties(shared)
    targets = []
    for backend in all_backends():
        from timmx.job_builder import backend_flags

        own = {n: f for n, f in backend_flags(backend).items() if n != "output"}
        props = _properties(own)
        props["backend"] = {"const": backend.name, "description": backend.help}
        props["name"] = {"type": "string", "description": "Folder name; the backend's by default."}
        props["toolchain"] = {
            "type": "string",
            "description": "A [toolchains.<name>] variant to export in (isolated, in its image).",
        }
        targets.append(
            {
                "type": "object",
                "properties": props,
                "required": ["backend"],
                "additionalProperties": False,
            }
        )
    model_props = {
        **shared_props,
        "name": {"type": "string", "description": "A timm model name, or hf-hub:org/name."},
        "id": {"type": "string", "description": "Its folder under the output."},
        "exclude": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Targets to skip.",
        },
        "overrides": {
            "type": "object",
            "description": "Options for one target of this model: {target-name: {key: value}}.",
            "additionalProperties": {"type": "object"},
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://timmx.dev/schema/build/v1.json",
        "title": "timmx build file (timmx.toml, or [tool.timmx] in pyproject.toml)",
        "type": "object",
        "additionalProperties": False,
        "required": ["models", "targets"],
        "properties": {
            "build": BuildSection.model_json_schema(),
            "bench": BenchSection.model_json_schema(by_alias=True),
            "defaults": {
                "type": "object",
                "properties": shared_props,
                "additionalProperties": False,
            },
            "models": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": model_props,
                    "required": ["name"],
                    "additionalProperties": False,
                },
            },
            "targets": {"type": "array", "minItems": 1, "items": {"oneOf": targets}},
            "toolchains": {
                "type": "object",
                "description": "Variants of the built-in toolchains, with exact pins.",
                "additionalProperties": ToolchainEntry.model_json_schema(by_alias=True),
            },
        },
    }


def _properties(flags: dict[str, Any]) -> dict[str, Any]:
    props = {}
    for name, flag in flags.items():
        entry = _json_type(flag.annotation)
        if flag.default is not None and not isinstance(flag.default, Path):
            entry["default"] = (
                list(flag.default) if isinstance(flag.default, tuple) else flag.default
            )
        if flag.help:
            entry["description"] = flag.help
        props[name.replace("_", "-")] = entry
    return props


def _json_type(annotation: Any) -> dict[str, Any]:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        return (
            _json_type(options[0])
            if len(options) == 1
            else {"anyOf": [_json_type(a) for a in options]}
        )
    if origin is Literal:
        return {"enum": list(get_args(annotation))}
    if origin is tuple:
        items = get_args(annotation)
        return {
            "type": "array",
            "items": _json_type(items[0]),
            "minItems": len(items),
            "maxItems": len(items),
        }
    if origin is list:
        return {"type": "array", "items": _json_type(get_args(annotation)[0])}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "string"}
    return {"type": simple.get(annotation, "string")}
