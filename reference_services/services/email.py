"""``email`` v1: one welcome e-mail per user, even when ``userSignedUp`` arrives twice."""

from __future__ import annotations

from typing import Any

from reference_services.runtime.context import Context
from reference_services.runtime.definitions import FailureHandling
from reference_services.runtime.errors import HandledError, StatusCode
from reference_services.runtime.messages import AnyMessage
from reference_services.runtime.service import ServiceBuilder

email_v1 = ServiceBuilder("email", "1", "Sends e-mail in reaction to events")

OUTBOX_KEY = "email:outbox"


@email_v1.subscription(
    "sendWelcomeEmail",
    event_name="userSignedUp",
    shared=True,
    durable=True,
    failure=FailureHandling(
        max_attempts=5, retry_delay_ms=50, dead_letter_target="emailDeadLetter"
    ),
    emit_event_name="welcomeEmailSent",
)
async def send_welcome_email(ctx: Context, message: AnyMessage) -> dict[str, Any]:
    """Record one welcome mail per user in the state store (the side effect), once."""
    user = message.payload
    if not isinstance(user, dict) or "user_id" not in user or "email" not in user:
        raise HandledError("userSignedUp payload lacks user_id/email", StatusCode.BAD_REQUEST)
    if ctx.idempotency is None or ctx.stores.state is None:
        raise HandledError("email service needs a state store", StatusCode.SERVICE_UNAVAILABLE)
    state = ctx.stores.state

    async def send() -> dict[str, Any]:
        mail = {
            "to": user["email"],
            "subject": f"Welcome, {user.get('name', '')}",
            "user_id": user["user_id"],
        }
        await state.set(f"email:sent:{user['user_id']}", mail)
        return mail

    mail = await ctx.idempotency.run_once(f"welcome:{user['user_id']}", send)
    return {"user_id": user["user_id"], "to": mail["to"]}
