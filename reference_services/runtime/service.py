"""Defining services the Pythonic way, and running instances of them.

user = ServiceBuilder("user", "1")

@user.command("signUp", payload=SignUp, output=User, success_event="userSignedUp")
async def sign_up(ctx: Context, payload: SignUp, parameter: None) -> User: ...

instance = user.get_instance(bridge, state_store=store)
await instance.start()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from reference_services.runtime.context import Context, Stores
from reference_services.runtime.definitions import (
    AddressFilter,
    CommandConfig,
    FailureHandling,
    Subscription,
)
from reference_services.runtime.errors import HandledError, PuristaError, StatusCode, UnhandledError
from reference_services.runtime.idempotency import Idempotency
from reference_services.runtime.ids import now_ms
from reference_services.runtime.messages import (
    Address,
    AnyMessage,
    Command,
    CommandResponse,
    InfoMessage,
    MessageType,
    SenderAddress,
    success_response,
)
from reference_services.runtime.queue import Job
from reference_services.runtime.retry import RetryPolicy
from reference_services.runtime.spi.inflight import InflightTracker
from reference_services.runtime.spi.protocols import EventBridge, QueueBridge, StateStore, Store

Guard = Callable[..., Awaitable[None]]
Transform = Callable[..., Awaitable[Any]]
Handler = Callable[..., Awaitable[Any]]


class DefinitionError(ValueError):
    """A service definition that its bridge cannot honour (strict mode)."""


def _validator(schema: Any) -> TypeAdapter[Any] | None:
    return None if schema is None else TypeAdapter(schema)


#: built once: a TypeAdapter costs ~20 µs to build, far more than most dumps it does
_ANY: TypeAdapter[Any] = TypeAdapter(Any)


def _to_json(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    return _ANY.dump_python(value, mode="json")


@dataclass
class CommandDefinition:
    """A command: schemas, hooks in PURISTA's order, and delivery hints."""

    name: str
    handler: Callable[..., Awaitable[Any]]
    payload: Any = None
    parameter: Any = None
    output: Any = None
    success_event: str | None = None
    transform_input: Transform | None = None
    before_guards: Sequence[Guard] = ()
    after_guards: Sequence[Guard] = ()
    transform_output: Transform | None = None
    config: CommandConfig = field(default_factory=CommandConfig)
    description: str = ""


@dataclass
class SubscriptionDefinition:
    """A subscription: filters, delivery hints, failure handling."""

    name: str
    handler: Callable[..., Awaitable[Any]]
    event_name: str | None = None
    message_type: MessageType | None = None
    sender: AddressFilter | None = None
    receiver: AddressFilter | None = None
    principal_id: str | None = None
    tenant_id: str | None = None
    shared: bool = True
    durable: bool = True
    autoacknowledge: bool = False
    emit_event_name: str | None = None
    failure: FailureHandling = field(default_factory=FailureHandling)
    payload: Any = None
    description: str = ""
    # whether the service gave ``failure`` (a retry policy of its own) or took the default
    failure_declared: bool = False


@dataclass
class QueueWorkerDefinition:
    """A worker pulling jobs from a queue bridge queue."""

    queue: str
    handler: Callable[..., Awaitable[Any]]
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    concurrency: int = 1
    wait_ms: int = 1000
    # how often a running job's lease is extended; None: a third of the lease's ttl
    lease_renew_every_ms: int | None = None
    retry_declared: bool = False  # the service gave ``retry`` or took the default


class ServiceBuilder:
    """Collects a service's commands, subscriptions and queue workers."""

    def __init__(self, name: str, version: str = "1", description: str = "") -> None:
        self.name = name
        self.version = version
        self.description = description
        self.commands: dict[str, CommandDefinition] = {}
        self.subscriptions: dict[str, SubscriptionDefinition] = {}
        self.queue_workers: dict[str, QueueWorkerDefinition] = {}

    def address(self, target: str = "") -> Address:
        """The address of one of this service's functions."""
        return Address(service_name=self.name, service_version=self.version, service_target=target)

    def command(
        self,
        name: str,
        *,
        payload: Any = None,
        parameter: Any = None,
        output: Any = None,
        success_event: str | None = None,
        transform_input: Transform | None = None,
        before_guards: Sequence[Guard] = (),
        after_guards: Sequence[Guard] = (),
        transform_output: Transform | None = None,
        durable: bool = False,
        shared: bool = True,
        autoacknowledge: bool = True,
        description: str = "",
    ) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
        """Decorate ``async def handler(ctx, payload, parameter)`` as a command."""
        return self._define(
            self.commands,
            "command",
            name,
            lambda fn: CommandDefinition(
                name=name,
                handler=fn,
                payload=payload,
                parameter=parameter,
                output=output,
                success_event=success_event,
                transform_input=transform_input,
                before_guards=tuple(before_guards),
                after_guards=tuple(after_guards),
                transform_output=transform_output,
                config=CommandConfig(
                    durable=durable,
                    shared=shared,
                    autoacknowledge=autoacknowledge,
                    success_event_name=success_event,
                ),
                description=description or (fn.__doc__ or "").strip(),
            ),
        )

    def subscription(
        self,
        name: str,
        *,
        event_name: str | None = None,
        message_type: MessageType | None = None,
        sender: AddressFilter | None = None,
        receiver: AddressFilter | None = None,
        principal_id: str | None = None,
        tenant_id: str | None = None,
        shared: bool = True,
        durable: bool = True,
        autoacknowledge: bool = False,
        emit_event_name: str | None = None,
        failure: FailureHandling | None = None,
        payload: Any = None,
        description: str = "",
    ) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
        """Decorate ``async def handler(ctx, message)`` as a subscription."""
        return self._define(
            self.subscriptions,
            "subscription",
            name,
            lambda fn: SubscriptionDefinition(
                name=name,
                handler=fn,
                event_name=event_name,
                message_type=message_type,
                sender=sender,
                receiver=receiver,
                principal_id=principal_id,
                tenant_id=tenant_id,
                shared=shared,
                durable=durable,
                autoacknowledge=autoacknowledge,
                emit_event_name=emit_event_name,
                failure=failure or FailureHandling(),
                payload=payload,
                description=description or (fn.__doc__ or "").strip(),
                failure_declared=failure is not None,
            ),
        )

    def _define(
        self, table: dict[str, Any], what: str, name: str, build: Callable[[Handler], Any]
    ) -> Callable[[Handler], Handler]:
        """A decorator storing ``build(fn)`` as ``table[name]``; a second ``what`` of the same
        name on this service is a DefinitionError."""

        def register(fn: Handler) -> Handler:
            if name in table:
                raise DefinitionError(f"{what} {name!r} is defined twice on {self.name}")
            table[name] = build(fn)
            return fn

        return register

    def queue_worker(
        self,
        queue: str,
        *,
        retry: RetryPolicy | None = None,
        concurrency: int = 1,
        wait_ms: int = 1000,
        lease_renew_every_ms: int | None = None,
    ) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
        """Decorate ``async def handler(ctx, job)`` as a worker for ``queue``.

        While a job runs its lease is extended every ``lease_renew_every_ms``
        (default: a third of the lease's ttl), so a job longer than the lease is
        not handed to a second worker.
        """
        if lease_renew_every_ms is not None and lease_renew_every_ms <= 0:
            raise DefinitionError(f"lease_renew_every_ms must be > 0, got {lease_renew_every_ms}")

        def register(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            if queue in self.queue_workers:
                raise DefinitionError(
                    f"queue worker for {queue!r} is defined twice on {self.name} (one worker "
                    "per queue and service: raise its concurrency instead)"
                )
            self.queue_workers[queue] = QueueWorkerDefinition(
                queue,
                fn,
                retry or RetryPolicy(),
                concurrency,
                wait_ms,
                lease_renew_every_ms,
                retry_declared=retry is not None,
            )
            return fn

        return register

    def get_instance(
        self,
        event_bridge: EventBridge,
        *,
        state_store: Store | None = None,
        config_store: Store | None = None,
        secret_store: Store | None = None,
        queue_bridge: QueueBridge | None = None,
        config: dict[str, Any] | None = None,
        logger: logging.Logger | None = None,
        strict: bool = False,
    ) -> ServiceInstance:
        """An instance of this service bound to a bridge and stores (not started)."""
        return ServiceInstance(
            self,
            event_bridge,
            Stores(state_store, config_store, secret_store),
            queue_bridge=queue_bridge,
            config=config or {},
            logger=logger or logging.getLogger(f"reference_services.service.{self.name}"),
            strict=strict,
        )


class ServiceInstance:
    """A running service: registers its functions on a bridge and runs its workers."""

    def __init__(
        self,
        builder: ServiceBuilder,
        bridge: EventBridge,
        stores: Stores,
        *,
        queue_bridge: QueueBridge | None,
        config: dict[str, Any],
        logger: logging.Logger,
        strict: bool,
    ) -> None:
        self.builder = builder
        self.bridge = bridge
        self.stores = stores
        self.queue_bridge = queue_bridge
        self.config = config
        self.log = logger
        self.strict = strict
        self.idempotency = (
            Idempotency(stores.state, prefix=f"{builder.name}.{builder.version}.idempotency")  # type: ignore[arg-type]
            if isinstance(stores.state, StateStore)
            else None
        )
        self._inflight = InflightTracker()
        self._workers: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._started = False
        self._life = asyncio.Lock()  # start and destroy never interleave
        self.warnings: list[str] = []

    # ------------------------------------------------------------- life cycle
    @property
    def address(self) -> Address:
        """This service's own address (empty target)."""
        return self.builder.address()

    async def start(self) -> None:
        """Check the bridge, announce, register commands then subscriptions, start workers.

        Starting a started instance does nothing; a start that fails part-way
        unregisters what it registered. ``start`` and ``destroy`` are serialised.
        """
        async with self._life:
            if self._started:
                return
            await self._start()

    async def _start(self) -> None:
        if not await self.bridge.is_healthy():
            raise UnhandledError(
                f"event bridge {self.bridge.name} is not healthy; cannot start {self.builder.name}",
                StatusCode.SERVICE_UNAVAILABLE,
            )
        self._check_capabilities()
        if self.builder.queue_workers and self.queue_bridge is None:
            raise DefinitionError(f"{self.builder.name} has queue workers but no queue bridge")
        await self._info(MessageType.INFO_SERVICE_INIT)
        try:
            for defn in self.builder.commands.values():
                address = self.builder.address(defn.name)
                await self.bridge.register_command(
                    address, self._command_handler(defn), defn.config
                )
                await self._info(MessageType.INFO_SERVICE_FUNCTION_ADDED, {"command": defn.name})
            for sdefn in self.builder.subscriptions.values():
                await self.bridge.register_subscription(
                    self._subscription(sdefn), self._subscription_handler(sdefn)
                )
                await self._info(
                    MessageType.INFO_SERVICE_FUNCTION_ADDED, {"subscription": sdefn.name}
                )
        except BaseException:
            await self._unregister_all()
            raise
        self._stopping.clear()
        for qdefn in self.builder.queue_workers.values():
            for n in range(qdefn.concurrency):
                self._workers.append(
                    asyncio.get_running_loop().create_task(
                        self._work(qdefn), name=f"{self.builder.name}-{qdefn.queue}-{n}"
                    )
                )
        self._started = True
        await self._info(MessageType.INFO_SERVICE_READY)

    async def _unregister_all(self) -> None:
        for sdefn in self.builder.subscriptions.values():
            with contextlib.suppress(Exception):
                await self.bridge.unregister_subscription(self.builder.address(sdefn.name))
        for defn in self.builder.commands.values():
            with contextlib.suppress(Exception):
                await self.bridge.unregister_command(self.builder.address(defn.name))

    async def destroy(self, drain_timeout_s: float = 10.0) -> None:
        """Announce the drain, stop intake, let running handlers finish, announce shutdown.

        One deadline (``drain_timeout_s``) covers the workers and the handlers;
        workers still running then are cancelled and awaited.
        """
        async with self._life:
            if not self._started:
                return
            self._started = False
            await self._destroy(drain_timeout_s)

    async def _destroy(self, drain_timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout_s
        await self._info(MessageType.INFO_SERVICE_DRAIN)
        self._stopping.set()
        await self._unregister_all()
        if self._workers:
            _done, pending = await asyncio.wait(
                self._workers, timeout=max(deadline - loop.time(), 0.001)
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self._workers.clear()
        if not await self._inflight.wait_idle(max(deadline - loop.time(), 0.001)):
            self.log.warning("%s: handlers still running after drain timeout", self.builder.name)
        await self._info(MessageType.INFO_SERVICE_SHUTDOWN)

    async def is_ready(self) -> bool:
        """Started and the bridge is ready."""
        return self._started and await self.bridge.is_ready()

    async def is_healthy(self) -> bool:
        """The bridge is healthy."""
        return await self.bridge.is_healthy()

    # ---------------------------------------------------------------- helpers
    def _check_capabilities(self) -> None:
        caps = self.bridge.capabilities
        problems = []
        for defn in self.builder.subscriptions.values():
            if defn.durable and not caps.durable_subscriptions:
                problems.append(
                    f"subscription {defn.name} is durable but {self.bridge.name} says: "
                    f"{caps.durable_subscriptions.reason}"
                )
            if not defn.autoacknowledge and not caps.manual_ack:
                problems.append(
                    f"subscription {defn.name} wants manual ack but {self.bridge.name} says: "
                    f"{caps.manual_ack.reason}"
                )
            if defn.failure.max_attempts > 1 and not caps.bounded_retry:
                problems.append(
                    f"subscription {defn.name} retries but {self.bridge.name} says: "
                    f"{caps.bounded_retry.reason}"
                )
        for defn in self.builder.commands.values():
            if defn.config.durable and not caps.durable_commands:
                problems.append(
                    f"command {defn.name} is durable but {self.bridge.name} says: "
                    f"{caps.durable_commands.reason}"
                )
        self.warnings = problems
        if problems and self.strict:
            raise DefinitionError("; ".join(problems))
        for problem in problems:
            self.log.warning("%s: %s", self.builder.name, problem)

    def _subscription(self, defn: SubscriptionDefinition) -> Subscription:
        return Subscription(
            subscriber=self.builder.address(defn.name),
            message_type=defn.message_type,
            event_name=defn.event_name,
            sender=defn.sender,
            receiver=defn.receiver,
            principal_id=defn.principal_id,
            tenant_id=defn.tenant_id,
            durable=defn.durable,
            shared=defn.shared,
            autoacknowledge=defn.autoacknowledge,
            emit_event_name=defn.emit_event_name,
            failure=defn.failure,
        )

    def _context(self, message: AnyMessage | None, target: str, job: Job | None = None) -> Context:
        return Context(
            message=message,
            service=self.builder.address(target),
            bridge=self.bridge,
            stores=self.stores,
            logger=self.log,
            config=self.config,
            queue=self.queue_bridge,
            idempotency=self.idempotency,
            job=job,
        )

    async def _info(self, message_type: MessageType, payload: Any = None) -> None:
        info = InfoMessage(
            message_type=message_type,
            sender=SenderAddress(
                service_name=self.builder.name,
                service_version=self.builder.version,
                service_target="",
                instance_id=self.bridge.instance_id,
            ),
            payload=payload,
        )
        try:
            await self.bridge.emit_message(info)
        except PuristaError as exc:
            self.log.debug("could not emit %s: %s", message_type, exc)

    def _command_handler(
        self, defn: CommandDefinition
    ) -> Callable[[Command], Awaitable[CommandResponse]]:
        payload_schema = _validator(defn.payload)
        parameter_schema = _validator(defn.parameter)
        output_schema = _validator(defn.output)

        async def handle(command: Command) -> CommandResponse:
            with self._inflight.track():
                ctx = self._context(command, defn.name)
                payload, parameter = command.payload.payload, command.payload.parameter
                if defn.transform_input is not None:
                    payload, parameter = await defn.transform_input(ctx, payload, parameter)
                try:
                    if payload_schema is not None:
                        payload = payload_schema.validate_python(payload)
                    if parameter_schema is not None:
                        parameter = parameter_schema.validate_python(parameter)
                except ValidationError as exc:
                    raise HandledError(
                        f"invalid input for {defn.name}",
                        StatusCode.BAD_REQUEST,
                        data=exc.errors(
                            include_url=False, include_context=False, include_input=False
                        ),
                    ) from None
                for guard in defn.before_guards:
                    await guard(ctx, payload, parameter)
                result = await defn.handler(ctx, payload, parameter)
                if output_schema is not None:
                    try:
                        result = output_schema.validate_python(
                            result.model_dump() if isinstance(result, BaseModel) else result
                        )
                    except ValidationError as exc:
                        raise UnhandledError(
                            f"invalid output from {defn.name}: {exc.error_count()} error(s)",
                            StatusCode.INTERNAL_SERVER_ERROR,
                        ) from None
                for guard in defn.after_guards:
                    await guard(ctx, result, payload, parameter)
                if defn.transform_output is not None:
                    result = await defn.transform_output(ctx, result, payload, parameter)
                return success_response(
                    command,
                    _to_json(result),
                    event_name=defn.success_event,
                    responder_instance_id=self.bridge.instance_id,
                )

        return handle

    def _subscription_handler(
        self, defn: SubscriptionDefinition
    ) -> Callable[[AnyMessage], Awaitable[Any]]:
        payload_schema = _validator(defn.payload)

        async def handle(message: AnyMessage) -> Any:
            with self._inflight.track():
                if payload_schema is not None:
                    try:
                        validated = payload_schema.validate_python(message.payload)  # type: ignore[union-attr]
                    except ValidationError as exc:
                        raise HandledError(
                            f"invalid payload for {defn.name}: {exc.error_count()} error(s)",
                            StatusCode.BAD_REQUEST,
                        ) from None
                    if validated is not message.payload:
                        message = message.model_copy(update={"payload": validated})
                result = await defn.handler(self._context(message, defn.name), message)
                return None if result is None else _to_json(result)

        return handle

    async def _work(self, defn: QueueWorkerDefinition) -> None:
        assert self.queue_bridge is not None
        queue = self.queue_bridge
        while not self._stopping.is_set():
            try:
                jobs = await queue.lease_next(
                    defn.queue, 1, defn.wait_ms, worker_id=self.bridge.instance_id
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning(
                    "%s: leasing from %s failed: %s", self.builder.name, defn.queue, exc
                )
                try:
                    await asyncio.wait_for(self._stopping.wait(), defn.retry.retry_delay_ms / 1000)
                except TimeoutError:
                    pass
                continue
            for job in jobs:
                await self._run_job(defn, job)

    async def _keep_leased(
        self, defn: QueueWorkerDefinition, holder: list[Job], stop: asyncio.Event
    ) -> None:
        """Extend the running job's lease until ``stop``; ``holder[0]`` is the latest lease."""
        assert self.queue_bridge is not None
        first = holder[0]
        ttl_ms = max(first.lease_expires_at_ms - now_ms(), 1)
        every_s = (defn.lease_renew_every_ms or ttl_ms / 3) / 1000
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
            if stop.is_set():
                return
            try:
                holder[0] = await self.queue_bridge.extend_lease(holder[0])
            except Exception as exc:  # the next tick tries again; an expired lease stays lost
                self.log.warning(
                    "%s: extending the lease of job %s failed: %s", self.builder.name, first.id, exc
                )

    async def _run_job(self, defn: QueueWorkerDefinition, job: Job) -> None:
        assert self.queue_bridge is not None
        queue = self.queue_bridge
        with self._inflight.track():
            ctx = self._context(None, defn.queue, job)
            holder = [job]
            stop = asyncio.Event()
            renewal = asyncio.create_task(self._keep_leased(defn, holder, stop))
            try:
                try:
                    try:
                        await defn.handler(ctx, job)
                    finally:
                        stop.set()
                        await asyncio.shield(renewal)
                        job = holder[0]  # ack/nack with the latest lease
                except HandledError as exc:
                    reason = f"handled error {exc.status}: {exc.message}"
                    await queue.move_to_dead_letter(job, reason)
                except Exception as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                    delay = int(defn.retry.delay_ms(job.attempt))
                    outcome = await queue.nack(job, reason, delay)
                    self.log.info(
                        "%s: job %s attempt %d failed (%s): %s",
                        self.builder.name,
                        job.id,
                        job.attempt,
                        reason,
                        outcome,
                    )
                else:
                    await queue.ack(job)
            except Exception as exc:  # settling failed: the lease expires and the job returns
                self.log.warning("%s: could not settle job %s: %s", self.builder.name, job.id, exc)
