"""The one definition of every export option, and the one place that turns options into an
`ExportJob`.

The CLI generates its flags from these tables (`timmx export BACKEND --help`); the Python API
takes the same names as keyword arguments (`--num-classes 10` is `num_classes=10`). A backend's
own options come from its options model. Nothing here imports torch or typer.
"""

from __future__ import annotations

import difflib
import json
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin

from timmx.contract import (
    CalibrationSpec,
    ExportJob,
    InputSpec,
    ModelSpec,
    PreprocessSpec,
    VerifySpec,
)
from timmx.errors import InvalidInputError

if TYPE_CHECKING:
    from timmx.backends.base import Backend

MODEL, INPUT, VERIFY = "Model", "Input and pre/post-processing", "Verification"
ISOLATION, CALIBRATION = "Isolation", "Calibration"


@dataclass(frozen=True)
class Flag:
    """One option: its Python name is the key it is stored under; `flags` its CLI spellings."""

    annotation: Any
    default: Any
    flags: tuple[str, ...]
    panel: str
    help: str
    metavar: str | None = None


def _flag(annotation: Any, default: Any, *flags: str, panel: str, help: str, **extra: Any) -> Flag:
    return Flag(annotation, default, flags, panel, help, **extra)


# The options of every export that go into the ExportJob.
JOB_FLAGS: dict[str, Flag] = {
    "pretrained": _flag(bool, False, "--pretrained", panel=MODEL, help="Load pretrained weights."),
    "checkpoint": _flag(
        Path | None,
        None,
        "--checkpoint",
        "-c",
        panel=MODEL,
        help="Fine-tuned weights: a state dict (.pth/.pt/.bin, read weights-only) or .safetensors.",
    ),
    "num_classes": _flag(int | None, None, "--num-classes", panel=MODEL, help="Classifier size."),
    "in_chans": _flag(int | None, None, "--in-chans", panel=MODEL, help="Input channels."),
    "model_kwarg": _flag(
        list[str] | None,
        None,
        "--model-kwarg",
        panel=MODEL,
        metavar="KEY=VALUE",
        help="Extra timm.create_model argument (VALUE parsed as JSON when it can be); repeatable.",
    ),
    "reparameterize": _flag(
        bool,
        True,
        "--reparameterize/--no-reparameterize",
        panel=MODEL,
        help="Fuse reparameterizable blocks (RepVGG, MobileOne, FastViT...) before export.",
    ),
    "seed": _flag(int, 0, "--seed", panel=MODEL, help="Seed for randomly initialised weights."),
    "input_size": _flag(
        tuple[int, int, int] | None,
        None,
        "--input-size",
        panel=INPUT,
        metavar="C H W",
        help="Input size; the model's default when absent.",
    ),
    "batch_size": _flag(int, 1, "--batch-size", "-b", panel=INPUT, help="Example batch size."),
    "dynamic_batch": _flag(
        bool, False, "--dynamic-batch", panel=INPUT, help="Accept any batch size at run time."
    ),
    "normalize": _flag(
        bool,
        False,
        "--normalize",
        panel=INPUT,
        help="Bake (x - mean) / std into the graph: the artifact takes pixels in [0, 1].",
    ),
    "mean": _flag(
        str | None,
        None,
        "--mean",
        panel=INPUT,
        metavar="M,M,M",
        help="Normalisation mean, M,M,M or M M M: baked in with --normalize (the model's own "
        "by default); without it, on an int8 mode that calibrates, the preprocessing of an "
        "image-folder calibration set.",
    ),
    "std": _flag(
        str | None,
        None,
        "--std",
        panel=INPUT,
        metavar="S,S,S",
        help="Normalisation std, S,S,S or S S S: as --mean.",
    ),
    "softmax": _flag(bool, False, "--softmax", panel=INPUT, help="Bake a softmax into the graph."),
    "device": _flag(str, "cpu", "--device", panel=INPUT, help="Export on cpu, cuda or mps."),
    "output": _flag(
        Path | None,
        None,
        "--output",
        "-o",
        panel=MODEL,
        help="Artifact path; MODEL plus the backend's extension by default.",
    ),
    "verify": _flag(
        bool,
        True,
        "--verify/--no-verify",
        panel=VERIFY,
        help="Compare the artifact with PyTorch in the artifact's own runtime.",
    ),
    "atol": _flag(float | None, None, "--atol", panel=VERIFY, help="Absolute tolerance override."),
    "rtol": _flag(
        float | None,
        None,
        "--rtol",
        panel=VERIFY,
        help="Tolerance override, relative to the largest reference output.",
    ),
}

# Where the job runs (not part of the job): the CLI's isolation flags, the API's keywords.
RUN_FLAGS: dict[str, Flag] = {
    # --isolated alone is --isolated true (see timmx.cli.export.isolated_values).
    "isolated": _flag(
        str | None,
        None,
        "--isolated",
        panel=ISOLATION,
        metavar="[auto]",
        help="Run the backend in its pinned Docker image instead of this process; "
        "`--isolated auto` (or TIMMX_ISOLATED=auto): only when its packages do not import here.",
    ),
    "build": _flag(
        bool,
        True,
        "--build/--no-build",
        panel=ISOLATION,
        help="Build a missing image on first use (--no-build fails fast instead).",
    ),
    "memory": _flag(
        str, "8g", "--memory", panel=ISOLATION, help="Container memory limit (--isolated)."
    ),
    "timeout": _flag(
        int,
        1800,
        "--timeout",
        panel=ISOLATION,
        help="Time limit in seconds (--isolated; in a build file, every job's).",
    ),
}

# Added for backends with `uses_calibration`; they fill ExportJob.calibration.
CALIBRATION_FLAGS: dict[str, Flag] = {
    "calibration_data": _flag(
        Path | None,
        None,
        "--calibration-data",
        panel=CALIBRATION,
        help="A torch-saved (N, C, H, W) tensor, or a folder of images preprocessed with the "
        "model's own timm data config.",
    ),
    "calibration_samples": _flag(
        int | None, None, "--calibration-samples", panel=CALIBRATION, help="Use at most N samples."
    ),
    "calibration_steps": _flag(
        int | None, None, "--calibration-steps", panel=CALIBRATION, help="Calibration batches."
    ),
    "random_calibration": _flag(
        bool,
        False,
        "--random-calibration",
        panel=CALIBRATION,
        help="Calibrate on random inputs: an explicit opt-in for trying things, not production.",
    ),
}


def backend_flags(backend: Backend) -> dict[str, Flag]:
    """Every option of an export with `backend`: shared, calibration, then the backend's own."""
    flags = {**JOB_FLAGS, **RUN_FLAGS}
    if backend.uses_calibration:
        flags.update(CALIBRATION_FLAGS)
    panel = f"{backend.name} options"
    for name, field in backend.Options.model_fields.items():
        if name in flags:
            raise RuntimeError(f"backend {backend.name} option '{name}' clashes with a shared flag")
        extra = _extra(field)
        if extra.get("flag") is False:  # filled by build_job from other flags, not a flag itself
            continue
        spellings = ["--" + n.replace("_", "-") for n in (name, *extra.get("aliases", ()))]
        if _is_switch(field.annotation):
            spellings = [f"{flag}/--no-{flag[2:]}" for flag in spellings]
        flags[name] = Flag(
            field.annotation, field.default, tuple(spellings), panel, field.description
        )
    return flags


def _extra(field: Any) -> dict[str, Any]:
    """A backend option's `json_schema_extra`: `aliases` (other names, e.g. upstream timmx's),
    `flag: False` (no flag of its own)."""
    extra = field.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _is_switch(annotation: Any) -> bool:
    """bool, or bool | None (unset: the backend decides): spelt --x/--no-x."""
    if annotation is bool:
        return True
    args = set(get_args(annotation))
    return get_origin(annotation) in (Union, types.UnionType) and args == {bool, type(None)}


def _canonical_names(backend: Backend, given: dict[str, Any]) -> dict[str, Any]:
    """`given` with every alias of a backend option (`class_labels`) under its own name."""
    aliases = {
        alias: name
        for name, field in backend.Options.model_fields.items()
        for alias in _extra(field).get("aliases", ())
    }
    named: dict[str, Any] = {}
    for key, value in given.items():
        name = aliases.get(key, key)
        if name in named:
            raise InvalidInputError(f"'{key}' and '{name}' are one option: give only one")
        named[name] = value
    return named


def with_defaults(backend: Backend, given: dict[str, Any]) -> dict[str, Any]:
    """`given` (Python names) completed with every option's default; an unknown name is refused
    with the closest known one."""
    flags = backend_flags(backend)
    given = _canonical_names(backend, given)
    unknown = [name for name in given if name not in flags]
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, list(flags), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(sorted(flags))}"
        raise InvalidInputError(f"unknown option '{name}' for the {backend.name} backend: {hint}")
    values = {name: flag.default for name, flag in flags.items()}
    values.update(given)
    from timmx.isolation import given_or_environment, resolve

    values["isolated"] = resolve(backend, given_or_environment(given))  # --isolated auto
    return values


def build_job(backend: Backend, model_name: str, values: dict[str, Any]) -> ExportJob:
    """Turn options (every name of `backend_flags`, paths as given) into an ExportJob."""
    from pydantic import ValidationError

    from timmx.contract import describe_validation_error

    options = {name: values[name] for name in backend.Options.model_fields if name in values}
    mean, std = _floats(values["mean"], "--mean"), _floats(values["std"], "--std")
    if (
        (mean or std)
        and not values["normalize"]
        and "calibration_mean" in backend.Options.model_fields
    ):
        # Upstream timmx's meaning where calibration data is preprocessed: the mean/std an
        # image folder is normalised with for calibration; the graph stays unnormalised.
        options["calibration_mean"], options["calibration_std"] = mean, std
        mean = std = None
    parsed = backend.parse_options(options)
    output = values["output"]
    if output is None:
        output = default_output(model_name, backend.default_suffix(parsed))
        if output.exists():
            raise InvalidInputError(
                f"{output} already exists and was not named with --output: pass --output "
                f"{output} to replace it, or choose another path"
            )
    size = _input_size(values["input_size"])
    try:
        return ExportJob(
            backend=backend.name,
            model=ModelSpec(
                name=model_name,
                pretrained=values["pretrained"],
                checkpoint=str(values["checkpoint"]) if values["checkpoint"] else None,
                num_classes=values["num_classes"],
                in_chans=values["in_chans"],
                reparameterize=values["reparameterize"],
                kwargs=_kwargs(values["model_kwarg"]),
                seed=values["seed"],
            ),
            input=InputSpec(
                batch_size=values["batch_size"],
                size=size,
                dynamic_batch=values["dynamic_batch"],
            ),
            preprocess=PreprocessSpec(
                normalize=values["normalize"],
                mean=mean,
                std=std,
                softmax=values["softmax"],
            ),
            calibration=_calibration(values),
            options=parsed.model_dump(mode="json"),
            output=str(output),
            device=values["device"],
            verify=VerifySpec(enabled=values["verify"], atol=values["atol"], rtol=values["rtol"]),
        )
    except ValidationError as exc:
        raise InvalidInputError(describe_validation_error(exc)) from None


def _input_size(value: Any) -> tuple[int, int, int] | None:
    if value is None:
        return None
    parts = list(value) if isinstance(value, list | tuple) else [value]
    if len(parts) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in parts):
        raise InvalidInputError(f"--input-size takes C H W (three integers), got {value!r}")
    return (parts[0], parts[1], parts[2])


def default_output(model_name: str, suffix: str) -> Path:
    """`<model name><suffix>` in the current folder, named as upstream timmx names it: every
    run of characters other than letters, digits, `_`, `.` and `-` (the `:` and `/` of
    `hf-hub:timm/resnet50.a1_in1k`) becomes one `_`."""
    return Path(re.sub(r"[^\w.-]+", "_", model_name) + suffix)


def _floats(value: Any, flag: str) -> tuple[float, ...] | None:
    """`0.5,0.5,0.5`, `0.5 0.5 0.5`, or (from Python) a sequence of numbers."""
    if value is None:
        return None
    try:
        if isinstance(value, str):
            return tuple(float(v) for v in value.replace(",", " ").split())
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{flag} takes numbers like 0.5,0.5,0.5, got '{value}'") from None


def _kwargs(pairs: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """`--model-kwarg KEY=VALUE` pairs (VALUE as JSON where it parses); a dict from Python."""
    if isinstance(pairs, dict):
        return dict(pairs)
    found: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"--model-kwarg takes KEY=VALUE, got '{pair}'")
        try:
            found[key] = json.loads(value)
        except json.JSONDecodeError:
            found[key] = value
    return found


def _calibration(values: dict[str, Any]) -> CalibrationSpec | None:
    if "calibration_data" not in values:  # the backend takes no calibration
        return None
    path = values["calibration_data"]
    if path is not None and values["random_calibration"]:
        raise InvalidInputError("--calibration-data and --random-calibration exclude each other")
    if path is None and not values["random_calibration"]:
        if values["calibration_samples"] or values["calibration_steps"]:
            raise InvalidInputError(
                "--calibration-samples/--calibration-steps need --calibration-data "
                "or --random-calibration"
            )
        return None
    return CalibrationSpec(
        path=str(path) if path else None,
        samples=values["calibration_samples"],
        steps=values["calibration_steps"],
        random=values["random_calibration"],
    )
