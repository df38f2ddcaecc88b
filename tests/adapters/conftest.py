"""Fixtures shared by the adapter integration tests (brokers come from the harness plugin)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture
def fresh_nats(fresh_service: Callable[[str], Any]) -> Any:
    """A dedicated nats-server this test may kill (``kill()`` then ``start()``, same store)."""
    return fresh_service("nats")


@pytest.fixture
def fresh_redis(fresh_service: Callable[[str], Any]) -> Any:
    """A dedicated AOF Redis (fsync always) for tests that kill it."""
    return fresh_service("redis")
