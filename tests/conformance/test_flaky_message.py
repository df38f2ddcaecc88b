"""A Hypothesis "flaky" failure is reported by its first real cause, not "unreliable results"."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.report.results import message_of


def test_the_first_real_cause_leads_the_message() -> None:
    calls = [0]

    @settings(database=None, derandomize=True)
    @given(st.integers())
    def check(x: int) -> None:
        calls[0] += 1
        if calls[0] == 1:  # fails once, then passes on the replay: Hypothesis calls it flaky
            raise AssertionError("sent 100, delivered 97; lost 3 [m1, m2, m3]")

    call = pytest.CallInfo.from_call(check, "call")
    assert call.excinfo is not None and "unreliable" in str(call.excinfo.value)
    message = message_of(call)
    assert message.splitlines()[0] == "AssertionError: sent 100, delivered 97; lost 3 [m1, m2, m3]"
    assert "FlakyFailure" in message


def test_a_plain_assertion_is_unchanged() -> None:
    def fail() -> None:
        raise AssertionError("lost 1 [m9]")

    assert message_of(pytest.CallInfo.from_call(fail, "call")) == "lost 1 [m9]"
