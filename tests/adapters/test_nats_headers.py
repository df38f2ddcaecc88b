"""The NATS connections' header blocks: what nats-py itself writes and reads, for every input,
memoised or not."""

from __future__ import annotations

import asyncio
from typing import Any

import nats.errors
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client

from reference_services.adapters.nats import headers
from reference_services.adapters.nats.headers import header_block, parse_header_lines

_PIECES = st.sampled_from(
    [b"\r\n", b":", b": ", b" ", b"\t", b"\x1c", b"\x0b", b"\xc3\xa9", b"\xff", b"a", b"Key",
     b"messageType", b"command", b"-", b"\r", b"\n", b""]
)
_TEXT = st.text(st.sampled_from([" ", "\t", "\r", "\n", "é", "a", "Z", "-", ":", "_", "!", "1"]),
                max_size=8)


@given(st.lists(_PIECES, max_size=40).map(b"".join))
def test_same_result_as_nats_py(raw: bytes) -> None:
    assert parse_header_lines(raw) == Client._parse_header_lines(raw)
    again = parse_header_lines(raw)  # memoised now
    assert again == Client._parse_header_lines(raw)
    again["changed"] = "by a caller"
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


def _nats_py_publish(subject: str, reply: str, payload: bytes, hdrs: dict[str, str] | None,
                     memoised: bool) -> bytes | Exception:
    """What a real nats-py client hands its transport for one publish (its own code, or with
    this package's header blocks installed), or what it raised."""
    nc = Client()
    sent: list[bytes] = []

    async def capture(command: bytes, priority: bool = False) -> None:
        sent.append(command)

    nc._send_command = capture  # type: ignore[method-assign]
    if memoised:
        assert headers.install(nc)
    try:
        asyncio.run(nc._send_publish(subject, reply, payload, len(payload), hdrs))
    except Exception as exc:
        return exc
    return b"".join(sent)


@given(st.dictionaries(_TEXT, _TEXT, max_size=6), st.sampled_from(["", "_INBOX.x"]),
       st.binary(max_size=8))
def test_publish_sends_what_nats_py_sends(hdrs: dict[str, str], reply: str, payload: bytes) -> None:
    for _ in range(2):  # the second publish of the same headers is served from the memo
        ours = _nats_py_publish("a.b", reply, payload, hdrs, memoised=True)
        theirs = _nats_py_publish("a.b", reply, payload, hdrs, memoised=False)
        if isinstance(theirs, Exception):
            assert type(ours) is type(theirs) and str(ours) == str(theirs)
        else:
            assert ours == theirs


@pytest.mark.parametrize("hdrs", [None, {}, {"messageType": "command", "senderServiceName": "x"}])
def test_publish_without_or_with_empty_headers(hdrs: Any) -> None:
    assert _nats_py_publish("s", "", b"{}", hdrs, True) == _nats_py_publish("s", "", b"{}", hdrs,
                                                                           False)


def test_a_bad_header_name_is_refused_every_time() -> None:
    for _ in range(2):
        with pytest.raises(nats.errors.BadHeaderError):
            header_block({"bad name": "x"})


def test_the_memo_stays_bounded() -> None:
    for i in range(headers.MEMO_SIZE + 10):
        header_block({"traceparent": f"00-{i:032x}-01"})
        parse_header_lines(b"NATS/1.0\r\ntraceparent: %d\r\n\r\n" % i)
    assert len(headers._blocks) <= headers.MEMO_SIZE
    assert len(headers._parsed) <= headers.MEMO_SIZE
