"""`timmx bench ARTIFACT... --data DIR`: accuracy and latency of artifacts on labelled images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from timmx.cli import console


def bench_command(
    artifacts: Annotated[
        list[Path],
        typer.Argument(
            help="Artifacts, folders of artifacts, or a build's timmx-build.json.",
            show_default=False,
        ),
    ],
    data: Annotated[
        Path,
        typer.Option("--data", "-d", help="Labelled images: one sub-folder per class."),
    ],
    limit: Annotated[
        int | None, typer.Option(help="Bench a fixed, seeded subset of this many images.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Throughput batch (artifacts that take it).")] = 8,
    threads: Annotated[
        int | None, typer.Option(help="Runtime threads (default: the CPUs this process may use).")
    ] = None,
    runs: Annotated[int, typer.Option(help="Timed runs per latency figure.")] = 50,
    warmup: Annotated[int, typer.Option(help="Untimed runs first.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of --limit's subset and the bootstrap.")] = 0,
    sort: Annotated[
        str | None,
        typer.Option(
            help="Order the rows: artifact, top1, delta, disagreement, latency, throughput, size."
        ),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the rows as JSON (`timmx schema bench`).")
    ] = None,
    markdown_out: Annotated[
        Path | None, typer.Option("--markdown", help="Write the table as Markdown.")
    ] = None,
    html_out: Annotated[
        Path | None, typer.Option("--html", help="Write a self-contained HTML report.")
    ] = None,
    isolated: Annotated[
        bool,
        typer.Option(
            "--isolated",
            help="Run every artifact in its toolchain's Docker image (an artifact whose runtime "
            "is not installed here always does).",
        ),
    ] = False,
) -> None:
    """Top-1/top-5 of each artifact against PyTorch eager on your images (with a 95% interval of
    the difference), latency, throughput, load time, memory and size."""
    from timmx.bench.api import bench
    from timmx.bench.html import html
    from timmx.bench.render import markdown, print_table

    outputs = [p for p in (json_out, markdown_out, html_out) if p is not None]
    _check_outputs(outputs)
    with progress_bar() as progress:
        report = bench(
            artifacts,
            data=data,
            limit=limit,
            batch_size=batch_size,
            threads=threads,
            warmup=warmup,
            runs=runs,
            seed=seed,
            sort=sort,
            isolated=isolated,
            progress=progress,
        )
    print_table(report, console.out)
    from timmx.publish import write_text_atomic

    texts = {
        json_out: lambda: report.model_dump_json(indent=2) + "\n",
        markdown_out: lambda: markdown(report),
        html_out: lambda: html(report),
    }
    for path, text in texts.items():
        if path is not None:
            write_text_atomic(path, text())
            console.err.print(f"wrote {path}")


def _check_outputs(paths: list[Path]) -> None:
    """Each output's folder exists and it is not a folder: refused before any work."""
    from timmx.errors import InvalidInputError

    for path in paths:
        if path.is_dir():
            raise InvalidInputError(f"{path} is a folder: give a file name to write")
        if not path.parent.is_dir():
            raise InvalidInputError(f"{path}: the folder {path.parent} does not exist")


class progress_bar:
    """A rich progress bar on stderr, fed by the bench's (what, done, total) callback."""

    def __enter__(self):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console.err,
            transient=True,
        )
        self._bar.__enter__()
        self._task = self._bar.add_task("bench", total=None)
        return self._update

    def _update(self, what: str, done: int, total: int) -> None:
        self._bar.update(self._task, description=what, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)
