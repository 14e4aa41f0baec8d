"""`timmx export <backend> MODEL`: one command per registered backend.

The shared model flags are declared once here; each backend's flags are generated from its
options model, so adding a backend never touches the CLI.
"""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic.fields import FieldInfo

from timmx.backends import all_backends
from timmx.backends.base import Backend
from timmx.cli import console
from timmx.contract import (
    CalibrationSpec,
    ExportJob,
    ExportResult,
    InputSpec,
    ModelSpec,
    PreprocessSpec,
    VerifySpec,
)
from timmx.errors import InvalidInputError

MODEL, INPUT, VERIFY = "Model", "Input and pre/post-processing", "Verification"
ISOLATION, CALIBRATION = "Isolation", "Calibration"


def _opt(annotation: Any, default: Any, *flags: str, panel: str, help: str, **extra: Any):
    return (annotation, default, typer.Option(*flags, help=help, rich_help_panel=panel, **extra))


# name -> (annotation, default, typer.Option): the flags every backend shares.
SHARED: dict[str, tuple] = {
    "pretrained": _opt(bool, False, "--pretrained", panel=MODEL, help="Load pretrained weights."),
    "checkpoint": _opt(
        Path | None,
        None,
        "--checkpoint",
        "-c",
        panel=MODEL,
        help="Fine-tuned weights: a state dict (.pth/.pt/.bin, read weights-only) or .safetensors.",
    ),
    "num_classes": _opt(int | None, None, "--num-classes", panel=MODEL, help="Classifier size."),
    "in_chans": _opt(int | None, None, "--in-chans", panel=MODEL, help="Input channels."),
    "model_kwarg": _opt(
        list[str] | None,
        None,
        "--model-kwarg",
        panel=MODEL,
        metavar="KEY=VALUE",
        help="Extra timm.create_model argument (VALUE parsed as JSON when it can be); repeatable.",
    ),
    "reparameterize": _opt(
        bool,
        True,
        "--reparameterize/--no-reparameterize",
        panel=MODEL,
        help="Fuse reparameterizable blocks (RepVGG, MobileOne, FastViT...) before export.",
    ),
    "seed": _opt(int, 0, "--seed", panel=MODEL, help="Seed for randomly initialised weights."),
    "input_size": _opt(
        tuple[int, int, int] | None,
        None,
        "--input-size",
        panel=INPUT,
        metavar="C H W",
        help="Input size; the model's default when absent.",
    ),
    "batch_size": _opt(int, 1, "--batch-size", "-b", panel=INPUT, help="Example batch size."),
    "dynamic_batch": _opt(
        bool, False, "--dynamic-batch", panel=INPUT, help="Accept any batch size at run time."
    ),
    "normalize": _opt(
        bool,
        False,
        "--normalize",
        panel=INPUT,
        help="Bake (x - mean) / std into the graph: the artifact takes pixels in [0, 1].",
    ),
    "mean": _opt(
        str | None,
        None,
        "--mean",
        panel=INPUT,
        metavar="M,M,M",
        help="Normalisation mean (needs --normalize); the model's own by default.",
    ),
    "std": _opt(
        str | None,
        None,
        "--std",
        panel=INPUT,
        metavar="S,S,S",
        help="Normalisation std (needs --normalize); the model's own by default.",
    ),
    "softmax": _opt(bool, False, "--softmax", panel=INPUT, help="Bake a softmax into the graph."),
    "device": _opt(str, "cpu", "--device", panel=INPUT, help="Export on cpu, cuda or mps."),
    "output": _opt(
        Path | None,
        None,
        "--output",
        "-o",
        panel=MODEL,
        help="Artifact path; MODEL plus the backend's extension by default.",
    ),
    "verify": _opt(
        bool,
        True,
        "--verify/--no-verify",
        panel=VERIFY,
        help="Compare the artifact with PyTorch in the artifact's own runtime.",
    ),
    "atol": _opt(float | None, None, "--atol", panel=VERIFY, help="Absolute tolerance override."),
    "rtol": _opt(
        float | None,
        None,
        "--rtol",
        panel=VERIFY,
        help="Tolerance override, relative to the largest reference output.",
    ),
    "json_out": _opt(
        bool, False, "--json", panel=VERIFY, help="Print the report as JSON on stdout."
    ),
    "isolated": _opt(
        bool,
        False,
        "--isolated",
        panel=ISOLATION,
        help="Run the backend in its pinned Docker image instead of this process.",
    ),
    "build": _opt(
        bool,
        True,
        "--build/--no-build",
        panel=ISOLATION,
        help="Build a missing image on first use (--no-build fails fast instead).",
    ),
    "memory": _opt(
        str, "8g", "--memory", panel=ISOLATION, help="Container memory limit (--isolated)."
    ),
    "timeout": _opt(
        int, 1800, "--timeout", panel=ISOLATION, help="Container time limit in seconds."
    ),
}


# Added for backends with `uses_calibration`; they fill ExportJob.calibration.
CALIBRATION_FLAGS: dict[str, tuple] = {
    "calibration_data": _opt(
        Path | None,
        None,
        "--calibration-data",
        panel=CALIBRATION,
        help="A torch-saved (N, C, H, W) tensor, or a folder of images preprocessed with the "
        "model's own timm data config.",
    ),
    "calibration_samples": _opt(
        int | None, None, "--calibration-samples", panel=CALIBRATION, help="Use at most N samples."
    ),
    "calibration_steps": _opt(
        int | None, None, "--calibration-steps", panel=CALIBRATION, help="Calibration batches."
    ),
    "random_calibration": _opt(
        bool,
        False,
        "--random-calibration",
        panel=CALIBRATION,
        help="Calibrate on random inputs: an explicit opt-in for trying things, not production.",
    ),
}


def _option_flags(name: str, field: FieldInfo, backend: Backend) -> tuple:
    flag = "--" + name.replace("_", "-")
    annotation = field.annotation
    panel = f"{backend.name} options"
    flags = (f"{flag}/--no-{flag[2:]}",) if annotation is bool else (flag,)
    option = typer.Option(*flags, help=field.description, rich_help_panel=panel)
    return annotation, field.default, option


def _parameters(backend: Backend) -> list[inspect.Parameter]:
    model_arg = typer.Argument(
        help="timm model name, or hf-hub:org/name.", show_default=False, metavar="MODEL"
    )
    params = [
        inspect.Parameter(
            "model_name",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Annotated[str, model_arg],
        )
    ]
    specs = dict(SHARED)
    if backend.uses_calibration:
        specs.update(CALIBRATION_FLAGS)
    for name, field in backend.Options.model_fields.items():
        if name in specs:
            raise RuntimeError(f"backend {backend.name} option '{name}' clashes with a shared flag")
        specs[name] = _option_flags(name, field, backend)
    for name, (annotation, default, option) in specs.items():
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[annotation, option],
            )
        )
    return params


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise InvalidInputError(f"{flag} takes numbers like 0.5,0.5,0.5, got '{text}'") from None


def _kwargs(pairs: list[str] | None) -> dict[str, Any]:
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


def default_output(model_name: str, suffix: str) -> Path:
    stem = model_name.split(":", 1)[-1].rstrip("/").split("/")[-1]
    return Path(stem + suffix)


def build_job(backend: Backend, values: dict[str, Any]) -> ExportJob:
    """Turn parsed flags into an ExportJob (paths as given, relative to the working folder)."""
    from pydantic import ValidationError

    from timmx.contract import describe_validation_error

    options = {name: values[name] for name in backend.Options.model_fields}
    output = values["output"] or default_output(values["model_name"], backend.suffix)
    try:
        return ExportJob(
            backend=backend.name,
            model=ModelSpec(
                name=values["model_name"],
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
                size=values["input_size"],
                dynamic_batch=values["dynamic_batch"],
            ),
            preprocess=PreprocessSpec(
                normalize=values["normalize"],
                mean=_floats(values["mean"], "--mean"),
                std=_floats(values["std"], "--std"),
                softmax=values["softmax"],
            ),
            calibration=_calibration(values),
            options=backend.parse_options(options).model_dump(mode="json"),
            output=str(output),
            device=values["device"],
            verify=VerifySpec(enabled=values["verify"], atol=values["atol"], rtol=values["rtol"]),
        )
    except ValidationError as exc:
        raise InvalidInputError(describe_validation_error(exc)) from None


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


def _run(backend: Backend, values: dict[str, Any]) -> None:
    if not console.debug_enabled():
        # Converters warn about their own deprecations; the report says what matters.
        warnings.simplefilter("ignore")
    job = build_job(backend, values)
    workspace = Path.cwd()
    if values["isolated"]:
        from timmx.runners.docker import DockerRunner

        result = DockerRunner(
            memory=values["memory"], timeout_s=values["timeout"], build=values["build"]
        ).run(job, workspace, progress=_progress_printer())
    else:
        from timmx.runners.local import run_local

        with console.err.status("Starting", spinner="dots") as status:
            result = run_local(job, workspace, progress=lambda m: status.update(m + "..."))
    if values["json_out"]:
        console.out.print_json(result.model_dump_json())
    else:
        show_result(result, workspace / job.output)


def _progress_printer():
    def show(message: str) -> None:
        console.err.print(f"[dim]{console.escape(message)}[/]")

    return show


def show_result(result: ExportResult, artifact: Path) -> None:
    from rich.table import Table

    from timmx.output import report_path

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    total = sum(a.bytes for a in result.artifacts)
    table.add_row("artifact", f"{artifact} ({total / 1e6:.1f} MB)")
    if result.artifacts:
        table.add_row("sha256", result.artifacts[0].sha256)
    if result.model:
        m = result.model
        table.add_row(
            "model", f"{m.name}, {m.parameters / 1e6:.2f}M params, input {list(m.input_size)}"
        )
    v = result.verification
    if v is not None and v.checks:
        table.add_row(
            "verified",
            f"[green]{v.status}[/] in {v.runtime}: max abs error {v.worst('max_abs_error'):.2e}, "
            f"top-1 agreement {v.worst('top1_agreement'):.0%} "
            f"(batch {', '.join(str(c.batch_size) for c in v.checks)})",
        )
    elif v is not None:
        table.add_row("verified", f"[yellow]{v.status}[/]: {v.note}")
    for warning in result.warnings:
        table.add_row("warning", f"[yellow]{console.escape(warning)}[/]")
    if result.environment and result.environment.image:
        table.add_row("image", result.environment.image)
    table.add_row("report", str(report_path(artifact)))
    table.add_row("time", f"{result.timings.get('total_s', 0):.1f} s")
    console.out.print(table)


def register_commands(app: typer.Typer) -> None:
    for backend in all_backends():
        app.command(name=backend.name, help=backend.help, no_args_is_help=True)(
            _make_command(backend)
        )


def _make_command(backend: Backend):
    def command(**values: Any) -> None:
        _run(backend, values)

    command.__signature__ = inspect.Signature(_parameters(backend))  # type: ignore[attr-defined]
    command.__name__ = backend.name.replace("-", "_")
    return command
