"""Entry point: `timmx export|schema|doctor|info|list|images`."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Annotated, Literal

import typer

from timmx.cli import console
from timmx.cli.clean import clean_command
from timmx.cli.export import BackendCommands
from timmx.errors import TimmxError

app = typer.Typer(
    name="timmx",
    help="Export timm image models to deployment formats, verified against PyTorch.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion, --show-completion
)
export_app = typer.Typer(
    cls=BackendCommands,
    help="Export MODEL with a backend; `timmx export BACKEND --help` lists its flags.",
    no_args_is_help=True,
)
app.add_typer(export_app, name="export")


def _version(value: bool) -> None:
    if value:
        from timmx import __version__

        console.out.print(f"timmx {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback on errors.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    console.set_debug(debug)


@app.command()
def schema(
    which: Annotated[
        Literal["job", "result", "build", "bench"],
        typer.Argument(help="job, result, build or bench."),
    ] = "job",
) -> None:
    """Print the JSON Schema of an export job, an export result (the report), a build file or
    a bench's JSON (`timmx bench --json`)."""
    import json

    if which == "bench":
        from timmx.bench.model import bench_schema

        console.out.print_json(json.dumps(bench_schema()))
        return
    if which == "build":
        from timmx.build.schema import build_schema

        console.out.print_json(json.dumps(build_schema()))
        return
    from timmx.contract import json_schema

    console.out.print_json(json.dumps(json_schema(which)))


def _add_build() -> None:
    from timmx.cli.build import build_command

    app.command("build")(build_command)


_add_build()
app.command("clean")(clean_command)


def _add_bench() -> None:
    from timmx.cli.bench import bench_command

    app.command("bench")(bench_command)


_add_bench()


@app.command()
def doctor(
    json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Which backends run in-process here, which need --isolated, and whether Docker answers."""
    from timmx.cli.doctor import run_doctor

    run_doctor(json_out)


@app.command()
def info(
    model_name: Annotated[str, typer.Argument(help="timm model name.")],
    pretrained: Annotated[
        bool, typer.Option("--pretrained", help="Load the pretrained weights.")
    ] = False,
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", "-c", help="Fine-tuned weights to load, as an export does."),
    ] = None,
    num_classes: Annotated[int | None, typer.Option(help="Classifier size.")] = None,
    in_chans: Annotated[int | None, typer.Option(help="Input channels.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Parameters, default input size, classes and mean/std of a timm model."""
    from timmx.cli.models import show_info

    show_info(model_name, json_out, pretrained, checkpoint, num_classes, in_chans)


@app.command("list")
def list_models(
    pattern: Annotated[str, typer.Argument(help="Substring or glob, e.g. resnet or vit_*.")] = "*",
    pretrained_only: Annotated[
        bool, typer.Option("--pretrained-only", help="Only models with pretrained weights.")
    ] = False,
) -> None:
    """List timm model names matching PATTERN."""
    from timmx.cli.models import show_list

    show_list(pattern, pretrained_only)


def _add_images() -> None:
    from timmx.cli.images import images_app

    app.add_typer(images_app, name="images")


_add_images()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: every error a user can fix is one line and exit code 2."""
    console.set_debug(False)  # the app's callback sets it from --debug
    try:
        code = app(args=argv, standalone_mode=False)
    except TimmxError as exc:
        if console.debug_enabled():
            traceback.print_exc()
        console.fail(exc.message)
        sys.exit(2)
    except KeyboardInterrupt:
        console.fail("interrupted")
        sys.exit(130)
    except Exception as exc:
        if _is_click_error(exc):  # typer vendors click: recognise its errors by shape
            if type(exc).__name__ == "Abort":
                console.fail("interrupted")
                sys.exit(130)
            if not exc.format_message():  # no_args_is_help: the help was the message
                sys.exit(exc.exit_code)
            ctx = getattr(exc, "ctx", None)
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            console.fail(f"{exc.format_message()}{where}")
            sys.exit(exc.exit_code)
        if console.debug_enabled():
            traceback.print_exc()
        console.fail(
            f"internal error: {type(exc).__name__}: {exc} "
            "(rerun with --debug for the traceback and report it)"
        )
        sys.exit(1)
    if code == 130:  # typer turns Ctrl-C into Exit(130)
        console.fail("interrupted: nothing was written")
    sys.exit(code if isinstance(code, int) else 0)


def run() -> None:
    """The console script (and `python -m timmx`): `main`, then a fast exit (see `_exit`)."""
    from timmx._exit import fast_exit

    try:
        main()
    except SystemExit as exc:
        fast_exit(exc.code)


def _is_click_error(exc: Exception) -> bool:
    return type(exc).__name__ == "Abort" or (
        hasattr(exc, "format_message") and hasattr(exc, "exit_code")
    )
