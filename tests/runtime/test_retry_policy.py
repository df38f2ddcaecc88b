"""The retry policy's delays stay finite and capped for any attempt number."""

from __future__ import annotations

import random

import pytest

from reference_services.runtime.retry import RetryPolicy


@pytest.mark.parametrize("attempt", [1, 2, 1024, 1025, 5000, 10**9])
def test_delays_are_capped_for_any_attempt(attempt: int) -> None:
    policy = RetryPolicy(retry_delay_ms=100, backoff=2.0, max_retry_delay_ms=30_000, jitter=0.2)
    expected = min(100 * 2.0 ** min(attempt - 1, 20), 30_000)
    assert policy.base_delay_ms(attempt) == expected
    low, high = policy.delay_bounds_ms(attempt)
    assert low <= policy.delay_ms(attempt, random.Random(attempt)) <= high <= 36_000


def test_zero_base_delay_stays_zero_at_attempt_5000() -> None:
    assert RetryPolicy(retry_delay_ms=0, backoff=10.0).delay_ms(5000) == 0.0
