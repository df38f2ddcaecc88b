"""Secret store on AWS Secrets Manager.

A value is one secret named ``<prefix>/<name>`` (both escaped to Secrets Manager's
alphabet, see :func:`~reference_services.adapters.aws.client.encode_name`) whose
``SecretString`` is the value's JSON text. ``set`` puts a new secret version (creating
the secret the first time), ``remove`` deletes it without a recovery window,
``set_if_absent`` is ``CreateSecret`` (atomic: a second create fails with
``ResourceExistsException``; boto3's idempotency token makes its retries safe).
Secrets Manager has no expiry and no conditional write: ``ttl`` and ``compare_and_set``
are declared unsupported. Get-only by default, with the secret cache of
:class:`StoreBase` (``cache_ttl_s``). No secret value appears in an error, a repr or a
log record (botocore's debug records that carry one are redacted).
"""

from __future__ import annotations

import asyncio
from typing import Any

from reference_services.adapters.aws.base import AwsStoreBase
from reference_services.adapters.aws.client import error_code
from reference_services.runtime.errors import UnhandledError
from reference_services.runtime.spi.capabilities import YES, StoreCapabilities, unsupported
from reference_services.runtime.spi.store_base import load_value

__all__ = ["AwsSecretStore"]

_MISSING = ("ResourceNotFoundException",)
_CLIENT_FAULTS = ("InvalidParameterException", "ValidationException", "LimitExceededException")


class AwsSecretStore(AwsStoreBase):
    """Secret store on AWS Secrets Manager (get-only by default)."""

    kind = "secret_store"
    name = "aws"
    service = "secretsmanager"
    client_faults = _CLIENT_FAULTS
    exists_code = "ResourceExistsException"
    capabilities = StoreCapabilities(
        cache=YES,
        ttl=unsupported("Secrets Manager secrets do not expire"),
        compare_and_set=unsupported(
            "Secrets Manager has no conditional write: PutSecretValue cannot be fenced on a "
            "version"
        ),
        atomic_effects=unsupported("Secrets Manager has no multi-secret transaction"),
    )

    def _probe(self, client: Any) -> None:
        client.list_secrets(MaxResults=1)

    async def _read(self, name: str) -> Any:
        from botocore.exceptions import ClientError

        try:
            got = await self._worker.call(
                self._client.get_secret_value, SecretId=self.qualified(name)
            )
        except ClientError as exc:
            if error_code(exc) in _MISSING or _scheduled_for_deletion(exc):
                return None
            raise self._fail("get", name, exc) from None
        try:
            return load_value(got["SecretString"])
        except (KeyError, ValueError):
            raise UnhandledError(
                f"{self.kind} value {name!r} is not a JSON SecretString"
            ) from None

    async def _get(self, names: list[str]) -> dict[str, Any]:
        values = await asyncio.gather(*(self._read(n) for n in names))
        return dict(zip(names, values, strict=True))

    async def _create_new(self, name: str, raw_json: str) -> None:
        await self._worker.call(
            self._client.create_secret, Name=self.qualified(name), SecretString=raw_json
        )

    async def _set(self, name: str, raw_json: str) -> None:
        from botocore.exceptions import ClientError

        secret_id = self.qualified(name)
        for _ in range(3):  # put, or create when missing; a racing creator: put again
            try:
                await self._worker.call(
                    self._client.put_secret_value, SecretId=secret_id, SecretString=raw_json
                )
                return
            except ClientError as exc:
                if error_code(exc) not in _MISSING:
                    raise self._fail("set", name, exc) from None
            if await self._create(name, raw_json):
                return
        raise UnhandledError(f"{self.kind} {self.name!r}: set {name!r} kept racing a remove")

    async def _remove(self, name: str) -> None:
        from botocore.exceptions import ClientError

        try:
            await self._worker.call(
                self._client.delete_secret,
                SecretId=self.qualified(name),
                ForceDeleteWithoutRecovery=True,
            )
        except ClientError as exc:
            if error_code(exc) not in _MISSING:
                raise self._fail("remove", name, exc) from None

    async def _set_if_absent(self, name: str, raw_json: str, ttl_s: float | None) -> bool:
        self._no_ttl(ttl_s)
        return await self._create(name, raw_json)


def _scheduled_for_deletion(exc: BaseException) -> bool:
    """A secret deleted with a recovery window reads as missing."""
    if error_code(exc) != "InvalidRequestException":
        return False
    message = str(getattr(exc, "response", {}).get("Error", {}).get("Message", ""))
    return "deletion" in message.lower()
