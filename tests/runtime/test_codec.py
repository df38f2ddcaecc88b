"""The codec: round trips, and nothing but MessageDecodeError escapes decode."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from reference_services.runtime import purista_names
from reference_services.runtime.codec import (
    MessageDecodeError,
    MessageEncodeError,
    decode,
    encode,
    to_wire,
)
from reference_services.runtime.messages import (
    Address,
    Command,
    CommandPayload,
    CustomMessage,
    InfoMessage,
    MessageType,
    SenderAddress,
    error_response,
    success_response,
)

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(text, children, max_size=5),
    max_leaves=30,
)
ids = st.text("0123456789abcdef", min_size=32, max_size=32)
names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=12)
senders = st.builds(
    SenderAddress, service_name=names, service_version=names, service_target=names, instance_id=ids
)
addresses = st.builds(
    Address,
    service_name=names,
    service_version=names,
    service_target=names,
    instance_id=st.none() | ids,
)
optional = st.none() | text
envelope = {
    "id": ids,
    "timestamp": st.integers(min_value=0, max_value=2**53),
    "sender": senders,
    "trace_id": st.none() | ids,
    "principal_id": optional,
    "tenant_id": optional,
    "otp": optional,
}
commands = st.builds(
    Command,
    correlation_id=ids,
    receiver=addresses,
    payload=st.builds(CommandPayload, payload=json_values, parameter=json_values),
    event_name=optional,
    **envelope,
)
customs = st.builds(
    CustomMessage,
    event_name=text.filter(bool),
    receiver=st.none() | addresses,
    payload=json_values,
    correlation_id=st.none() | ids,
    **envelope,
)
infos = st.builds(
    InfoMessage,
    message_type=st.sampled_from([t for t in MessageType if t.value.startswith("info")]),
    payload=json_values,
    **envelope,
)


@st.composite
def responses(draw: st.DrawFn) -> object:
    command = draw(commands)
    if draw(st.booleans()):
        return success_response(command, draw(json_values), event_name=draw(optional))
    return error_response(
        command,
        draw(st.integers(400, 599)),
        draw(text),
        data=draw(json_values),
        is_handled_error=draw(st.booleans()),
    )


any_message = st.one_of(commands, customs, infos, responses())


@given(any_message)
def test_every_valid_envelope_round_trips(message: object) -> None:
    assert decode(encode(message)) == message  # type: ignore[arg-type]


@given(json_values)
def test_any_json_payload_round_trips(payload: object) -> None:
    sender = SenderAddress(
        service_name="a", service_version="1", service_target="t", instance_id="i"
    )
    message = CustomMessage(sender=sender, event_name="e", payload=payload)
    assert decode(encode(message)).payload == payload


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_decode_error(raw: bytes) -> None:
    try:
        decode(raw)
    except MessageDecodeError:
        pass


@given(st.dictionaries(text, json_values, max_size=8))
def test_random_json_objects_only_ever_raise_decode_error(obj: dict[str, object]) -> None:
    try:
        decode(json.dumps(obj).encode())
    except MessageDecodeError:
        pass


def _valid_wire() -> dict[str, object]:
    sender = SenderAddress(
        service_name="a", service_version="1", service_target="t", instance_id="i"
    )
    command = Command(
        sender=sender,
        receiver=Address(service_name="b", service_version="1", service_target="c"),
        payload=CommandPayload(payload={"x": 1}),
    )
    return to_wire(command)


@pytest.mark.parametrize(
    ("mutate", "field", "problem"),
    [
        (lambda d: d.pop("messageType"), "messageType", "missing"),
        (lambda d: d.update(messageType="bogus"), "messageType", "unknown value 'bogus'"),
        (lambda d: d.update(timestamp="soon"), "timestamp", "valid integer"),
        (lambda d: d.pop("correlationId"), "correlationId", "missing"),
        (lambda d: d["sender"].pop("instanceId"), "sender.instanceId", "missing"),
        (lambda d: d["receiver"].update(serviceName=5), "receiver.serviceName", "valid string"),
    ],
)
def test_decode_error_names_the_field(mutate: object, field: str, problem: str) -> None:
    data = _valid_wire()
    mutate(data)  # type: ignore[operator]
    with pytest.raises(MessageDecodeError) as info:
        decode(json.dumps(data).encode())
    assert info.value.field == field
    assert problem in info.value.problem


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1,2]", "expected a JSON object"),
        (b'{"messageType": NaN}', "not JSON"),
    ],
)
def test_decode_rejects_non_messages(raw: bytes, problem: str) -> None:
    with pytest.raises(MessageDecodeError) as info:
        decode(raw)
    assert problem in str(info.value)


def test_oversize_payload_is_rejected_with_the_limit() -> None:
    raw = json.dumps(_valid_wire()).encode()
    with pytest.raises(MessageDecodeError) as info:
        decode(raw, max_bytes=len(raw) - 1)
    assert f"over the limit of {len(raw) - 1}" in info.value.problem


def test_response_swaps_sender_and_receiver_and_keeps_ids() -> None:
    sender = SenderAddress(
        service_name="a", service_version="1", service_target="t", instance_id="i1"
    )
    command = Command(
        sender=sender,
        receiver=Address(
            service_name="b", service_version="2", service_target="c", instance_id="i2"
        ),
    )
    response = success_response(command, {"ok": True}, event_name="done")
    assert response.id == command.id
    assert response.correlation_id == command.correlation_id
    assert response.receiver == sender
    assert (response.sender.service_name, response.sender.instance_id) == ("b", "i2")
    assert response.event_name == "done"
    assert to_wire(response)["messageType"] == "commandSuccessResponse"


def test_decoding_keeps_nothing_of_the_messages() -> None:
    """Decoded and dropped, a message leaves no string behind: pydantic-core's parser would
    otherwise keep every short string it reads (each id and correlation id) in a
    process-wide cache of 16,384, about 1.5 MB after a burst of 10,000 commands."""
    import gc
    import sys

    sender = SenderAddress(
        service_name="caller", service_version="1", service_target="fn", instance_id="i-1"
    )
    receiver = Address(service_name="user", service_version="1", service_target="get")
    raws = [
        encode(Command(sender=sender, receiver=receiver, payload=CommandPayload(payload=i)))
        for i in range(2001)
    ]
    decode(raws.pop())  # the first decode's one-time allocations
    gc.collect()
    before = sys.getallocatedblocks()
    for raw in raws:
        decode(raw)
    gc.collect()
    kept = sys.getallocatedblocks() - before
    assert kept < 200, f"{kept} blocks kept after decoding {len(raws)} messages"


def _full_path(message: object) -> bytes:
    """The wire text by to_wire and the standard library (what encode gives when the payload
    holds other types than JSON's own)."""
    return json.dumps(
        to_wire(message), ensure_ascii=False, allow_nan=False, separators=(",", ":")  # type: ignore[arg-type]
    ).encode("utf-8")


def _no_exponent(value: object) -> bool:
    if isinstance(value, float):
        return "e" not in repr(value)
    if isinstance(value, dict):
        return all(_no_exponent(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_no_exponent(v) for v in value)
    return True


@settings(max_examples=400)
@given(any_message)
def test_encode_writes_what_to_wire_and_json_write(message: object) -> None:
    """The one-pass encoder: the same keys, in the same order, with the same values; the
    same bytes unless a float has an exponent (``1e-7``, as JavaScript writes it)."""
    ours, full = encode(message), _full_path(message)  # type: ignore[arg-type]
    assert json.loads(ours) == json.loads(full)
    assert list(json.loads(ours)) == list(json.loads(full))
    if _no_exponent(json.loads(full)):
        assert ours == full


@pytest.mark.parametrize(
    "payload",
    [
        {"at": __import__("datetime").datetime(2020, 1, 1)},
        {1, 2},
        b"bytes",
        {"n": float("nan")},
        [float("inf")],
        {None: 1},
        {1: "int key"},
        "\ud800",
        [{"deep": [[{"x": __import__("decimal").Decimal("1.5")}]]}],
    ],
)
def test_payloads_outside_json_encode_as_the_standard_library_says(payload: object) -> None:
    """What JSON cannot say exactly is the standard library's to decide, as before the
    one-pass encoder: refused, or (int or None keys) written as it writes them."""
    sender = SenderAddress(service_name="a", service_version="1", service_target="t",
                           instance_id="i")
    message = CustomMessage(sender=sender, event_name="e", payload=payload)
    try:
        full = _full_path(message)
    except (TypeError, ValueError, UnicodeEncodeError):
        with pytest.raises(MessageEncodeError):
            encode(message)
        return
    assert encode(message) == full


def test_a_cyclic_payload_is_refused() -> None:
    cyclic: list[object] = []
    cyclic.append(cyclic)
    sender = SenderAddress(service_name="a", service_version="1", service_target="t",
                           instance_id="i")
    with pytest.raises(MessageEncodeError):
        encode(CustomMessage(sender=sender, event_name="e", payload=cyclic))


@given(any_message)
def test_routing_headers_are_worked_out_afresh_or_remembered_alike(message: object) -> None:
    """The routing headers (NATS headers, MQTT user properties) of a message whose addresses
    were seen before come from a memo: the same as worked out afresh, and a new dict each
    call (what one caller changes, the next does not see)."""
    fresh = purista_names._routing_headers(message)
    first = purista_names.routing_headers(message)
    assert first == fresh
    first["messageType"] = "changed by a caller"
    assert purista_names.routing_headers(message) == fresh


def test_decoded_messages_share_equal_addresses_and_stay_independent() -> None:
    """Held decoded messages from one sender to one receiver share one (frozen) instance of
    each address; every message still equals what was sent, a copy with another sender
    changes no other message, and an address that left a field to its default is not
    merged with one that set it (their ``exclude_unset`` dumps differ)."""
    sender = SenderAddress(
        service_name="caller", service_version="1", service_target="fn", instance_id="i-1"
    )
    receiver = Address(service_name="user", service_version="1", service_target="get",
                       instance_id=None)
    sent = [Command(sender=sender, receiver=receiver, payload=CommandPayload(payload=i))
            for i in range(3)]
    held = [decode(encode(m)) for m in sent]
    assert held == sent
    assert len({id(m.sender) for m in held}) == 1
    assert len({id(m.receiver) for m in held}) == 1  # type: ignore[attr-defined]
    moved = held[0].model_copy(update={"sender": sender.model_copy(update={"instance_id": "i-2"})})
    assert moved.sender.instance_id == "i-2"
    assert [m.sender.instance_id for m in held] == ["i-1"] * 3
    assert decode(encode(held[1])) == sent[1]
    # a custom message without a receiver, and a sender of another type, are not confused
    custom = decode(encode(CustomMessage(sender=sender, event_name="e")))
    assert custom.receiver is None  # type: ignore[attr-defined]
    assert type(custom.sender) is SenderAddress
    # the wire leaves a null instanceId out; one that writes it is another fields-set
    wire = json.loads(encode(sent[0]))
    wire["receiver"]["instanceId"] = None
    written = decode(json.dumps(wire).encode())
    assert written == sent[0]
    assert "instance_id" in written.receiver.model_fields_set  # type: ignore[attr-defined]
    assert "instance_id" not in held[0].receiver.model_fields_set  # type: ignore[attr-defined]


def test_the_shared_address_table_is_bounded() -> None:
    """Made-up senders cannot grow the table of shared addresses without end."""
    from reference_services.runtime import codec

    receiver = Address(service_name="user", service_version="1", service_target="get")
    for i in range(3000):
        sender = SenderAddress(
            service_name="caller", service_version="1", service_target="fn", instance_id=f"i{i}"
        )
        decoded = decode(encode(Command(sender=sender, receiver=receiver,
                                        payload=CommandPayload(payload=i))))
        assert decoded.sender.instance_id == f"i{i}"
    assert len(codec._SHARED_ADDRESSES) <= codec._SHARED_ADDRESSES_MAX


def test_decoded_messages_share_equal_field_sets_and_never_mix_them() -> None:
    """The sets naming the fields a decoded message set are shared between equal ones
    (frozen models: nobody changes them); two shapes of one size keep their own, and a
    copy with changes changes only the copy's."""
    sender = SenderAddress(
        service_name="caller", service_version="1", service_target="fn", instance_id="i-1"
    )
    receiver = Address(service_name="user", service_version="1", service_target="get")
    with_receiver = CustomMessage(sender=sender, event_name="e", receiver=receiver)
    with_correlation = CustomMessage(sender=sender, event_name="e", correlation_id="c-1")
    first, second, third = (
        decode(encode(m)) for m in (with_receiver, with_correlation, with_receiver)
    )
    assert len(first.model_fields_set) == len(second.model_fields_set)
    assert "receiver" in first.model_fields_set and "receiver" not in second.model_fields_set
    assert "correlation_id" in second.model_fields_set
    assert "correlation_id" not in first.model_fields_set
    assert third.model_fields_set == first.model_fields_set
    assert (first, second, third) == (with_receiver, with_correlation, with_receiver)
    commands = [decode(encode(Command(sender=sender, receiver=receiver,
                                      payload=CommandPayload(payload=i)))) for i in range(3)]
    assert len({id(c.model_fields_set) for c in commands}) == 1
    assert len({id(c.payload.model_fields_set) for c in commands}) == 1  # type: ignore[attr-defined]
    before = set(commands[1].model_fields_set)
    changed = commands[0].model_copy(update={"event_name": "renamed", "nonsense": 1})
    assert "nonsense" in changed.model_fields_set
    assert changed.model_fields_set is not commands[1].model_fields_set
    assert commands[1].model_fields_set == before
    assert commands[1].model_dump(exclude_unset=True) == decode(
        encode(commands[1])
    ).model_dump(exclude_unset=True)
    with pytest.raises(ValidationError):
        commands[1].event_name = "x"  # type: ignore[misc]
    assert commands[2].model_fields_set == before
