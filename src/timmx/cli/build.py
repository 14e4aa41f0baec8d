"""`timmx build [FILE]`: the build file's models x targets, cached, in parallel."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from timmx.cli import console

COLOURS = {
    "fresh": "green",
    "cached": "green",
    "done": "green",
    "new": "yellow",
    "stale": "yellow",
    "missing": "yellow",
    "altered": "red",
    "unverified": "red",
    "failed": "red",
    "not run": "dim",
}


def build_command(
    file: Annotated[
        Path | None,
        typer.Argument(
            help="The build file (default: ./timmx.toml, or \\[tool.timmx] in pyproject.toml).",
            show_default=False,
        ),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", "-j", min=1, help="Jobs at once (default: from cores and memory)."),
    ] = None,
    keep_going: Annotated[
        bool,
        typer.Option(
            "--keep-going/--fail-fast", help="Go on after a failed job (the default), or stop."
        ),
    ] = True,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan and what would run; run nothing.")
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="The CI gate: exit 2 when any artifact is stale, missing, altered or "
            "unverified; build nothing.",
        ),
    ] = False,
    locked: Annotated[
        bool,
        typer.Option(
            "--locked",
            help="Run each isolated job in exactly the image the manifest records for it "
            "(present, or pulled by its digest): another machine rebuilds the same artifacts.",
        ),
    ] = False,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Run each job as a task on the Ray cluster at ADDRESS (HOST:PORT of its head, "
            "ray://HOST:PORT, or auto); needs timmx\\[ray] here and timmx on every node.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Export every model of the build file to every target; skip what is up to date."""
    from timmx.build.execute import default_jobs
    from timmx.build.lock import build_lock
    from timmx.build.run import load_build, locked_pins
    from timmx.build.spec import find_build_file
    from timmx.errors import InvalidInputError, TimmxError

    if dry_run and check:
        raise InvalidInputError("--dry-run and --check exclude each other: choose one")
    path = find_build_file(file)
    build = load_build(path)
    if dry_run:
        _plan_table(build)
        return
    if check:
        _plan_table(build)
        bad = [j for j in build.jobs if j.status != "fresh"]
        if bad:
            names = ", ".join(f"{j.planned.id} {j.status}" for j in bad[:6])
            more = f" and {len(bad) - 6} more" if len(bad) > 6 else ""
            raise TimmxError(
                f"{len(bad)} of {len(build.jobs)} artifacts are not up to date ({names}{more}): "
                "run `timmx build`"
            )
        _accuracy_gate(path, build)
        console.err.print(f"[green]all {len(build.jobs)} artifacts are up to date[/]")
        return
    if locked and ray is not None:
        raise InvalidInputError(
            "--locked runs on this machine's Docker engine: drop --ray, or --locked"
        )
    if ray is not None:
        from timmx.build.ray_cluster import require_ray

        require_ray()
    with build_lock(build.output):
        build = load_build(path)  # the manifest as it is now that no other build writes it
        pins = locked_pins(build) if locked else None
        # On Ray every job is queued at once unless capped: the cluster schedules them.
        slots = jobs or build.slots or (len(build.jobs) if ray is not None else default_jobs())
        outcomes = _run(build, slots, keep_going, ray, pins)
        _bench(path)
    _summary(build, outcomes)
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        raise TimmxError(
            f"{len(failed)} of {len(build.jobs)} jobs failed "
            f"({', '.join(o.planned.id for o in failed[:6])}): see the table above"
        )


def _accuracy_gate(path: Path, build) -> None:
    """`[bench] max-accuracy-drop`: exit 2 naming every artifact over it (timmx.bench.gate)."""
    from timmx.bench.gate import gate
    from timmx.errors import TimmxError

    failures = gate(path, build)
    if failures:
        raise TimmxError(
            f"{len(failures)} of {len(build.jobs)} artifacts fail the accuracy gate: "
            + "; ".join(failures)
        )


def _bench(path: Path) -> None:
    """`[bench]`: bench what the manifest has no figures for, and show them."""
    from timmx.bench.gate import bench_build
    from timmx.bench.render import print_table
    from timmx.build.run import load_build
    from timmx.build.spec import load_build_file
    from timmx.cli.bench import progress_bar

    if load_build_file(path).bench is None:
        return
    with progress_bar() as progress:
        report = bench_build(path, load_build(path), progress)
    if report is not None:
        print_table(report, console.out)


def _run(build, slots: int, keep_going: bool, ray_address: str | None = None, pins=None):
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from timmx.build.run import run_build

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console.err, transient=False) as progress:
        tasks: dict[str, int] = {}

        def start(planned) -> None:
            tasks[planned.id] = progress.add_task(f"{planned.id}: starting", total=None)

        def step(planned, message: str) -> None:
            line = console.escape(message.strip()[:80])
            progress.update(tasks[planned.id], description=f"{planned.id}: {line}")

        def done(outcome) -> None:
            planned = outcome.planned
            text = (
                f"[green]done[/] {planned.id}"
                if outcome.error is None
                else f"[red]failed[/] {planned.id}"
            )
            progress.update(tasks[planned.id], description=text, total=1, completed=1)

        return run_build(
            build, slots, keep_going, start, step, done, ray_address=ray_address, pins=pins
        )


def _plan_table(build) -> None:
    from rich.table import Table

    table = Table(title=f"{len(build.jobs)} jobs, output {build.output}")
    for column in ("job", "backend", "runs", "state", "artifact"):
        table.add_column(column)
    for job in build.jobs:
        planned = job.planned
        colour = COLOURS.get(job.status, "white")
        table.add_row(
            planned.id,
            planned.job.backend,
            "isolated" if planned.isolated else "in-process",
            f"[{colour}]{job.status}[/]",
            planned.job.output,
        )
    console.out.print(table)


def _summary(build, outcomes) -> None:
    from rich.table import Table

    ran = {o.planned.id: o for o in outcomes}
    table = Table(title="timmx build")
    for column in ("job", "status", "time", "detail"):
        table.add_column(column)
    for job in build.jobs:
        outcome = ran.get(job.planned.id)
        if job.status == "fresh":
            status, seconds, detail = "cached", "-", "up to date"
        elif outcome is None:
            status, seconds, detail = "not run", "-", "stopped before it started"
        elif outcome.error is not None:
            status, seconds = "failed", f"{outcome.seconds:.1f} s"
            detail = console.escape(outcome.error.message)
        else:
            status, seconds = "done", f"{outcome.seconds:.1f} s"
            v = outcome.result.verification
            detail = (
                f"{v.status}, max abs error {v.worst('max_abs_error'):.2e}"
                if v is not None and v.checks
                else (v.status if v is not None else "")
            )
        colour = COLOURS.get(status, "white")
        table.add_row(job.planned.id, f"[{colour}]{status}[/]", seconds, detail)
    console.out.print(table)
