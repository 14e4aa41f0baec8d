"""A build file as one ExportJob per model x target, each with where and how it runs.

Options merge in this order, later winning: `[defaults]`, the model's keys, the target's keys,
the model's `overrides.<target>`. Paths are relative to the build file's folder, which is the
jobs' workspace; each artifact lands at `<output>/<model>/<target>/<model><suffix>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timmx.build.spec import BuildFile
from timmx.contract import ExportJob
from timmx.errors import InvalidInputError, TimmxError

# Set by the plan, never by the file.
_COMPUTED = {"output"}
# A model's id and a target's name become folders under the output: plain names only, so no
# job writes outside its own folder and no two jobs share one (`a/b` x `c` against `a` x `b/c`).
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class PlannedJob:
    model: str  # the model's key (its folder)
    target: str  # the target's key (its folder)
    job: ExportJob
    isolated: bool
    memory: str
    timeout_s: int
    build: bool  # build a missing image
    toolchain: str = ""  # the image it runs in when isolated: the backend's, or a variant

    @property
    def id(self) -> str:
        return f"{self.model}/{self.target}"


def plan_build(spec: BuildFile) -> list[PlannedJob]:
    """Every model x target pair that is not excluded, as a checked ExportJob."""
    from timmx.backends import get_backend
    from timmx.job_builder import CALIBRATION_FLAGS, JOB_FLAGS, RUN_FLAGS

    shared = set(JOB_FLAGS) | set(RUN_FLAGS) | set(CALIBRATION_FLAGS)
    defaults = _options(spec.defaults, "defaults", shared)
    targets = {}
    variants: dict[str, str | None] = {}
    for i, target in enumerate(spec.targets):
        place = f"targets[{i}] ({target.key})"
        _check_plain(target.key, place, "name" if target.name else "backend")
        if target.key in targets:
            raise InvalidInputError(
                f"{place}: two targets are named '{target.key}': give each a `name`"
            )
        try:
            backend = get_backend(target.backend)
        except TimmxError as exc:
            raise InvalidInputError(f"{place}: {exc.message}") from None
        targets[target.key] = (backend, _options(target.options, place, _flags(backend)))
        variants[target.key] = _variant(spec, target.toolchain, backend, place)

    jobs: list[PlannedJob] = []
    seen: set[str] = set()
    for i, model in enumerate(spec.models):
        place = f"models[{i}] ({model.key})"
        _check_plain(model.key, place, "id")
        if model.key in seen:
            raise InvalidInputError(f"{place}: two models have the id '{model.key}': set `id`")
        seen.add(model.key)
        for name in [*model.exclude, *model.overrides]:
            if name not in targets:
                raise InvalidInputError(
                    f"{place}: no target is named '{name}' (targets: {', '.join(targets)})"
                )
        own = _options(model.options, place, shared)
        for target_key, (backend, target_options) in targets.items():
            if target_key in model.exclude:
                continue
            override = _options(
                model.overrides.get(target_key, {}),
                f"{place}.overrides.{target_key}",
                _flags(backend),
            )
            shared_values = {**defaults, **own}
            if not backend.calibrates({**shared_values, **target_options, **override}):
                # shared calibration keys go where they apply: a target's own are checked
                shared_values = {
                    k: v for k, v in shared_values.items() if k not in CALIBRATION_FLAGS
                }
            values = {**shared_values, **target_options, **override}
            planned = _planned(spec, model.name, model.key, target_key, backend, values, place)
            jobs.append(_in_toolchain(planned, variants[target_key], values, place))
    return jobs


def _variant(spec: BuildFile, name: str | None, backend, place: str) -> str | None:
    """The variant a target names, checked against the file's [toolchains] and its backend."""
    if name is None or name == backend.toolchain:
        return None
    entry = spec.toolchains.get(name)
    if entry is None:
        known = ", ".join(spec.toolchains) or "none"
        raise InvalidInputError(
            f"{place}: toolchain '{name}' is not a [toolchains.{name}] of this file (variants: "
            f"{known}): declare it, or drop `toolchain`"
        )
    if entry.from_ != backend.toolchain:
        raise InvalidInputError(
            f"{place}: toolchain '{name}' varies the {entry.from_} toolchain, not "
            f"{backend.name}'s ({backend.toolchain}): use a variant from {backend.toolchain}"
        )
    return name


def _in_toolchain(planned: PlannedJob, variant: str | None, values: dict, place: str) -> PlannedJob:
    """The job with the toolchain it runs in; a variant's always runs isolated, in its image."""
    from dataclasses import replace

    backend_toolchain = _toolchain_of(planned.job.backend)
    if variant is None:
        return replace(planned, toolchain=backend_toolchain)
    if values.get("isolated") is False:
        raise InvalidInputError(
            f"{place} x {planned.target}: toolchain '{variant}' runs isolated, in its own image, "
            "never in this process: drop `isolated = false`"
        )
    return replace(planned, toolchain=variant, isolated=True)


def _toolchain_of(backend_name: str) -> str:
    from timmx.backends import get_backend

    return get_backend(backend_name).toolchain


def _check_plain(name: str, place: str, key: str) -> None:
    if not _PLAIN_NAME.fullmatch(name):
        raise InvalidInputError(
            f"{place}: {key} {name!r} is a folder of the output, so it must be a plain name "
            "(letters, digits, '.', '_', '-'; no '/', '..' or leading '.'): rename it"
        )


def _flags(backend) -> set[str]:
    from timmx.job_builder import backend_flags

    return set(backend_flags(backend))


def _options(raw: dict[str, Any], place: str, allowed: set[str]) -> dict[str, Any]:
    """A table's keys as option names (`num-classes` -> `num_classes`), each one checked."""
    import difflib

    options = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name in _COMPUTED:
            raise InvalidInputError(
                f"{place}: '{key}' is set by the build (<output>/<model>/<target>/...): drop it"
            )
        if name not in allowed:
            close = difflib.get_close_matches(name, sorted(allowed), n=1)
            hint = f": did you mean '{close[0].replace('_', '-')}'?" if close else ""
            raise InvalidInputError(f"{place}: unknown key '{key}'{hint}")
        options[name] = value
    return options


def _planned(
    spec: BuildFile,
    model_name: str,
    model_key: str,
    target_key: str,
    backend,
    values: dict[str, Any],
    place: str,
) -> PlannedJob:
    from timmx.job_builder import build_job, with_defaults

    output = Path(spec.build.output) / model_key / target_key / f"{model_key}{backend.suffix}"
    where = f"{place} x {target_key}"
    try:
        full = with_defaults(backend, {**values, "output": output.as_posix()})
        job = build_job(backend, model_name, full)
        return PlannedJob(
            model=model_key,
            target=target_key,
            job=job,
            isolated=_typed(full["isolated"], bool, "isolated"),
            memory=str(full["memory"]),
            timeout_s=_seconds(full["timeout"]),
            build=_typed(full["build"], bool, "build"),
        )
    except TimmxError as exc:
        raise InvalidInputError(f"{where}: {exc.message}") from None


def _typed(value: Any, kind: type, key: str) -> Any:
    if type(value) is not kind:
        raise InvalidInputError(f"'{key}' must be a {kind.__name__}, got {value!r}")
    return value


def _seconds(value: Any) -> int:
    """A job's `timeout`: every runner keeps it, in-process ones included."""
    seconds = _typed(value, int, "timeout")
    if seconds < 1:
        raise InvalidInputError(f"'timeout' must be at least 1 second, got {seconds}")
    return seconds
