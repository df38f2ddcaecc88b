"""URL passwords never reach reprs, errors or logs (real sockets where a client is involved)."""

from __future__ import annotations

import logging
import socket

import pytest

from harness.services.external import ExternalHandle
from harness.services.spec import get_spec
from reference_services.adapters.nats.connection import (
    NatsTimings,
    NatsUnavailableError,
    connect_nats,
)
from reference_services.adapters.nats.event_bridge import NatsBridge
from reference_services.runtime.redact import redact_text, redact_url

SECRET = "S3cr3t-pw-7f1c"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"amqp://user:{SECRET}@127.0.0.1:5672/vh", "amqp://user:***@127.0.0.1:5672/vh"),
        (f"redis://:{SECRET}@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        (f"nats://{SECRET}@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),  # a NATS token
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("amqp://guest@127.0.0.1/", "amqp://guest@127.0.0.1/"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_text_masks_every_url_in_free_text() -> None:
    text = f"a amqp://u:{SECRET}@h:1/ and 'mqtt://x:{SECRET}@h:2' end"
    assert SECRET not in redact_text(text)
    assert redact_text(text) == "a amqp://u:***@h:1/ and 'mqtt://x:***@h:2' end"


def test_handle_repr_hides_the_password() -> None:
    handle = ExternalHandle(get_spec("rabbitmq"), f"amqp://user:{SECRET}@127.0.0.1:5672/")
    assert SECRET not in repr(handle)
    assert "amqp://user:***@127.0.0.1:5672/" in repr(handle)


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_nats_connect_error_hides_the_password(caplog: pytest.LogCaptureFixture) -> None:
    url = f"nats://user:{SECRET}@127.0.0.1:{_refused_port()}"
    caplog.set_level(logging.DEBUG)
    timings = NatsTimings(connect_timeout_s=0.5, start_timeout_s=1.5, reconnect_wait_s=0.1)
    with pytest.raises(NatsUnavailableError) as info:
        await connect_nats(url, "redact-test", timings)
    assert SECRET not in str(info.value) and "nats://user:***@127.0.0.1" in str(info.value)
    assert SECRET not in caplog.text


async def test_nats_bridge_start_error_hides_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    bridge = NatsBridge(url=f"nats://user:{SECRET}@127.0.0.1:{_refused_port()}", prefix="t")
    with pytest.raises(Exception) as info:
        await bridge.start()
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    assert SECRET not in caplog.text
    await bridge.destroy()
