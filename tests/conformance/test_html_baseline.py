"""report.html with --baseline, rendered by headless Chromium: new failures and fixed checks.

Two real runs: the baseline, where adapter ``alpha`` ignores command TTLs and ``beta``
is correct, then the swap. The page must list ``beta``'s timeout check as newly failed
and ``alpha``'s as fixed; Chromium renders it (the DOM it built is asserted, and the
screenshot must show the failure colour).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

import conformance

HERE = Path(__file__).resolve().parent
CHECK = "event_bridge.commands.timeout"
# -k matches substrings: leave out event_bridge.commands.timeout_range
KEYWORD = f"{CHECK} and not timeout_range"
FAILED_BG = (0xFD, 0xE2, 0xE1)  # .failed in report.html's CSS


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed (apt-get install chromium); CI must have it")
    pytest.skip("chromium is not installed (apt-get install chromium)")


def _chromium_args(tmp: Path) -> list[str]:
    return [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp / 'profile'}",
        "--window-size=1280,1600",
    ]


def _pixels(png: bytes) -> set[tuple[int, int, int]]:
    """The RGB colours of an 8-bit RGB/RGBA PNG (enough for Chromium's screenshots)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", data[:10])
            assert depth == 8 and color in (2, 6), (depth, color)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    raw, stride = zlib.decompress(idat), width * channels
    prev, colours = bytearray(stride), set()
    for y in range(height):
        ftype, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        colours.update(
            tuple(line[x : x + 3])
            for x in range(0, stride, channels)  # type: ignore[misc]
        )
        prev = line
    return colours


def test_chromium_renders_the_baseline_comparison(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chromium = _chromium_args(tmp_path)
    monkeypatch.syspath_prepend(str(HERE))
    old, new = tmp_path / "old", tmp_path / "new"
    before = conformance.run(
        adapters=["alpha=baseline_adapters:ignores_ttl", "beta=baseline_adapters:correct"],
        keyword=KEYWORD,
        report_dir=old,
    )
    assert [(r.adapter, r.check) for r in before.failed()] == [("alpha", CHECK)]
    after = conformance.run(
        adapters=["alpha=baseline_adapters:correct", "beta=baseline_adapters:ignores_ttl"],
        keyword=KEYWORD,
        report_dir=new,
        baseline=old / "report.json",
    )
    assert [(r.adapter, r.check) for r in after.failed()] == [("beta", CHECK)]
    page = (new / "report.html").resolve().as_uri()
    dom = subprocess.run(
        [*chromium, "--dump-dom", page], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    new_failures = dom.split('id="new-failures"', 1)[1].split("</ul>", 1)[0]
    fixed = dom.split('id="fixed"', 1)[1].split("</ul>", 1)[0]
    assert "event_bridge:beta" in new_failures and CHECK in new_failures
    assert "event_bridge:alpha" not in new_failures
    assert "event_bridge:alpha" in fixed and CHECK in fixed
    assert "event_bridge:beta" not in fixed
    # the new failure links to its details, and that anchor exists
    assert 'href="#r-event_bridge-beta-event_bridge.commands.timeout"' in new_failures
    assert 'id="r-event_bridge-beta-event_bridge.commands.timeout"' in dom
    # the passing adapter's timeout figures are plotted inline (beta failed before any)
    plots = dom.split('<section id="plots">', 1)[1].split("</section>", 1)[0]
    plot = plots.split(f'data-check="{CHECK}" data-figure="timeout_s"', 1)[1].split("</svg>")[0]
    assert "event_bridge:alpha" in plot and plot.count("<circle") >= 1, plot
    shot = tmp_path / "report.png"
    subprocess.run(
        [*chromium, f"--screenshot={shot}", page], capture_output=True, timeout=120, check=True
    )
    assert FAILED_BG in _pixels(shot.read_bytes()), "the screenshot shows no failed cell"
