"""Wire codec: messages to and from camelCase JSON bytes.

``decode`` never lets anything but :class:`MessageDecodeError` escape, so a
bridge can reject a bad message, log the reason and keep serving.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from reference_services.runtime.messages import (
    Address,
    AnyMessage,
    CommandPayload,
    ErrorPayload,
    Message,
    MessageType,
)

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024

# No string cache: pydantic-core's parser otherwise keeps every string of up to 64 characters
# it reads in a process-wide table of 16,384 slots: the id and correlation id of every
# message decoded, about 1.5 MB once full, that never serve again (ids do not repeat).
# Decoding a 450-byte command measured no slower without it (15-18 us either way).
_ADAPTER: TypeAdapter[AnyMessage] = TypeAdapter(Message, config=ConfigDict(cache_strings="none"))
_OPTIONAL_ENVELOPE = (
    "traceId",
    "correlationId",
    "principalId",
    "tenantId",
    "eventName",
    "receiver",
    "expiresAt",
)
EMPTY_OTP = "{}"
"""PURISTA always sends ``otp``: the W3C carrier as a JSON string, ``{}`` without a span."""
_KNOWN_TYPES = ", ".join(t.value for t in MessageType)
# Fields with a construction-time default that must nevertheless be on the wire.
_REQUIRED_ON_WIRE: dict[str, tuple[str, ...]] = {
    MessageType.COMMAND: ("id", "timestamp", "correlationId", "receiver"),
    MessageType.COMMAND_SUCCESS_RESPONSE: ("id", "timestamp", "correlationId", "receiver"),
    MessageType.COMMAND_ERROR_RESPONSE: ("id", "timestamp", "correlationId", "receiver"),
}
_REQUIRED_DEFAULT = ("id", "timestamp")


class MessageDecodeError(ValueError):
    """A message could not be decoded; ``field`` and ``problem`` say why."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class MessageEncodeError(ValueError):
    """A message could not be encoded (e.g. a payload that is not JSON)."""


def _to_field(wire_key: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in wire_key)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def to_wire(message: AnyMessage) -> dict[str, Any]:
    """The message as the camelCase dict that goes on the wire, shaped as PURISTA's
    ``JSON.stringify`` shapes it: a field without a value is left out (never
    ``null``), and ``otp`` is always there."""
    # the message's own serializer: the union's would first pick it by messageType
    data = type(message).__pydantic_serializer__.to_python(message, by_alias=True, mode="python")
    for key in _OPTIONAL_ENVELOPE:
        if data.get(key, 0) is None:
            del data[key]
    if data.get("otp") is None:
        data["otp"] = EMPTY_OTP
    if data.get("payload", 0) is None:
        del data["payload"]
    for key in ("sender", "receiver"):
        address = data.get(key)
        if isinstance(address, dict) and address.get("instanceId", 0) is None:
            del address["instanceId"]
    payload = data.get("payload")
    if isinstance(payload, dict) and data["messageType"] == MessageType.COMMAND_ERROR_RESPONSE:
        for key in ("traceId", "data"):
            if payload.get(key, 0) is None:
                del payload[key]
    if isinstance(payload, dict) and data["messageType"] == MessageType.COMMAND:
        for key in ("payload", "parameter"):
            if payload.get(key, 0) is None:
                del payload[key]
    data["messageType"] = str(data["messageType"])
    return data


def from_wire(data: Any) -> AnyMessage:
    """Validate a decoded JSON value as a message."""
    if not isinstance(data, dict):
        raise MessageDecodeError("<root>", f"expected a JSON object, got {type(data).__name__}")
    message_type = data.get("messageType")
    if message_type is None:
        raise MessageDecodeError("messageType", "missing")
    if not isinstance(message_type, str) or message_type not in MessageType._value2member_map_:
        raise MessageDecodeError(
            "messageType", f"unknown value {message_type!r} (expected one of {_KNOWN_TYPES})"
        )
    for key in _REQUIRED_ON_WIRE.get(message_type, _REQUIRED_DEFAULT):
        if key not in data:
            raise MessageDecodeError(key, "missing")
    if data.get("otp") == EMPTY_OTP:  # an empty carrier is no trace context
        data = {k: v for k, v in data.items() if k != "otp"}
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = [str(part) for part in first["loc"]]
        if loc and loc[0] in MessageType._value2member_map_:
            loc = loc[1:]
        field = ".".join(loc) or "<root>"
        problem = "missing" if first["type"] == "missing" else first["msg"]
        raise MessageDecodeError(field, problem) from None


#: built once (``json.dumps`` with options builds an encoder on every call)
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
#: the fields a message's JSON must name, by messageType, as model field names
_REQUIRED_FIELDS: dict[str, frozenset[str]] = {
    t: frozenset(_to_field(k) for k in _REQUIRED_ON_WIRE.get(t, _REQUIRED_DEFAULT))
    for t in MessageType
}


def encode(message: AnyMessage, *, max_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES) -> bytes:
    """Encode ``message`` to UTF-8 JSON bytes."""
    try:
        raw = _wire_json(message)
        if raw is None:
            raw = _JSON.encode(to_wire(message)).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise MessageEncodeError(f"message {message.id} is not encodable as JSON: {exc}") from exc
    if max_bytes is not None and len(raw) > max_bytes:
        raise MessageEncodeError(
            f"message {message.id} is {len(raw)} bytes, over the limit of {max_bytes}"
        )
    return raw


_SCALARS = frozenset({str, int, bool, type(None)})
_INF = float("inf")
#: containers looked into before the scan gives up (a cycle, or a payload so big that the
#: standard library's time hardly matters)
_PLAIN_SCAN_LIMIT = 2000
#: envelope fields left out of the wire when unset (model field names)
_UNSET_LEFT_OUT = (*(_to_field(k) for k in _OPTIONAL_ENVELOPE), "payload")


def _plain(value: Any) -> bool:
    """Whether ``value`` holds JSON's own types only (exactly: no subclasses, string keys,
    finite floats): what pydantic-core writes as the standard library does."""
    scalars = _SCALARS
    if type(value) in scalars:
        return True
    todo = [value]
    for _ in range(_PLAIN_SCAN_LIMIT):
        if not todo:
            return True
        item = todo.pop()
        kind = type(item)
        if kind is dict:
            for key, inner in item.items():
                if type(key) is not str:
                    return False
                if type(inner) not in scalars:
                    todo.append(inner)
        elif kind is list or kind is tuple:
            for inner in item:
                if type(inner) not in scalars:
                    todo.append(inner)
        elif kind is float:
            if not -_INF < item < _INF:  # NaN and the infinities: refused by the full path
                return False
        elif kind not in scalars:
            return False
    return False


def _wire_json(message: AnyMessage) -> bytes | None:
    """What ``to_wire`` and the standard library's JSON give, written by the message's own
    pydantic-core serializer in one pass (a third of the time); None when only the full
    path decides: a payload holding anything but JSON's own types (a datetime, a set,
    bytes, a subclass, NaN: refused there). Same text, except that a float with an
    exponent is written as JavaScript writes it (``1e-7``, not ``1e-07``): the same number.
    """
    values = message.__dict__
    exclude: dict[str, Any] = {f: True for f in _UNSET_LEFT_OUT if values.get(f, 0) is None}
    payload = values.get("payload")
    kind = type(payload)
    if kind is CommandPayload:
        inner = payload.__dict__
        if inner["payload"] is None or inner["parameter"] is None:
            exclude["payload"] = {f for f in ("payload", "parameter") if inner[f] is None}
        if not (_plain(inner["payload"]) and _plain(inner["parameter"])):
            return None
    elif kind is ErrorPayload:
        inner = payload.__dict__
        if inner["data"] is None or inner["trace_id"] is None:
            exclude["payload"] = {f for f in ("data", "trace_id") if inner[f] is None}
        if not _plain(inner["data"]):
            return None
    elif not _plain(payload):
        return None
    for side in ("sender", "receiver"):
        address = values.get(side)
        if address is not None and address.__dict__.get("instance_id", 0) is None:
            exclude[side] = {"instance_id"}
    try:
        return type(message).__pydantic_serializer__.to_json(
            message, by_alias=True, exclude=exclude or None
        )
    except (RecursionError, ValueError):  # PydanticSerializationError is a ValueError
        return None


def decode(
    raw: bytes | bytearray | memoryview | str, *, max_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES
) -> AnyMessage:
    """Decode wire bytes into a message or raise :class:`MessageDecodeError`."""
    try:
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogatepass")
        raw = bytes(raw)
        if max_bytes is not None and len(raw) > max_bytes:
            raise MessageDecodeError("<root>", f"{len(raw)} bytes is over the limit of {max_bytes}")
        fast = _decode_fast(raw)
        if fast is not None:
            return _share_parts(fast)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MessageDecodeError(
                "<root>", f"not UTF-8: {exc.reason} at byte {exc.start}"
            ) from None
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            raise MessageDecodeError("<root>", f"not JSON: {exc}") from None
        return _share_parts(from_wire(data))
    except MessageDecodeError:
        raise
    except Exception as exc:
        raise MessageDecodeError("<root>", f"undecodable: {type(exc).__name__}: {exc}") from None


# Addresses repeat (a fleet has few services and instances) and are frozen, so decoded
# messages share one instance of each: ~290 bytes less per address held (the model, its
# dict and its fields-set), ~590 per command waiting in a handler. Bounded: a stream of
# made-up addresses only empties the table.
_SHARED_ADDRESSES: dict[tuple[Any, ...], Address] = {}
_SHARED_ADDRESSES_MAX = 1024
_JSON_CONTENT_TYPE = "application/json"
_UTF8 = "utf-8"


def _shared(address: Address) -> Address:
    # instance_id is the one field with a default: an address that left it out of the wire
    # has another fields-set (and exclude_unset dump) than one that wrote it
    key = (type(address), "instance_id" in address.model_fields_set, *address.__dict__.values())
    shared = _SHARED_ADDRESSES.get(key)
    if shared is not None:
        return shared
    if len(_SHARED_ADDRESSES) >= _SHARED_ADDRESSES_MAX:
        _SHARED_ADDRESSES.clear()
    _SHARED_ADDRESSES[key] = address
    return address


# Likewise the sets naming the fields a message set (pydantic keeps one per model: 730
# bytes for a command's): equal ones are shared. Safe because the models are frozen
# (pydantic adds to the set only on assignment, which they refuse; model_copy copies the
# set before it changes it). Nothing else may change a decoded message's model_fields_set.
# One set kept per model type and size (bounded by the schema); a set of that size that
# differs takes its place.
_SHARED_FIELD_SETS: dict[tuple[type, int], set[str]] = {}


def _share_fields_set(model: Any) -> None:
    own = model.__pydantic_fields_set__
    key = (type(model), len(own))
    shared = _SHARED_FIELD_SETS.get(key)
    if shared is not None and shared == own:
        object.__setattr__(model, "__pydantic_fields_set__", shared)
    else:
        _SHARED_FIELD_SETS[key] = own


def _share_parts(message: AnyMessage) -> AnyMessage:
    """``message`` (new: nobody holds it yet) with its sender and receiver, the sets
    naming the fields it and its payload set, and its usual content type and encoding
    shared with equal ones."""
    fields = message.__dict__
    fields["sender"] = _shared(fields["sender"])
    receiver = fields.get("receiver")
    if receiver is not None:
        fields["receiver"] = _shared(receiver)
    # the usual content type and encoding as one string each (a decoded one is new)
    if fields["content_type"] == _JSON_CONTENT_TYPE:
        fields["content_type"] = _JSON_CONTENT_TYPE
    if fields["content_encoding"] == _UTF8:
        fields["content_encoding"] = _UTF8
    _share_fields_set(message)
    payload = fields.get("payload")
    if isinstance(payload, CommandPayload | ErrorPayload):
        _share_fields_set(payload)
    return message


def _decode_fast(raw: bytes) -> AnyMessage | None:
    """Parse and validate in one pass (pydantic-core's JSON parser); None when the bytes need
    the full path: anything it rejects, and the NaN/Infinity it would accept but JSON
    does not. The full path then gives the same message or the precise error."""
    if b"NaN" in raw or b"Infinity" in raw:
        return None
    try:
        message = _ADAPTER.validate_json(raw)
    except (ValidationError, ValueError, RecursionError):
        return None
    if not _REQUIRED_FIELDS[message.message_type] <= message.model_fields_set:
        return None
    if message.otp == EMPTY_OTP:  # an empty carrier is no trace context
        # as the full path does, but in place: nobody holds this new message yet
        message.__dict__["otp"] = None
        message.model_fields_set.discard("otp")
    return message
