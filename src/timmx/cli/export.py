"""`timmx export <backend> MODEL`: one command per registered backend.

The flags come from the option tables in `timmx.job_builder` and each backend's options model, so
adding a backend never touches the CLI; the job is built there too, as for the Python API.
A backend's command is built only when it is asked for (`BackendCommands`), so `timmx --help`
imports no backend and no pydantic model.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperCommand, TyperGroup

from timmx.cli import console

if TYPE_CHECKING:
    import click

    from timmx.backends.base import Backend
    from timmx.job_builder import Flag


class BackendCommands(TyperGroup):
    """The `timmx export` group: a command per registered backend, built on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from timmx.backends import all_backends

        return [backend.name for backend in all_backends()]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            if cmd_name not in self.list_commands(ctx):
                return None  # click says "No such command" and suggests a close name
            from timmx.backends import get_backend

            self.commands[cmd_name] = _backend_command(get_backend(cmd_name))
        return self.commands[cmd_name]


def _backend_command(backend: Backend) -> click.Command:
    single = typer.Typer(add_completion=False)
    single.command(name=backend.name, help=backend.help, no_args_is_help=True, cls=ExportCommand)(
        _make_command(backend)
    )
    return typer.main.get_command(single)


# Options that take one number per channel: `--mean 0.5,0.5,0.5`, or upstream timmx's
# `--mean 0.5 0.5 0.5`.
PER_CHANNEL = ("--mean", "--std")


class ExportCommand(TyperCommand):
    """A backend's command; `--mean 0.5 0.5 0.5` reads as `--mean 0.5,0.5,0.5`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, isolated_values(join_numbers(args, PER_CHANNEL)))


def isolated_values(args: list[str]) -> list[str]:
    """`--isolated` alone is `--isolated=true`; `--isolated auto` (or true/false) keeps its
    value: one option that is both upstream's switch and `--isolated auto`."""
    rewritten: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return rewritten + args[i:]
        i += 1
        if arg == "--isolated":
            value = args[i] if i < len(args) and args[i] in ("auto", "true", "false") else None
            i += value is not None
            arg = f"--isolated={value or 'true'}"
        rewritten.append(arg)
    return rewritten


def join_numbers(args: list[str], options: tuple[str, ...]) -> list[str]:
    """Each of `options` followed by several numbers, its numbers joined by commas."""
    joined: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":  # the rest are arguments, not options
            return joined + args[i:]
        joined.append(arg)
        i += 1
        if arg in options and i < len(args):
            values = [args[i]]
            i += 1
            while i < len(args) and _numbers(args[i]):
                values.append(args[i])
                i += 1
            joined.append(",".join(values))
    return joined


def _numbers(token: str) -> bool:
    try:
        [float(part) for part in token.split(",")]
    except ValueError:
        return False
    return True


def _option(flag: Flag) -> Any:
    from typing import Annotated

    option = typer.Option(
        *flag.flags, help=flag.help, rich_help_panel=flag.panel, metavar=flag.metavar
    )
    return Annotated[flag.annotation, option]


def _parameters(backend: Backend) -> list[inspect.Parameter]:
    from typing import Annotated

    from timmx.job_builder import ISOLATION, VERIFY, Flag, backend_flags

    json_flag = Flag(bool, False, ("--json",), VERIFY, "Print the report as JSON on stdout.")
    toolchain_flag = Flag(
        str | None,
        None,
        ("--toolchain",),
        ISOLATION,
        "A \\[toolchains.<name>] variant of the timmx.toml here: export and verify in its image "
        "(implies --isolated).",
    )
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
    flags = {**backend_flags(backend), "json_out": json_flag, "toolchain": toolchain_flag}
    for name, flag in flags.items():
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=flag.default, annotation=_option(flag)
            )
        )
    return params


def _run(backend: Backend, model_name: str, json_out: bool, values: dict[str, Any]) -> None:
    from timmx.api import job_and_runner
    from timmx.runners.local import LocalRunner

    job, runner = job_and_runner(backend, model_name, values, console.debug_enabled())
    workspace = Path.cwd()
    if not isinstance(runner, LocalRunner):  # a container's steps, a line each
        result = runner.run(job, workspace, progress=_print_progress)
    else:
        with console.err.status("Starting", spinner="dots") as status:
            result = runner.run(job, workspace, progress=lambda m: status.update(m + "..."))
    if json_out:
        console.out.print_json(result.model_dump_json())
    else:
        from timmx.cli.report import show_result

        show_result(result, workspace / job.output)


def _print_progress(message: str) -> None:
    console.err.print(f"[dim]{console.escape(message)}[/]")


def _make_command(backend: Backend):
    def command(model_name: str, json_out: bool = False, **values: Any) -> None:
        _run(backend, model_name, json_out, values)  # --toolchain too: job_and_runner takes it

    command.__signature__ = inspect.Signature(_parameters(backend))  # type: ignore[attr-defined]
    command.__name__ = backend.name.replace("-", "_")
    return command
