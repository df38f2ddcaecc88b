"""Retry policy: bounded attempts, exponential backoff, jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how soon a failed handler is tried again.

    ``attempt`` counts deliveries from 1. The delay before attempt ``n + 1`` is
    ``retry_delay_ms * backoff ** (n - 1)``, capped at ``max_retry_delay_ms``,
    then spread by ``jitter`` (a fraction: 0.2 means +-20 %).
    """

    max_attempts: int = 3
    retry_delay_ms: int = 100
    backoff: float = 2.0
    max_retry_delay_ms: int = 30_000
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.retry_delay_ms < 0 or self.max_retry_delay_ms < 0:
            raise ValueError("retry delays must be >= 0")
        if self.backoff < 1:
            raise ValueError(f"backoff must be >= 1, got {self.backoff}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be within 0..1, got {self.jitter}")

    def should_retry(self, attempt: int) -> bool:
        """Whether a failure at delivery ``attempt`` gets another try."""
        return attempt < self.max_attempts

    def base_delay_ms(self, attempt: int) -> float:
        """The delay before the next attempt, without jitter."""
        try:
            raw = self.retry_delay_ms * self.backoff ** max(attempt - 1, 0)
        except OverflowError:  # float pow overflows past about attempt 1024 (backoff 2)
            raw = float("inf") if self.retry_delay_ms else 0.0
        return min(raw, float(self.max_retry_delay_ms))

    def delay_ms(self, attempt: int, rng: random.Random | None = None) -> float:
        """The delay before the next attempt, jitter applied."""
        base = self.base_delay_ms(attempt)
        if not self.jitter:
            return base
        spread = base * self.jitter
        return max(0.0, base + (rng or random).uniform(-spread, spread))

    def delay_bounds_ms(self, attempt: int) -> tuple[float, float]:
        """The smallest and largest delay the policy allows after ``attempt``."""
        base = self.base_delay_ms(attempt)
        return (max(0.0, base * (1 - self.jitter)), base * (1 + self.jitter))
