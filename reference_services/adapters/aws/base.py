"""What the AWS stores share: settings, clients, the worker pool, names, health."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, ClassVar

from reference_services.adapters.aws.client import (
    AwsRequestError,
    AwsSettings,
    AwsUnavailableError,
    AwsWorker,
    encode_name,
    error_code,
    install_redaction,
)
from reference_services.runtime.errors import UnhandledError
from reference_services.runtime.spi.capabilities import YES, Support, unsupported
from reference_services.runtime.spi.store_base import StoreBase, StoreCapabilityMissing, dump_value


class AwsStoreBase(StoreBase):
    """Shared life cycle of the Secrets Manager and Parameter Store stores."""

    service: ClassVar[str]
    #: error codes that are the caller's fault (a HandledError); any other is a runtime error
    client_faults: ClassVar[tuple[str, ...]]
    #: the error code of a create whose name is taken
    exists_code: ClassVar[str]

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "purista",
        initial: dict[str, Any] | None = None,
        durable: bool | None = None,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 5.0,
        retry_attempts: int = 3,
        health_timeout_s: float = 1.0,
        threads: int = 8,
        **switches: Any,
    ) -> None:
        """``url``: see :mod:`reference_services.adapters.aws.client`; ``initial`` values are
        created at ``start()`` unless present; ``durable`` overrides the declaration (by
        default AWS's own endpoints are durable, an explicit endpoint is not assumed so);
        ``switches`` are StoreBase's ``enable_get/set/remove`` and ``cache_ttl_s``."""
        super().__init__(**switches)
        self.settings = AwsSettings.resolve(
            url,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            max_attempts=retry_attempts,
        )
        self.prefix = prefix
        self.health_timeout_s = health_timeout_s
        self._initial = {k: dump_value(k, v) for k, v in (initial or {}).items()}
        self._worker = AwsWorker(f"{self.kind}-{self.name}", threads)
        self._client: Any = None
        self._once: Any = None  # no retries: a create whose reply was lost is not retried
        self._health: Any = None
        self._closed = False
        self.capabilities = replace(type(self).capabilities, durable=self._durability(durable))
        install_redaction()

    def _durability(self, durable: bool | None) -> Support:
        if durable is True or (durable is None and self.settings.endpoint_url is None):
            return YES
        if durable is False:
            return unsupported("declared not durable (durable=False)")
        return unsupported(
            f"an explicit endpoint ({self.settings.endpoint_url}) is not assumed durable: an "
            "emulator such as moto keeps values in memory (pass durable=True if it persists)"
        )

    def __repr__(self) -> str:
        where = self.settings.endpoint_url or f"aws:{self.settings.region}"
        return f"<{type(self).__name__} {where} prefix={self.prefix!r}>"

    def qualified(self, name: str) -> str:
        """The backend's name of ``name`` (prefix segments and name escaped)."""
        segments = [encode_name(s) for s in self.prefix.split("/") if s]
        return "/".join([*segments, encode_name(name)])

    def _fail(self, op: str, name: str, exc: BaseException) -> Exception:
        """A runtime error for a failed call: the AWS error code and the key, never the
        value nor AWS's message text."""
        code = error_code(exc) or type(exc).__name__
        text = f"{self.kind} {self.name!r}: {op} {name!r} failed: {code}"
        return AwsRequestError(text) if code in self.client_faults else UnhandledError(text)

    async def _create_new(self, name: str, raw_json: str) -> None:
        """Write ``name`` only if it does not exist (ClientError ``exists_code`` if it does)."""
        raise NotImplementedError

    async def _create(self, name: str, raw_json: str) -> bool:
        """Create ``name`` if absent; True if created."""
        from botocore.exceptions import ClientError

        try:
            await self._create_new(name, raw_json)
        except ClientError as exc:
            if error_code(exc) == self.exists_code:
                return False
            raise self._fail("create", name, exc) from None
        return True

    def _no_ttl(self, ttl_s: float | None) -> None:
        if ttl_s:
            raise StoreCapabilityMissing(
                f"{self.kind} {self.name!r} does not support ttl: {self.capabilities.ttl.reason}"
            )

    async def start(self) -> None:
        """Build the clients, check the endpoint answers, create the ``initial`` values."""
        self._closed = False
        self._worker.open()
        if self._client is None:
            self._client, self._once, self._health = await asyncio.gather(
                self._worker.call(self.settings.client, self.service),
                self._worker.call(self.settings.client, self.service, attempts=1),
                self._worker.call(
                    self.settings.client, self.service, attempts=1,
                    timeout_s=self.health_timeout_s,
                ),
            )
        try:
            await self._worker.call(self._probe, self._client)
        except AwsUnavailableError:
            raise
        except Exception as exc:  # botocore's ClientError: the code, not AWS's message
            raise AwsUnavailableError(
                f"{self.kind} {self.name!r}: start: {error_code(exc) or type(exc).__name__}"
            ) from None
        for name, raw in self._initial.items():
            await self._create(name, raw)
        await super().start()

    async def destroy(self) -> None:
        """Stop the worker pool (boto3 clients need no closing beyond their pools)."""
        self._closed = True
        await super().destroy()
        self._worker.close()

    async def is_ready(self) -> bool:
        return self.started and await self._answers()

    async def is_healthy(self) -> bool:
        return not self._closed and self._health is not None and await self._answers()

    async def _answers(self) -> bool:
        try:
            await asyncio.wait_for(
                self._worker.call(self._probe, self._health), self.health_timeout_s * 2
            )
        except Exception:
            return False
        return True

    def _probe(self, client: Any) -> None:
        """One cheap call that needs the endpoint to answer (raises otherwise)."""
        raise NotImplementedError
