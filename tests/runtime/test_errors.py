"""Errors survive the trip through an error response."""

from __future__ import annotations

import pytest

from reference_services.runtime.codec import decode, encode
from reference_services.runtime.errors import (
    HandledError,
    UnhandledError,
    as_purista_error,
    error_from_response,
)
from reference_services.runtime.messages import Address, Command, SenderAddress


def _command() -> Command:
    return Command(
        sender=SenderAddress(
            service_name="a", service_version="1", service_target="t", instance_id="i"
        ),
        receiver=Address(service_name="b", service_version="1", service_target="c"),
        trace_id="f" * 32,
    )


@pytest.mark.parametrize("cls", [HandledError, UnhandledError])
@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 500, 503, 504])
def test_error_round_trips_through_the_wire(cls: type, status: int) -> None:
    error = cls("went wrong: ü", status, data={"field": ["x", 1]})
    response = decode(encode(error.to_response(_command())))
    back = error_from_response(response)  # type: ignore[arg-type]
    assert type(back) is cls
    assert (back.status, back.message, back.data) == (status, "went wrong: ü", {"field": ["x", 1]})
    assert back.trace_id == "f" * 32


def test_plain_exceptions_become_unhandled_500() -> None:
    err = as_purista_error(KeyError("k"))
    assert isinstance(err, UnhandledError)
    assert err.status == 500
    assert "KeyError" in err.message


def test_default_messages_name_the_status() -> None:
    assert HandledError(status=404).message == "not found"
    assert UnhandledError(status=599).message == "error 599"
