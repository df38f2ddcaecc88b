"""reference_services.testing.TestClient: invoke, emit and record over a real bridge."""

from __future__ import annotations

import pytest

from reference_services.runtime.errors import PuristaError
from reference_services.services import email_v1, user_v1
from reference_services.testing import TestClient, wait_until


async def test_invoke_returns_the_result_and_records_the_success_event() -> None:
    async with TestClient(user_v1) as client:
        user = await client.invoke("signUp", {"email": "ada@example.org", "name": "Ada"})
        event = await client.wait_for_event("userSignedUp")
        assert event.payload == user
        found = await client.invoke("getUser", parameter={"user_id": user["user_id"]})
        assert found == user
        assert [m.event_name for m in client.emitted] == ["userSignedUp"]


async def test_a_handled_error_is_raised_with_its_status() -> None:
    async with TestClient(user_v1) as client:
        with pytest.raises(PuristaError) as err:
            await client.invoke("getUser", parameter={"user_id": "nobody"})
        assert int(err.value.status) == 404
        with pytest.raises(PuristaError) as err:
            await client.invoke("signUp", {"email": "not an address", "name": "Ada"})
        assert int(err.value.status) == 400


async def test_emit_reaches_the_service_subscriptions() -> None:
    user = {"user_id": "u1", "email": "ada@example.org", "name": "Ada"}
    async with TestClient(email_v1) as client:
        await client.emit("userSignedUp", user)
        sent = await client.wait_for_event("welcomeEmailSent")
        assert sent.sender.service_name == "email"
        key = "email:sent:u1"
        assert (await client.state_store.get(key))[key]["to"] == "ada@example.org"


async def test_waiting_for_an_event_that_never_comes_names_what_was_emitted() -> None:
    async with TestClient(user_v1) as client:
        await client.invoke("signUp", {"email": "bo@example.org", "name": "Bo"})
        with pytest.raises(AssertionError, match="emitted: userSignedUp"):
            await client.wait_for_event("userDeleted", within_s=0.3)


async def test_invoking_before_start_says_so() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        await TestClient(user_v1).invoke("signUp", {})


async def test_wait_until_polls_plain_and_async_conditions_and_names_what_timed_out() -> None:
    calls: list[int] = []

    def third_call() -> bool:
        calls.append(1)
        return len(calls) >= 3

    async def already() -> bool:
        return True

    await wait_until(third_call, 2.0)
    assert len(calls) == 3
    await wait_until(already, 2.0)
    with pytest.raises(AssertionError, match=r"timed out after 0.05s waiting for the moon"):
        await wait_until(lambda: False, 0.05, "the moon")

    async def never() -> bool:
        return False

    with pytest.raises(AssertionError, match="waiting for an async never"):
        await wait_until(never, 0.05, "an async never")
