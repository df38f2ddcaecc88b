"""report.html: one self-contained page (no scripts, no external assets)."""

from __future__ import annotations

import json
from collections import Counter
from html import escape
from pathlib import Path
from typing import Any

from conformance.adapters import KINDS
from conformance.report import GLYPH, STATUSES, checklist_rows, matrix, plots
from conformance.report.baseline import compare

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d232a}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px}
.meta{color:#555} .pill{display:inline-block;padding:2px 10px;border-radius:10px;margin-right:6px;
font-weight:600} table{border-collapse:collapse;margin:6px 0 12px}
th,td{border:1px solid #d6d9dc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f7;position:sticky;top:0} td.c{text-align:center;white-space:nowrap}
.passed{background:#e3f6e8;color:#17692f} .failed{background:#fde2e1;color:#a11c15;font-weight:700}
.unsupported{background:#fff4d6;color:#7a5600} .skipped{background:#f1f1f1;color:#888}
.not-tested{background:#f3e1f7;color:#6b1a80;font-weight:700}
td.id{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:nowrap}
pre{white-space:pre-wrap;word-break:break-word;background:#f7f7f9;border:1px solid #e3e3e8;
padding:8px;margin:4px 0;font-size:12px;max-height:360px;overflow:auto}
.small{font-size:12px;color:#666} code{font-size:12px}
td.c a{color:inherit;text-decoration:none;display:block} td.c a:hover{text-decoration:underline}
.baseline{border:2px solid #d6d9dc;border-radius:6px;padding:4px 14px;margin:12px 0}
dl.fig{display:grid;grid-template-columns:max-content auto;gap:0 10px;margin:0}
dl.fig dt{font-weight:600} dl.fig dd{margin:0;font-family:ui-monospace,Menlo,monospace}
div.plot{margin:2px 0 10px} svg.plot{max-width:100%;height:auto;font-family:system-ui,sans-serif}
"""


def anchor(row: dict[str, Any]) -> str:
    """The id of a result's details on the page (cells link to it)."""
    raw = f"r-{row['kind']}-{row['adapter']}-{row['check']}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in raw)


def _text(v: Any) -> str:
    return escape(v if isinstance(v, str) else json.dumps(v, default=str))


def _figure_list(metrics: dict[str, Any]) -> str:
    items = "".join(
        f"<dt>{escape(str(k))}</dt><dd>{_text(v)}</dd>" for k, v in sorted(metrics.items())
    )
    return f'<dl class="fig">{items}</dl>'


def _first(message: str | None, limit: int = 200) -> str:
    return escape(((message or "").splitlines() or [""])[0][:limit])


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return '<td class="c"></td>'
    st = row["status"]
    if st == "skipped" and row.get("skip") == "not_tested":
        title = escape(row.get("message") or "not tested", quote=True)
        return f'<td class="c not-tested" title="{title}">not tested</td>'
    title = escape(row.get("message") or st, quote=True)
    dur = f" {row['duration_s']:.2f}s" if st != "skipped" else ""
    text = f"{GLYPH[st]}{dur}"
    if st in ("failed", "unsupported") or row.get("metrics"):
        text = f'<a href="#{anchor(row)}">{text}</a>'
    return f'<td class="c {st}" title="{title}">{text}</td>'


def _summary(doc: dict[str, Any]) -> str:
    counts = Counter(r["status"] for r in doc["results"])
    pills = "".join(f'<span class="pill {st}">{st} {counts.get(st, 0)}</span>' for st in STATUSES)
    return (
        f'<p class="meta">suite <b>{escape(doc["suite"])}</b> · provider '
        f"<b>{escape(doc['provider'])}</b> · {doc['duration_s']:.1f}s wall · "
        f"{'quick counts · ' if doc.get('quick') else ''}{escape(doc['created'])}</p>"
        f"<p>{pills}</p>" + _verdict(doc)
    )


def _verdict(doc: dict[str, Any]) -> str:
    """The exit verdict, and the adapters that were not tested (never shown green)."""
    v = doc.get("verdict")
    if not v:
        return ""
    cls = {"passed": "passed", "not tested": "not-tested", "usage error": "failed"}.get(
        v["status"], "failed"
    )
    if v["not_tested"] and cls == "passed":  # allowed missing services: still not all green
        cls = "not-tested"
    out = [
        f'<p><span class="pill {cls}">verdict: {escape(v["status"])} (exit '
        f"{v['exit_code']})</span>{escape(v['reason'])}</p>"
    ]
    if v["not_tested"]:
        out.append(
            '<h2 class="not-tested">Not tested</h2><p class="small">These adapters were '
            "selected but not exercised: their backing service could not be provided"
            + (" (allowed by --allow-missing-services)" if v["allowed_missing_services"] else "")
            + ".</p><table><tr><th>adapter</th><th>why</th></tr>"
        )
        out += [
            f'<tr class="not-tested"><td>{escape(n["kind"])}:{escape(n["adapter"])}</td>'
            f"<td>{escape(n['reason'])}</td></tr>"
            for n in v["not_tested"]
        ]
        out.append("</table>")
    return "".join(out)


def _matrix(doc: dict[str, Any]) -> str:
    grid = matrix(doc["results"])
    out = [
        '<h2>Matrix</h2><p class="small">Hover a cell for its message. '
        "✔ passed · ✘ failed · ~ unsupported (declared; 'better than declared' if it passed) "
        "· - skipped</p>"
    ]
    for kind in KINDS:
        if kind not in grid:
            continue
        adapters = sorted({a for checks in grid[kind].values() for a in checks})
        untested = {n["adapter"] for n in _not_tested(doc) if n["kind"] == kind}
        out.append(
            f"<h3>{kind}</h3><table><tr><th>check</th>"
            + "".join(
                f'<th class="not-tested">{escape(a)} (not tested)</th>'
                if a in untested
                else f"<th>{escape(a)}</th>"
                for a in adapters
            )
            + "</tr>"
        )
        for check_id in sorted(grid[kind]):
            cells = "".join(_cell(grid[kind][check_id].get(a)) for a in adapters)
            out.append(f'<tr><td class="id">{escape(check_id)}</td>{cells}</tr>')
        out.append("</table>")
    return "".join(out)


_CHECKLIST_CELL = {
    "ok": "✔ ok",
    "failed": "✘ failed",
    "not checked": "· not checked",
    "n/a": "n/a",
}


def _checklist(doc: dict[str, Any]) -> str:
    """The seed's production checklist: one row per pattern run, one column per item;
    hover a cell for the evidence, or the reason it was not checked or does not apply."""
    from conformance.checks.deployment.checklist import ITEMS

    details = {
        (r["check"], r["adapter"]): (r.get("metrics") or {}).get("checklist") or {}
        for r in doc["results"]
    }
    rows = checklist_rows(doc["results"])
    if not rows:
        return ""
    head = "".join(f'<th title="{escape(t)}">{escape(i)}</th>' for i, t in ITEMS.items())
    out = [f"<h2>Production checklist</h2><table><tr><th>pattern</th>{head}</tr>"]
    for r in sorted(doc["results"], key=lambda r: (r["check"], r["adapter"])):
        items = details.get((r["check"], r["adapter"]))
        if not items:
            continue
        label = f"{r['check'].removeprefix('deployment.')} ({r['adapter']})"
        cells = []
        for item in ITEMS:
            text = str(items.get(item, ""))
            verdict = text.split(":", 1)[0]
            cells.append(
                f'<td title="{escape(text)}">{escape(_CHECKLIST_CELL.get(verdict, verdict))}</td>'
            )
        out.append(f"<tr><td>{escape(label)}</td>{''.join(cells)}</tr>")
    out.append("</table>")
    return "".join(out)


def _not_tested(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list((doc.get("verdict") or {}).get("not_tested", []))


def _rows_with(doc: dict[str, Any], status: str) -> list[dict[str, Any]]:
    return [r for r in doc["results"] if r["status"] == status]


def _details(doc: dict[str, Any]) -> str:
    out = ["<h2>Failures</h2>"]
    failed = _rows_with(doc, "failed")
    if not failed:
        out.append("<p>None.</p>")
    for r in failed:
        metrics = {k: v for k, v in r.get("metrics", {}).items()}
        out.append(
            f'<h3 class="failed" id="{anchor(r)}">✘ {escape(r["kind"])}:{escape(r["adapter"])}'
            f" · <code>{escape(r['check'])}</code></h3><pre>{escape(r['message'])}</pre>"
            + (_figure_list(metrics) if metrics else "")
        )
    unsupported = _rows_with(doc, "unsupported")
    out.append("<h2>Unsupported (declared by the adapter)</h2>")
    if not unsupported:
        out.append("<p>None.</p>")
    else:
        out.append("<table><tr><th>adapter</th><th>check</th><th>outcome</th></tr>")
        for r in unsupported:
            out.append(_check_row(r, escape(r["message"]), anchor(r)))
        out.append("</table>")
    skipped = _rows_with(doc, "skipped")
    if skipped:
        reasons = Counter((f"{r['kind']}:{r['adapter']}", r["message"]) for r in skipped)
        out.append("<h2>Skipped</h2><table><tr><th>adapter</th><th>checks</th><th>reason</th></tr>")
        for (label, msg), n in sorted(reasons.items()):
            out.append(f"<tr><td>{escape(label)}</td><td>{n}</td><td>{escape(msg)}</td></tr>")
        out.append("</table>")
    return "".join(out)


def _check_row(r: dict[str, Any], cell: str, row_id: str | None = None) -> str:
    """A table row: ``kind:adapter``, the check id, then ``cell`` (HTML, escaped by the caller)."""
    attr = f' id="{row_id}"' if row_id else ""
    return (
        f"<tr{attr}><td>{escape(r['kind'])}:{escape(r['adapter'])}</td>"
        f'<td class="id">{escape(r["check"])}</td><td>{cell}</td></tr>'
    )


def _observations(doc: dict[str, Any]) -> str:
    out = ["<h2>Open behaviours (observed, not judged)</h2>"]
    obs = doc.get("observations", [])
    if not obs:
        return out[0] + "<p>None recorded.</p>"
    out.append("<table><tr><th>adapter</th><th>check</th><th>observed</th></tr>")
    for o in obs:
        items = "<br>".join(
            f"<b>{escape(str(k))}</b>: {escape(json.dumps(v, default=str))}"
            for k, v in o["observations"].items()
        )
        out.append(_check_row(o, items))
    out.append("</table>")
    return "".join(out)


def _figures(doc: dict[str, Any]) -> str:
    rows = [r for r in doc["results"] if r.get("metrics") and r["status"] != "failed"]
    if not rows:
        return ""
    out = [
        f'<h2>Figures</h2><p class="small">Metrics recorded by passing checks ({len(rows)})'
        "</p><table><tr><th>adapter</th><th>check</th><th>metrics</th></tr>"
    ]
    for r in rows:
        out.append(_check_row(r, _figure_list(r["metrics"]), anchor(r)))
    out.append("</table>")
    return "".join(out)


def _timings(doc: dict[str, Any]) -> str:
    per: Counter[str] = Counter()
    for r in doc["results"]:
        per[f"{r['kind']}:{r['adapter']}"] += r["duration_s"]
    slow = sorted(doc["results"], key=lambda r: -r["duration_s"])[:15]
    out = ["<h2>Timings</h2><table><tr><th>adapter</th><th>total</th></tr>"]
    out += [f"<tr><td>{escape(k)}</td><td>{v:.2f}s</td></tr>" for k, v in sorted(per.items())]
    out.append(
        "</table><h3>Slowest checks</h3><table><tr><th>adapter</th><th>check</th>"
        "<th>duration</th></tr>"
    )
    out += [_check_row(r, f"{r['duration_s']:.2f}s") for r in slow]
    out.append("</table>")
    return "".join(out)


def _capabilities(doc: dict[str, Any]) -> str:
    out = ["<h2>Declared capabilities</h2>"]
    for kind in KINDS:
        adapters = [a for a in doc["adapters"] if a["kind"] == kind]
        if not adapters:
            continue
        names = sorted({k for a in adapters for k in a["capabilities"]})
        out.append(
            f"<h3>{kind}</h3><table><tr><th>capability</th>"
            + "".join(f"<th>{escape(a['adapter'])}</th>" for a in adapters)
            + "</tr>"
        )
        for name in names:
            cells = []
            for a in adapters:
                v = a["capabilities"].get(name)
                if isinstance(v, dict):
                    ok = v.get("supported")
                    cls = "passed" if ok else "unsupported"
                    tip = escape(v.get("reason", ""), quote=True)
                    text = "yes" if ok else "no"
                    if ok and name in (a.get("declared_not_exercised") or []):
                        # declared, yet no check of this run exercised it: not shown as proven
                        cls, text = "skipped", "yes, not exercised"
                        tip = "declared; no check in this run exercised it"
                    cells.append(f'<td class="c {cls}" title="{tip}">{text}</td>')
                else:
                    cells.append(f'<td class="c">{escape(str(v))}</td>')
            out.append(f'<tr><td class="id">{escape(name)}</td>{"".join(cells)}</tr>')
        out.append("</table>")
    missing = [a for a in doc["adapters"] if a["unavailable"]]
    if missing:
        out.append("<h3>Not available in this run</h3><ul>")
        out += [
            f"<li>{escape(a['kind'])}:{escape(a['adapter'])}: {escape(a['unavailable'])}</li>"
            for a in missing
        ]
        out.append("</ul>")
    return "".join(out)


MUTATION_SCORE = Path(__file__).with_name("mutation_score.json")


def _mutation_score(path: Path = MUTATION_SCORE) -> str:
    """The suite's own score: the last measured mutation score per module, with its date
    (written by ``tools/mutation/run.py --record``; modules never measured are not shown)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    rows = [m for m in data.get("modules", []) if m.get("score") is not None]
    if not rows:
        return ""
    out = [
        "<h2>The suite's own score</h2>",
        '<p class="small">Mutation testing (<code>make mutation</code>): mutants of the built-in '
        "in-memory adapters and SPI bases that the contract checks kill; score = (killed + timed "
        "out) / (total &minus; equivalent).</p>",
        "<table><tr><th>module</th><th>measured</th><th>score</th><th>killed</th>"
        "<th>survived</th><th>equivalent</th><th>total</th></tr>",
    ]
    for m in rows:
        out.append(
            f"<tr><td class='id'>{escape(str(m['module']))}</td><td>{escape(str(m['date']))}</td>"
            f"<td class='c'>{100 * float(m['score']):.1f} %</td><td class='c'>{int(m['killed'])}"
            f"</td><td class='c'>{int(m['survived'])}</td><td class='c'>{int(m['equivalent'])}"
            f"</td><td class='c'>{int(m['total'])}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


def _label(r: dict[str, Any]) -> str:
    return (
        f'<a href="#{anchor(r)}">{escape(r["kind"])}:{escape(r["adapter"])} · '
        f"<code>{escape(r['check'])}</code></a>"
    )


def _baseline(doc: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    """The comparison with ``baseline`` (new failures, fixed checks, changed figures)."""
    if baseline is None:
        return ""
    c = compare(doc, baseline)
    out = [
        f'<section class="baseline" id="baseline"><h2>Compared with the baseline of '
        f"{escape(c.baseline_created)}</h2><p>{len(c.new_failures)} new failure(s) · "
        f"{len(c.fixed)} fixed · {len(c.changed_figures)} changed figure(s) · "
        f"{c.new_checks} check(s) not in the baseline · {c.gone_checks} no longer run</p>",
        '<h3 class="failed">New failures</h3>',
    ]
    if c.new_failures:
        out.append('<ul id="new-failures">')
        out += [f"<li>{_label(r)}: {_first(r['message'])}</li>" for r in c.new_failures]
        out.append("</ul>")
    else:
        out.append("<p>None.</p>")
    out.append('<h3 class="passed">Fixed</h3>')
    if c.fixed:
        out.append('<ul id="fixed">')
        out += [
            f"<li>{escape(r['kind'])}:{escape(r['adapter'])} · <code>{escape(r['check'])}</code>"
            f" ({escape(r['status'])} now; failed before: {_first(old['message'], 160)})</li>"
            for r, old in c.fixed
        ]
        out.append("</ul>")
    else:
        out.append("<p>None.</p>")
    out.append("<h3>Changed figures (more than 10%)</h3>")
    if c.changed_figures:
        out.append(
            "<table><tr><th>adapter · check</th><th>figure</th><th>before</th><th>now</th>"
            "<th>change</th></tr>"
        )
        for r, name, a, b in c.changed_figures[:40]:
            pct = f"{(b - a) / abs(a) * 100:+.0f}%" if a else "new"
            out.append(
                f"<tr><td>{_label(r)}</td><td>{escape(name)}</td><td>{a:g}</td><td>{b:g}</td>"
                f"<td>{pct}</td></tr>"
            )
        out.append("</table>")
    else:
        out.append("<p>None.</p>")
    out.append("</section>")
    return "".join(out)


def render(doc: dict[str, Any], baseline: dict[str, Any] | None = None) -> str:
    """The whole page (with a comparison when a ``baseline`` report is given)."""
    body = (
        "<h1>PURISTA adapter conformance</h1>"
        + _summary(doc)
        + _baseline(doc, baseline)
        + _matrix(doc)
        + _checklist(doc)
        + _details(doc)
        + _observations(doc)
        + plots.section(doc["results"])
        + _figures(doc)
        + _timings(doc)
        + _capabilities(doc)
        + _mutation_score()
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>Conformance report</title><style>{_CSS}</style></head><body>{body}</body></html>\n"
    )
