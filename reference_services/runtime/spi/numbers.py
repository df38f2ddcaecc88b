"""For adapters whose backend keeps numbers as doubles: reject what it would round.

An adapter declaring ``numbers="safe_integers"`` calls :func:`reject_unsafe_integers`
on every payload before it leaves the process, so a value is never silently changed.
"""

from __future__ import annotations

from typing import Any

from reference_services.runtime.codec import MessageEncodeError

MAX_SAFE_INTEGER = 2**53 - 1


def reject_unsafe_integers(value: Any, field: str = "payload") -> None:
    """Raise :class:`MessageEncodeError` naming the first integer beyond +-(2**53 - 1)."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise MessageEncodeError(
                f"{field}: integer {value} is beyond +-(2**53 - 1) and would be rounded"
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            reject_unsafe_integers(item, f"{field}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            reject_unsafe_integers(item, f"{field}[{i}]")
