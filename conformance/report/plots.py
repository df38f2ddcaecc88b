"""Small inline SVG plots of the latency and recovery figures in report.html.

One plot per (check, figure) with a row per adapter, all rows on one scale: a bar for a
single value, dots (and a median tick) for a list of values. Plain SVG in the page: no
script, no external asset, readable without CSS (each plot has a ``<title>`` and each
mark its value).
"""

from __future__ import annotations

import re
import statistics
from html import escape
from typing import Any

# figure names (as checks record them with aut.metric) by what they measure
LATENCY = re.compile(r"latency|p\d\d_|_p\d\d|^p\d\d|fail_ms|gaps_ms|timeout_s|took_s|slowest_s")
RECOVERY = re.compile(r"recover|restart|refreshed_after|expired_after|leased_after|destroy_s")

WIDTH, LABEL_W, ROW_H, PAD = 560, 190, 18, 6
BAR = "#3b6fb6"
BAR_FAILED = "#c0392b"


def family(name: str) -> str | None:
    """``latency``, ``recovery`` or None for a figure name."""
    if RECOVERY.search(name):
        return "recovery"
    if LATENCY.search(name):
        return "latency"
    return None


def _numbers(value: Any) -> list[float] | None:
    """The value as numbers (a scalar or a flat list of them), or None."""
    items = value if isinstance(value, list) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, int | float) for v in items):
        return None
    return [float(v) for v in items]


def _unit(name: str) -> str:
    return "ms" if name.endswith("_ms") or "_ms" in name else "s"


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def plot(check: str, name: str, rows: list[tuple[str, list[float], bool]]) -> str:
    """One SVG: ``rows`` of (adapter label, values, failed) on a shared scale."""
    top = max((max(vals) for _, vals, _ in rows), default=0.0) or 1.0
    unit = _unit(name)
    plot_w = WIDTH - LABEL_W - 120  # room right of the scale for the value labels
    height = PAD * 2 + ROW_H * len(rows) + 14
    scale = plot_w / top
    title = f"{check}: {name} ({unit}) per adapter"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" role="img" width="{WIDTH}" '
        f'height="{height}" viewBox="0 0 {WIDTH} {height}" data-check="{escape(check)}" '
        f'data-figure="{escape(name)}" aria-label="{escape(title)}"><title>{escape(title)}'
        "</title>",
        f'<line x1="{LABEL_W}" y1="{PAD}" x2="{LABEL_W}" y2="{height - 14}" stroke="#999"/>',
    ]
    for i, (label, values, failed) in enumerate(rows):
        y = PAD + i * ROW_H
        mid = y + ROW_H / 2
        colour = BAR_FAILED if failed else BAR
        out.append(
            f'<text x="{LABEL_W - 6}" y="{mid + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#333">{escape(label)}</text>'
        )
        if len(values) == 1:
            w = max(values[0] * scale, 1.0)
            out.append(
                f'<rect x="{LABEL_W}" y="{y + 3}" width="{w:.1f}" height="{ROW_H - 6}" '
                f'fill="{colour}" data-value="{values[0]:g}"><title>{escape(label)}: '
                f"{_fmt(values[0])} {unit}</title></rect>"
                f'<text x="{LABEL_W + w + 4:.1f}" y="{mid + 4:.1f}" font-size="11" '
                f'fill="#333">{_fmt(values[0])} {unit}</text>'
            )
            continue
        for v in values:
            out.append(
                f'<circle cx="{LABEL_W + v * scale:.1f}" cy="{mid:.1f}" r="3" fill="{colour}" '
                f'fill-opacity="0.6" data-value="{v:g}"><title>{_fmt(v)} {unit}</title></circle>'
            )
        med = statistics.median(values)
        x = LABEL_W + med * scale
        out.append(
            f'<line x1="{x:.1f}" y1="{y + 2}" x2="{x:.1f}" y2="{y + ROW_H - 2}" stroke="#111" '
            f'stroke-width="2"/><text x="{LABEL_W + plot_w + 10}" y="{mid + 4:.1f}" '
            f'font-size="11" fill="#333">median {_fmt(med)} {unit}</text>'
        )
    axis_y = height - 4
    out.append(
        f'<text x="{LABEL_W}" y="{axis_y}" font-size="10" fill="#777">0</text>'
        f'<text x="{LABEL_W + plot_w}" y="{axis_y}" font-size="10" fill="#777" '
        f'text-anchor="end">{_fmt(top)} {unit}</text></svg>'
    )
    return "".join(out)


def collect(results: list[dict[str, Any]]) -> dict[str, dict[tuple[str, str], list[Any]]]:
    """``{family: {(check, figure): [(adapter label, values, failed)]}}`` of the results."""
    out: dict[str, dict[tuple[str, str], list[Any]]] = {"latency": {}, "recovery": {}}
    for r in sorted(results, key=lambda r: (r["check"], r["kind"], r["adapter"])):
        for name, value in (r.get("metrics") or {}).items():
            fam, values = family(name), _numbers(value)
            if fam is None or values is None:
                continue
            out[fam].setdefault((r["check"], name), []).append(
                (f"{r['kind']}:{r['adapter']}", values, r["status"] == "failed")
            )
    return out


def section(results: list[dict[str, Any]]) -> str:
    """The page's plots section ("" when no result recorded a latency or recovery figure)."""
    groups = collect(results)
    if not any(groups.values()):
        return ""
    out = [
        '<section id="plots"><h2>Latency and recovery</h2><p class="small">Figures the checks '
        "recorded, one plot per check and figure, every adapter on one scale: a bar for one "
        "value, dots and the median for a list; red: the check failed.</p>"
    ]
    for fam, title in (("latency", "Latency"), ("recovery", "Recovery")):
        if not groups[fam]:
            continue
        out.append(f'<h3 id="plots-{fam}">{title}</h3>')
        for (check, name), rows in groups[fam].items():
            out.append(
                f'<div class="plot"><div class="small"><code>{escape(check)}</code> · '
                f"{escape(name)}</div>{plot(check, name, rows)}</div>"
            )
    out.append("</section>")
    return "".join(out)
