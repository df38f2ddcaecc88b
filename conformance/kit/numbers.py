"""Numbers at the edges: integers of any size and doubles at full precision.

What an adapter promises is its declared ``numbers`` capability: ``exact`` (everything
comes back unchanged) or ``safe_integers`` (an integer beyond +-(2**53 - 1) is refused at
encode with ``MessageEncodeError`` naming the field; doubles still come back unchanged).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from reference_services.runtime.codec import MessageEncodeError

MAX_SAFE = 2**53 - 1
SAFE_INTS = [0, -1, MAX_SAFE, -MAX_SAFE, 2**31, -(2**31) - 1]
UNSAFE_INTS = [MAX_SAFE + 2, -(MAX_SAFE + 2), 2**63 - 1, -(2**63), 2**64 + 1, 10**40 + 7]
FLOATS = [
    0.1,
    0.1 + 0.2,
    1 / 3,
    -2.5e-7,
    5e-324,  # the smallest subnormal
    2.2250738585072014e-308,  # the smallest normal
    1.7976931348623157e308,  # the largest finite
    9007199254740993.0,  # 2**53 + 1 as a double (rounds to 2**53)
    123456789.12345679,
    -0.0,
]


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _caused_by_encode_error(exc: BaseException) -> MessageEncodeError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MessageEncodeError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


async def expect_numbers(
    mode: str, round_trip: Callable[[Any], Awaitable[Any]], field: str = "n"
) -> None:
    """Judge ``round_trip(value) -> value back`` against the declared ``mode``."""
    exact = {field: {"ints": SAFE_INTS + (UNSAFE_INTS if mode == "exact" else []), "f": FLOATS}}
    got = await round_trip(exact)
    if _canon(got) != _canon(exact):
        want_v, got_v = exact[field], (got or {}).get(field, {}) if isinstance(got, dict) else {}
        diff = [
            (w, g)
            for key in ("ints", "f")
            for w, g in zip(want_v[key], (got_v or {}).get(key, []), strict=False)
            if _canon(w) != _canon(g)
        ]
        raise AssertionError(f"numbers changed on the way (sent, got): {diff[:6] or got!r:.300}")
    if mode == "exact":
        return
    if mode != "safe_integers":
        raise AssertionError(f"unknown numbers capability {mode!r}: exact or safe_integers")
    for value in UNSAFE_INTS:
        try:
            back = await round_trip({field: value})
        except Exception as exc:
            err = _caused_by_encode_error(exc)
            if err is None or field not in str(err):
                raise AssertionError(
                    f"integer {value}: expected MessageEncodeError naming {field!r}, got "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            continue
        raise AssertionError(
            f"integer {value} was accepted under safe_integers: came back {back!r}"
        )
