"""``billing`` v1: invoice jobs from a queue, with retries and a dead letter."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field

from reference_services.runtime.context import Context
from reference_services.runtime.errors import HandledError, StatusCode, UnhandledError
from reference_services.runtime.queue import Job
from reference_services.runtime.retry import RetryPolicy
from reference_services.runtime.service import ServiceBuilder

billing_v1 = ServiceBuilder("billing", "1", "Issues invoices from a job queue")

INVOICE_QUEUE = "invoices"
MAX_ATTEMPTS = 3


class InvoiceRequest(BaseModel):
    """Input of ``requestInvoice`` and the job payload."""

    invoice_id: str = Field(min_length=1)
    customer: str = Field(min_length=1)
    amount_cents: int


class PaymentGatewayDown(UnhandledError):
    """The payment gateway refused: transient, so retried."""

    default_status = StatusCode.BAD_GATEWAY


@billing_v1.command("requestInvoice", payload=InvoiceRequest)
async def request_invoice(
    ctx: Context, payload: InvoiceRequest, parameter: object
) -> dict[str, str]:
    """Enqueue an invoice job once per invoice id (idempotency key)."""
    if ctx.queue is None:
        raise HandledError("billing needs a queue bridge", StatusCode.SERVICE_UNAVAILABLE)
    job_id = await ctx.queue.enqueue(
        INVOICE_QUEUE,
        payload.model_dump(),
        idempotency_key=f"invoice:{payload.invoice_id}",
        max_attempts=MAX_ATTEMPTS,
    )
    return {"job_id": job_id}


@billing_v1.queue_worker(
    INVOICE_QUEUE, retry=RetryPolicy(max_attempts=MAX_ATTEMPTS, retry_delay_ms=20)
)
async def issue_invoice(ctx: Context, job: Job) -> None:
    """Issue the invoice into the state store; the gateway for blocked customers always fails."""
    request = InvoiceRequest.model_validate(job.payload)
    if request.amount_cents <= 0:
        raise HandledError(
            f"invoice {request.invoice_id}: amount must be positive", StatusCode.BAD_REQUEST
        )
    if request.customer in ctx.config.get("gateway_slow_customers", ()):
        await asyncio.sleep(ctx.config.get("gateway_latency_ms", 1000) / 1000)  # a slow gateway
    blocked = ctx.config.get("gateway_blocked_customers", ())
    if request.customer in blocked:
        raise PaymentGatewayDown(f"payment gateway refused customer {request.customer}")
    if ctx.stores.state is None:
        raise HandledError("billing needs a state store", StatusCode.SERVICE_UNAVAILABLE)
    await _gateway_token(ctx)
    await ctx.stores.state.set(
        f"invoice:{request.invoice_id}",
        {**request.model_dump(), "status": "issued", "attempt": job.attempt},
    )


GATEWAY_TOKEN_SECRET = "payment_gateway_token"


async def _gateway_token(ctx: Context) -> str:
    """The payment gateway's credential, from the secret store (never from config or env)."""
    secret = ctx.stores.secret
    if secret is None:
        raise HandledError("billing needs a secret store", StatusCode.SERVICE_UNAVAILABLE)
    token = (await secret.get(GATEWAY_TOKEN_SECRET)).get(GATEWAY_TOKEN_SECRET)
    if not isinstance(token, str) or not token:
        raise HandledError(
            f"secret {GATEWAY_TOKEN_SECRET!r} is missing from the secret store",
            StatusCode.SERVICE_UNAVAILABLE,
        )
    return token
