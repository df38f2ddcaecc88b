"""LogThrottle: the first line of a kind at once, then one per interval with the count."""

from __future__ import annotations

import logging

import pytest

from reference_services.runtime.spi.log_throttle import LogThrottle


def test_a_flood_of_one_kind_writes_one_line_per_interval_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    throttle = LogThrottle(logging.getLogger("t.throttle"), every_s=5.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="t.throttle")
    written = [throttle.log(logging.WARNING, "malformed", "bad %d", i) for i in range(1000)]
    assert written.count(True) == 1 and throttle.held_back("malformed") == 999
    # another kind is not held back by the first
    assert throttle.log(logging.INFO, "expired", "late %d", 1)
    now[0] += 4.9
    assert not throttle.log(logging.WARNING, "malformed", "bad %d", 1000)
    now[0] += 0.2
    assert throttle.log(logging.WARNING, "malformed", "bad %d", 1001)
    assert [r.getMessage() for r in caplog.records] == [
        "bad 0",
        "late 1",
        "bad 1001 (and 1000 more like it in the last 5s, not logged)",
    ]
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO, logging.WARNING]
    assert throttle.held_back("malformed") == 0
