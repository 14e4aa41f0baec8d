"""A self-contained HTML report: the picture (inline SVG) and the table; nothing to fetch."""

from __future__ import annotations

from html import escape

from timmx.bench.model import BenchReport
from timmx.bench.picture import svg
from timmx.bench.render import HEADERS, cells, footnotes

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-top: 1em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:nth-child(-n+2), td:nth-child(-n+2) { text-align: left; }
.drop { color: #c00; }
ul { color: #555; }
"""


def html(report: BenchReport) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in HEADERS)
    body = []
    for row in report.rows:
        values = [escape(c) for c in cells(row)]
        if row.top1_delta_ci95[1] < 0:
            values[5] = f'<span class="drop">{values[5]}</span>'
        body.append("<tr>" + "".join(f"<td>{v}</td>" for v in values) + "</tr>")
    notes = "".join(f"<li>{escape(line)}</li>" for line in footnotes(report))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>timmx bench</title><style>{STYLE}</style></head><body>\n"
        "<h1>timmx bench</h1>\n"
        f"{svg(report)}\n"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>\n"
        f"<ul>{notes}</ul>\n</body></html>\n"
    )
