"""report.html draws the latency and recovery figures as inline SVG: one plot per check
and figure, every adapter on one scale (bars for a value, dots for a list)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from conformance.report import html, plots

SVG = "{http://www.w3.org/2000/svg}"


def row(adapter: str, check: str, status: str = "passed", **metrics: object) -> dict:
    return {
        "kind": "queue_bridge",
        "adapter": adapter,
        "check": check,
        "status": status,
        "duration_s": 0.1,
        "message": "",
        "metrics": metrics,
    }


def svgs(page: str) -> dict[str, ET.Element]:
    section = page.split('<section id="plots">', 1)[1].split("</section>", 1)[0]
    found = re.findall(r"<svg .*?</svg>", section, flags=re.S)
    trees = [ET.fromstring(s) for s in found]  # well-formed XML, or this raises
    return {f"{t.get('data-check')}/{t.get('data-figure')}": t for t in trees}


def doc(results: list[dict]) -> dict:
    return {
        "results": results,
        "adapters": [],
        "suite": "contract",
        "provider": "none",
        "duration_s": 1.0,
        "created": "now",
    }


def test_bars_share_one_scale_and_lists_become_dots() -> None:
    page = html.render(
        doc(
            [
                row("a", "queue_bridge.lease_expiry", recovered_after_s=1.0, leases=7),
                row("b", "queue_bridge.lease_expiry", "failed", recovered_after_s=2.0),
                row("a", "x.timeout", timeout_s=[0.3, 0.31, 0.5]),
                row("a", "x.counts", delivered=100, per_worker={"w": 3}),
            ]
        )
    )
    plotted = svgs(page)
    assert set(plotted) == {"queue_bridge.lease_expiry/recovered_after_s", "x.timeout/timeout_s"}
    bars = plotted["queue_bridge.lease_expiry/recovered_after_s"].findall(f"{SVG}rect")
    widths = {b.get("data-value"): float(b.get("width")) for b in bars}
    assert widths["2"] == 2 * widths["1"] > 0, widths
    fills = [b.get("fill") for b in bars]
    assert fills == [plots.BAR, plots.BAR_FAILED], fills  # b failed: red
    dots = plotted["x.timeout/timeout_s"].findall(f"{SVG}circle")
    assert sorted(float(d.get("data-value")) for d in dots) == [0.3, 0.31, 0.5]
    assert "median 0.31 s" in page
    # under recovery and latency headings, labelled with the check and the figure
    assert page.index('id="plots-latency"') < page.index("x.timeout</code> · timeout_s")
    assert page.index('id="plots-recovery"') < page.index(
        "queue_bridge.lease_expiry</code> · recovered_after_s"
    )


def test_labels_are_escaped_and_no_figures_no_section() -> None:
    page = html.render(doc([row("<b>evil</b>", "c.x", recovery_s=0.5)]))
    assert "<b>evil</b>" not in page and "&lt;b&gt;evil&lt;/b&gt;" in page
    assert '<section id="plots">' not in html.render(doc([row("a", "c", delivered=3)]))
