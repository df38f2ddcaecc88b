"""The NATS connections' header parser gives what nats-py's own gives, for every input."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client

from reference_services.adapters.nats.connection import parse_header_lines

_PIECES = st.sampled_from(
    [b"\r\n", b":", b": ", b" ", b"\t", b"\x1c", b"\x0b", b"\xc3\xa9", b"\xff", b"a", b"Key",
     b"messageType", b"command", b"-", b"\r", b"\n", b""]
)


@given(st.lists(_PIECES, max_size=40).map(b"".join))
def test_same_result_as_nats_py(raw: bytes) -> None:
    assert parse_header_lines(raw) == Client._parse_header_lines(raw)


def test_a_purista_header_block() -> None:
    raw = (
        b"messageType: command\r\nsenderServiceName: bench\r\nsenderInstanceId: x1\r\n"
        b"bad name: dropped\r\n\x1cbad: dropped\r\nnoColon\r\nvalue:  spaced \r\n\r\n"
    )
    assert parse_header_lines(raw) == Client._parse_header_lines(raw)
    assert parse_header_lines(raw) == {
        "messageType": "command",
        "senderServiceName": "bench",
        "senderInstanceId": "x1",
        "value": "spaced",
    }
