"""The PURISTA message envelope as typed classes.

Python attributes are snake_case; the wire (see :mod:`codec`) uses camelCase.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_serializer
from pydantic.alias_generators import to_camel

from reference_services.runtime.ids import new_id, now_ms


class MessageType(StrEnum):
    """Every ``messageType`` a PURISTA message can carry."""

    COMMAND = "command"
    COMMAND_SUCCESS_RESPONSE = "commandSuccessResponse"
    COMMAND_ERROR_RESPONSE = "commandErrorResponse"
    CUSTOM_MESSAGE = "customMessage"
    INFO_SERVICE_INIT = "infoServiceInit"
    INFO_SERVICE_READY = "infoServiceReady"
    INFO_SERVICE_NOT_READY = "infoServiceNotReady"
    INFO_SERVICE_FUNCTION_ADDED = "infoServiceFunctionAdded"
    INFO_SERVICE_DRAIN = "infoServiceDrain"
    INFO_SERVICE_SHUTDOWN = "infoServiceShutdown"
    INFO_INVOKE_TIMEOUT = "infoInvokeTimeout"
    INFO_SUBSCRIPTION_ERROR = "infoSubscriptionError"


INFO_TYPES = frozenset(t for t in MessageType if t.value.startswith("info"))


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        strict=True,
        frozen=True,
        extra="ignore",
    )


class Address(_Model):
    """A service function address; ``instance_id`` pins one instance."""

    service_name: str
    service_version: str
    service_target: str
    instance_id: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        """The instance-independent identity of the addressed function."""
        return (self.service_name, self.service_version, self.service_target)

    def __str__(self) -> str:
        base = f"{self.service_name}.{self.service_version}.{self.service_target}"
        return f"{base}@{self.instance_id}" if self.instance_id else base


class SenderAddress(Address):
    """The sender of a message always names its instance."""

    instance_id: str


class CommandPayload(_Model):
    """A command carries its input as ``{payload, parameter}``."""

    payload: Any = None
    parameter: Any = None


class ErrorPayload(_Model):
    """The body of a command error response."""

    status: int
    message: str
    data: Any = None
    trace_id: str | None = None


class _Envelope(_Model):
    id: str = Field(default_factory=new_id, min_length=1)
    timestamp: int = Field(default_factory=now_ms)
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    sender: SenderAddress
    trace_id: str | None = None
    correlation_id: str | None = None
    principal_id: str | None = None
    tenant_id: str | None = None
    event_name: str | None = None
    otp: str | None = None

    @field_serializer("otp", when_used="json")
    def _otp_on_the_wire(self, otp: str | None) -> str:
        # PURISTA always sends otp: "{}" without a span (see codec.EMPTY_OTP)
        return "{}" if otp is None else otp


class Command(_Envelope):
    """A request for one service function; answered by a response message."""

    message_type: Literal[MessageType.COMMAND] = MessageType.COMMAND
    correlation_id: str = Field(default_factory=new_id, min_length=1)
    receiver: Address
    payload: CommandPayload = Field(default_factory=CommandPayload)
    #: when the invoker gives up (ms since the epoch); a server does not start the command
    #: past it. Not part of PURISTA's envelope: PURISTA peers ignore it (and rely on the
    #: broker's per-message expiry, which this bridge also sets where the broker has one)
    expires_at: int | None = None


class CommandSuccessResponse(_Envelope):
    """A command's result, addressed back to the invoking instance."""

    message_type: Literal[MessageType.COMMAND_SUCCESS_RESPONSE] = (
        MessageType.COMMAND_SUCCESS_RESPONSE
    )
    correlation_id: str = Field(min_length=1)
    receiver: SenderAddress
    payload: Any = None


class CommandErrorResponse(_Envelope):
    """A command's failure, with an HTTP-like status."""

    message_type: Literal[MessageType.COMMAND_ERROR_RESPONSE] = MessageType.COMMAND_ERROR_RESPONSE
    correlation_id: str = Field(min_length=1)
    receiver: SenderAddress
    is_handled_error: bool = False
    payload: ErrorPayload


class CustomMessage(_Envelope):
    """An event: ``eventName`` is required, ``receiver`` optional."""

    message_type: Literal[MessageType.CUSTOM_MESSAGE] = MessageType.CUSTOM_MESSAGE
    event_name: str = Field(min_length=1)
    receiver: Address | None = None
    payload: Any = None


InfoMessageType = Literal[
    MessageType.INFO_SERVICE_INIT,
    MessageType.INFO_SERVICE_READY,
    MessageType.INFO_SERVICE_NOT_READY,
    MessageType.INFO_SERVICE_FUNCTION_ADDED,
    MessageType.INFO_SERVICE_DRAIN,
    MessageType.INFO_SERVICE_SHUTDOWN,
    MessageType.INFO_INVOKE_TIMEOUT,
    MessageType.INFO_SUBSCRIPTION_ERROR,
]


class InfoMessage(_Envelope):
    """Life-cycle and diagnostic messages emitted by services and bridges."""

    message_type: InfoMessageType
    payload: Any = None


CommandResponse = CommandSuccessResponse | CommandErrorResponse

Message = Annotated[
    Command | CommandSuccessResponse | CommandErrorResponse | CustomMessage | InfoMessage,
    Field(discriminator="message_type"),
]
"""Any message on an event bridge, discriminated by ``messageType``."""

AnyMessage = Command | CommandSuccessResponse | CommandErrorResponse | CustomMessage | InfoMessage


def success_response(
    command: Command,
    payload: Any,
    *,
    event_name: str | None = None,
    responder_instance_id: str | None = None,
) -> CommandSuccessResponse:
    """The success response to ``command``: same id and correlationId, sender/receiver swapped
    (the sender names ``responder_instance_id`` when given: the bridge then keeps it as is)."""
    return CommandSuccessResponse(
        **_reply_fields(command, responder_instance_id), event_name=event_name, payload=payload
    )


class Answerable(Protocol):
    """What a response copies from the command it answers (a :class:`Command` is one; a
    bridge may keep just these instead of the whole command and its payload)."""

    @property
    def id(self) -> str: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def sender(self) -> SenderAddress: ...
    @property
    def receiver(self) -> Address: ...
    @property
    def trace_id(self) -> str | None: ...
    @property
    def principal_id(self) -> str | None: ...
    @property
    def tenant_id(self) -> str | None: ...
    @property
    def otp(self) -> str | None: ...


def error_response(
    command: Answerable,
    status: int,
    message: str,
    *,
    data: Any = None,
    is_handled_error: bool = False,
    responder_instance_id: str | None = None,
) -> CommandErrorResponse:
    """Build the error response to ``command`` with an HTTP-like ``status``."""
    return CommandErrorResponse(
        **_reply_fields(command, responder_instance_id),
        is_handled_error=is_handled_error,
        payload=ErrorPayload(status=status, message=message, data=data, trace_id=command.trace_id),
    )


def _reply_fields(command: Answerable, responder_instance_id: str | None) -> dict[str, Any]:
    """What every response to ``command`` copies from it, sender and receiver swapped."""
    return {
        "id": command.id,
        "correlation_id": command.correlation_id,
        "sender": SenderAddress(
            service_name=command.receiver.service_name,
            service_version=command.receiver.service_version,
            service_target=command.receiver.service_target,
            instance_id=responder_instance_id or command.receiver.instance_id or "",
        ),
        "receiver": command.sender,
        "trace_id": command.trace_id,
        "principal_id": command.principal_id,
        "tenant_id": command.tenant_id,
        "otp": command.otp,
    }
