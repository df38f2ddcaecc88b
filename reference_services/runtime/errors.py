"""Handled and unhandled errors with HTTP-like status codes."""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from reference_services.runtime.messages import Command, CommandErrorResponse, error_response


class StatusCode(IntEnum):
    """HTTP-like status codes carried by error responses."""

    BAD_REQUEST = 400
    UNAUTHORIZED = 401
    FORBIDDEN = 403
    NOT_FOUND = 404
    CONFLICT = 409
    INTERNAL_SERVER_ERROR = 500
    NOT_IMPLEMENTED = 501
    BAD_GATEWAY = 502
    SERVICE_UNAVAILABLE = 503
    GATEWAY_TIMEOUT = 504


class PuristaError(Exception):
    """Base of the runtime's errors: a status, a message and optional data."""

    is_handled: bool = False
    default_status: int = StatusCode.INTERNAL_SERVER_ERROR

    def __init__(
        self,
        message: str = "",
        status: int | None = None,
        *,
        data: Any = None,
        trace_id: str | None = None,
    ) -> None:
        self.status = int(status if status is not None else self.default_status)
        if not message:
            known = StatusCode._value2member_map_.get(self.status)
            message = known.name.replace("_", " ").lower() if known else f"error {self.status}"
        self.message = message
        self.data = data
        self.trace_id = trace_id
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, message={self.message!r})"

    def to_response(
        self, command: Command, responder_instance_id: str | None = None
    ) -> CommandErrorResponse:
        """The error response this error becomes when it answers ``command``."""
        return error_response(
            command,
            self.status,
            self.message,
            data=self.data,
            is_handled_error=self.is_handled,
            responder_instance_id=responder_instance_id,
        )


class HandledError(PuristaError):
    """An expected failure (bad input, not found, forbidden): never retried."""

    is_handled = True
    default_status = StatusCode.BAD_REQUEST


class UnhandledError(PuristaError):
    """An unexpected failure: retried where the transport allows."""

    is_handled = False
    default_status = StatusCode.INTERNAL_SERVER_ERROR


def error_from_response(response: CommandErrorResponse) -> PuristaError:
    """Rebuild the error an error response carries, losing nothing."""
    cls = HandledError if response.is_handled_error else UnhandledError
    body = response.payload
    return cls(
        body.message, body.status, data=body.data, trace_id=body.trace_id or response.trace_id
    )


def as_purista_error(exc: BaseException) -> PuristaError:
    """Wrap any exception as an unhandled 500 unless it already is a PuristaError."""
    if isinstance(exc, PuristaError):
        return exc
    return UnhandledError(f"{type(exc).__name__}: {exc}", StatusCode.INTERNAL_SERVER_ERROR)
