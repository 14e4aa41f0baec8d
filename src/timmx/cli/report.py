"""The terminal summary of an export: artifact, hash, model, verification, warnings, report."""

from __future__ import annotations

from pathlib import Path

from timmx.cli import console
from timmx.contract import ExportResult


def show_result(result: ExportResult, artifact: Path) -> None:
    from rich.table import Table

    from timmx.publish import report_path

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
            f"(batch {', '.join(str(c.batch_size) for c in v.checks)}; {v.inputs})",
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
