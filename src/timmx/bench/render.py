"""The bench's rows as text: cells shared by the terminal table and the Markdown table."""

from __future__ import annotations

import os
from pathlib import Path

from timmx.bench.model import BenchReport, BenchRow

HEADERS = (
    "artifact",
    "backend",
    "size",
    "top-1",
    "top-5",
    "Δ top-1 [95% CI]",
    "differs",
    "p50 ms",
    "p90 ms",
    "img/s",
    "load",
    "memory",
)


def short_path(path: str) -> str:
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return relative if not relative.startswith("..") else path


def megabytes(count: int | None) -> str:
    return "-" if count is None else f"{count / 1e6:.2f} MB"


def points(fraction: float) -> str:
    return f"{fraction * 100:+.1f}"


def cells(row: BenchRow) -> list[str]:
    low, high = row.top1_delta_ci95
    latency = "-" if row.latency_ms_p50 is None else f"{row.latency_ms_p50:.2f}"
    p90 = "-" if row.latency_ms_p90 is None else f"{row.latency_ms_p90:.2f}"
    if not row.latency_representative and row.latency_ms_p50 is not None:
        latency, p90 = f"{latency}*", f"{p90}*"
    throughput = "-"
    if row.throughput_ips is not None:
        throughput = f"{row.throughput_ips:.0f}"
        if row.throughput_batch != 1:
            throughput += f" (b{row.throughput_batch})"
        if not row.latency_representative:
            throughput += "*"
    backend = row.backend + (f" {row.mode}" if row.mode else "")
    return [
        short_path(row.artifact),
        backend,
        megabytes(row.bytes),
        f"{row.top1:.1%}",
        f"{row.top5:.1%}",
        f"{points(row.top1_delta)} [{points(low)}, {points(high)}]",
        f"{row.disagreement:.1%}",
        latency,
        p90,
        throughput,
        f"{row.load_s:.2f} s",
        megabytes(row.peak_memory_bytes),
    ]


def footnotes(report: BenchReport) -> list[str]:
    eager = sorted({f"{row.eager_top1:.1%}" for row in report.rows})
    lines = [
        f"{report.images} images of {len(report.classes)} classes from {report.data}; "
        f"eager top-1 {', '.join(eager)}; threads {report.environment.get('threads')}",
        "Δ top-1: the artifact's top-1 minus PyTorch eager's on the same images, in "
        "percentage points; differs: images whose top-1 class is not eager's",
        f"interval: {report.interval}",
        f"latency: {report.latency}",
    ]
    if any(not row.latency_representative for row in report.rows):
        lines.append("*: not representative (a reference evaluator, not the device's runtime)")
    return lines


def markdown(report: BenchReport) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in report.rows:
        values = [c.replace("|", "\\|") for c in cells(row)]
        values[0] = f"`{values[0]}`"
        lines.append("| " + " | ".join(values) + " |")
    lines.append("")
    lines += [f"- {line}" for line in footnotes(report)]
    return "\n".join(lines) + "\n"


# The terminal's columns (of HEADERS), to fit 80 columns: the JSON, Markdown and HTML have all.
TERMINAL = (0, 1, 2, 3, 5, 7, 9)


def print_table(report: BenchReport, console) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        title=f"timmx bench: {Path(report.data).name}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for i in TERMINAL:
        text = HEADERS[i] in ("artifact", "backend")
        table.add_column(
            HEADERS[i],
            justify="left" if text else "right",
            overflow="fold",
            no_wrap=HEADERS[i] != "artifact",
        )
    for row in report.rows:
        values = [escape(c) for c in cells(row)]
        values[0] = escape(Path(row.artifact).name)
        if row.top1_delta_ci95[1] < 0:  # the drop is real, not noise: show it
            values[5] = f"[red]{values[5]}[/]"
        table.add_row(*(values[i] for i in TERMINAL))
    console.print(table)
    for line in footnotes(report):
        console.print(f"[dim]{escape(line)}[/]", soft_wrap=True)
