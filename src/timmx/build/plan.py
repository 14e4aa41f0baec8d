"""A build file as one ExportJob per model x target, each with where and how it runs.

Options merge in this order, later winning: `[defaults]`, the model's keys, the target's keys,
the model's `overrides.<target>`. Paths are relative to the build file's folder, which is the
jobs' workspace; each artifact lands at `<output>/<model>/<target>/<model><suffix>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timmx.build.spec import BuildFile
from timmx.contract import ExportJob
from timmx.errors import InvalidInputError, TimmxError

# Set by the plan, never by the file.
_COMPUTED = {"output"}


@dataclass(frozen=True)
class PlannedJob:
    model: str  # the model's key (its folder)
    target: str  # the target's key (its folder)
    job: ExportJob
    isolated: bool
    memory: str
    timeout_s: int
    build: bool  # build a missing image

    @property
    def id(self) -> str:
        return f"{self.model}/{self.target}"


def plan_build(spec: BuildFile) -> list[PlannedJob]:
    """Every model x target pair that is not excluded, as a checked ExportJob."""
    from timmx.backends import get_backend
    from timmx.options import CALIBRATION_FLAGS, JOB_FLAGS, RUN_FLAGS

    shared = set(JOB_FLAGS) | set(RUN_FLAGS) | set(CALIBRATION_FLAGS)
    defaults = _options(spec.defaults, "defaults", shared)
    targets = {}
    for i, target in enumerate(spec.targets):
        place = f"targets[{i}] ({target.key})"
        if target.key in targets:
            raise InvalidInputError(
                f"{place}: two targets are named '{target.key}': give each a `name`"
            )
        try:
            backend = get_backend(target.backend)
        except TimmxError as exc:
            raise InvalidInputError(f"{place}: {exc.message}") from None
        targets[target.key] = (backend, _options(target.options, place, _flags(backend)))

    jobs: list[PlannedJob] = []
    seen: set[str] = set()
    for i, model in enumerate(spec.models):
        place = f"models[{i}] ({model.key})"
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
            jobs.append(_planned(spec, model.name, model.key, target_key, backend, values, place))
    return jobs


def _flags(backend) -> set[str]:
    from timmx.options import backend_flags

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
    from timmx.options import build_job, with_defaults

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
            timeout_s=_typed(full["timeout"], int, "timeout"),
            build=_typed(full["build"], bool, "build"),
        )
    except TimmxError as exc:
        raise InvalidInputError(f"{where}: {exc.message}") from None


def _typed(value: Any, kind: type, key: str) -> Any:
    if type(value) is not kind:
        raise InvalidInputError(f"'{key}' must be a {kind.__name__}, got {value!r}")
    return value
