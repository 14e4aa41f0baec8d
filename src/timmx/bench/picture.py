"""The bench's picture as SVG: top-1 against latency, a point per artifact, its area the
artifact's size, eager's top-1 a dashed line. Plain SVG: no library, no network."""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

from timmx.bench.model import BenchReport

WIDTH, HEIGHT = 760, 420
LEFT, RIGHT, TOP, BOTTOM = 70, 190, 30, 55
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    span = high - low or 1.0
    step = 10 ** math.floor(math.log10(span / count))
    for factor in (1, 2, 5, 10):
        if span / (step * factor) <= count:
            step *= factor
            break
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def svg(report: BenchReport) -> str:
    rows = [r for r in report.rows if r.latency_ms_p50 is not None and r.latency_representative]
    left_out = [r for r in report.rows if r not in rows]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    eager = report.rows[0].eager_top1 if report.rows else 0.0
    accuracies = [r.top1 for r in rows] + [eager]
    latencies = [r.latency_ms_p50 or 0.0 for r in rows] or [1.0]
    pad = max(0.01, 0.15 * (max(accuracies) - min(accuracies)))
    y_low = max(0.0, min(accuracies) - pad)
    y_high = min(1.0, max(accuracies) + pad / 2) if max(accuracies) < 1.0 else 1.0
    x_high = max(latencies) * 1.15 or 1.0

    def px(latency: float) -> float:
        return LEFT + latency / x_high * plot_w

    def py(accuracy: float) -> float:
        return TOP + (y_high - accuracy) / ((y_high - y_low) or 1.0) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" '
        'stroke="#999"/>',
    ]
    for tick in _ticks(0.0, x_high):
        x = px(tick)
        parts.append(
            f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + plot_h}" stroke="#e5e5e5"/>'
        )
        parts.append(
            f'<text x="{x:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{tick:g}</text>'
        )
    for tick in _ticks(y_low, y_high):
        y = py(tick)
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#e5e5e5"/>'
        )
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{tick * 100:.4g}%</text>'
        )
    y = py(eager)
    parts.append(
        f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" '
        'stroke="#333" stroke-dasharray="6 4"/>'
    )
    parts.append(f'<text x="{LEFT + 6}" y="{y - 5:.1f}">PyTorch eager {eager:.1%}</text>')
    biggest = max((r.bytes for r in rows), default=1) or 1
    legend_y = TOP + 8
    for i, row in enumerate(rows):
        colour = COLOURS[i % len(COLOURS)]
        radius = 4 + 14 * math.sqrt(row.bytes / biggest)  # area proportional to size
        name = escape(Path(row.artifact).name)
        cx, cy = px(row.latency_ms_p50 or 0.0), py(row.top1)
        parts.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{radius:.1f}" fill="{colour}" '
            f'fill-opacity="0.6" stroke="{colour}"><title>{name}: top-1 {row.top1:.1%}, '
            f"{row.latency_ms_p50:.2f} ms, {row.bytes / 1e6:.2f} MB</title></circle>"
        )
        parts.append(f'<circle cx="{WIDTH - RIGHT + 18}" cy="{legend_y}" r="5" fill="{colour}"/>')
        parts.append(f'<text x="{WIDTH - RIGHT + 28}" y="{legend_y + 4}">{name}</text>')
        legend_y += 18
    if left_out:
        names = ", ".join(escape(Path(r.artifact).name) for r in left_out)
        parts.append(
            f'<text x="{LEFT}" y="{HEIGHT - 6}" fill="#666">not shown (latency not '
            f"representative or not measured): {names}</text>"
        )
    parts.append(
        f'<text x="{LEFT + plot_w / 2}" y="{TOP + plot_h + 36}" '
        'text-anchor="middle">latency at batch 1, median (ms)</text>'
    )
    parts.append(
        f'<text transform="translate(16 {TOP + plot_h / 2}) rotate(-90)" '
        'text-anchor="middle">top-1 accuracy</text>'
    )
    parts.append(
        f'<text x="{WIDTH - RIGHT + 10}" y="{TOP + plot_h}" fill="#666">'
        "point area: file size</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts)
