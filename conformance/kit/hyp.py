"""Hypothesis helpers: JSON strategies, per-adapter settings, an asyncio.Runner session.

Hypothesis has no native asyncio: property checks are sync tests that drive the
adapter through one :class:`asyncio.Runner` for all examples.
"""

from __future__ import annotations

import asyncio
import contextlib
import string
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from conformance.kit.under_test import AdapterUnderTest

MAX_SAFE_INT = 2**53 - 1


def _json(integers: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | integers
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=40)
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(st.text(max_size=12), children, max_size=5)
        ),
        max_leaves=25,
    )


json_values: st.SearchStrategy[Any] = _json(
    st.integers() | st.integers(min_value=2**53 - 4, max_value=2**70).map(lambda i: i * (-1) ** i)
)
"""Any JSON value: unicode text (no surrogates), nesting, integers of any size (beyond
2**53 often), finite floats at full precision."""

safe_json_values: st.SearchStrategy[Any] = _json(st.integers(-MAX_SAFE_INT, MAX_SAFE_INT))
"""Like :data:`json_values` with integers within +-(2**53 - 1)."""


def json_values_for(aut: AdapterUnderTest) -> st.SearchStrategy[Any]:
    """The JSON values the adapter promises to carry unchanged (its ``numbers`` capability)."""
    mode = aut.spec.capabilities.numbers
    return json_values if mode == "exact" else safe_json_values


_ID_CHARS = string.ascii_letters + string.digits + "-_.:@/ +#*>é中🙂"
envelope_ids = st.none() | st.text(alphabet=_ID_CHARS, min_size=1, max_size=40)
"""Principal / tenant ids, including characters that are special in subjects and topics."""

hex32 = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)
trace_ids = st.none() | hex32 | st.text(alphabet=_ID_CHARS, min_size=1, max_size=40)


def _otp(trace: str, span: str, state: str) -> str:
    extra = f',"tracestate":"{state}"' if state else ""
    return f'{{"traceparent":"00-{trace}-{span[:16]}-01"{extra}}}'


otps = st.none() | st.builds(
    _otp,
    hex32,
    hex32,
    st.text(alphabet=string.ascii_lowercase + "=,", max_size=20),
)


def settings_for(aut: AdapterUnderTest, memory: int = 60, broker: int = 15) -> settings:
    """Example counts per adapter kind: fewer for adapters with a backing service, fewer
    still for those with --quick. In-process adapters are cheap and keep the full count
    (a quick run that draws too few examples lets a lossy in-process adapter pass)."""
    in_process = aut.is_reference or not aut.spec.services
    n = memory if in_process else broker
    if aut.quick and not in_process:
        n = max(5, n // 3)
    return settings(
        max_examples=n,
        deadline=None,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
        ],
    )


@contextlib.contextmanager
def session(aut: AdapterUnderTest) -> Iterator[asyncio.Runner]:
    """An event loop for a sync property check; destroys the instances at the end."""
    with asyncio.Runner() as runner:
        try:
            yield runner
        finally:
            runner.run(aut.close())
