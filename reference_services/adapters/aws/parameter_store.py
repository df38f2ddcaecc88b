"""Config store on AWS Systems Manager Parameter Store.

A value is one ``String`` parameter named ``/<prefix>/<name>`` (escaped to Parameter
Store's alphabet) holding the value's JSON text. Reads use ``GetParameters`` (ten names
a call), ``set`` is ``PutParameter`` with ``Overwrite``, ``set_if_absent`` is
``PutParameter`` without it (atomic: ``ParameterAlreadyExists``; sent once, never retried,
so a lost reply is an error rather than a wrong "exists"). Parameter Store refuses values
holding ``{{`` (parameter references): JSON keeps such a brace escaped (``\\u007b``),
which reads back as the same value. Get-only by default.
"""

from __future__ import annotations

import asyncio
from typing import Any

from reference_services.adapters.aws.base import AwsStoreBase
from reference_services.adapters.aws.client import error_code
from reference_services.runtime.errors import UnhandledError
from reference_services.runtime.spi.capabilities import StoreCapabilities, unsupported
from reference_services.runtime.spi.store_base import StoreValueError, load_value

__all__ = ["AwsConfigStore"]

BATCH = 10  # GetParameters takes at most ten names
STANDARD_LIMIT = 4096  # bytes of a Standard tier value
_CLIENT_FAULTS = ("ValidationException", "ParameterPatternMismatchException",
                  "ParameterMaxVersionLimitExceeded", "ParameterLimitExceeded")


def escape_references(raw_json: str) -> str:
    """``raw_json`` without ``{{``: compact JSON has ``{{`` only inside strings, where
    ``\\u007b`` means the same brace."""
    return raw_json.replace("{{", "{\\u007b")


class AwsConfigStore(AwsStoreBase):
    """Config store on AWS SSM Parameter Store (get-only by default)."""

    kind = "config_store"
    name = "aws"
    service = "ssm"
    client_faults = _CLIENT_FAULTS
    exists_code = "ParameterAlreadyExists"
    capabilities = StoreCapabilities(
        ttl=unsupported("Standard parameters do not expire (expiry policies need the "
                        "Advanced tier and act on the hour)"),
        compare_and_set=unsupported("PutParameter cannot be fenced on a parameter version"),
        atomic_effects=unsupported("Parameter Store has no multi-parameter transaction"),
    )

    def __init__(self, url: str | None = None, *, tier: str = "Standard", **kwargs: Any) -> None:
        """``tier``: ``Standard`` (values up to 4 KB), ``Advanced`` or
        ``Intelligent-Tiering``; other options as :class:`AwsStoreBase`."""
        super().__init__(url, **kwargs)
        if tier not in ("Standard", "Advanced", "Intelligent-Tiering"):
            raise ValueError(
                f"tier must be Standard, Advanced or Intelligent-Tiering, got {tier!r}"
            )
        self.tier = tier

    def qualified(self, name: str) -> str:
        return "/" + super().qualified(name)

    def _probe(self, client: Any) -> None:
        client.describe_parameters(MaxResults=1)

    def _checked(self, name: str, raw_json: str) -> str:
        raw = escape_references(raw_json)
        size = len(raw.encode())
        if self.tier == "Standard" and size > STANDARD_LIMIT:
            raise StoreValueError(
                f"value for {name!r} is {size} bytes; a Standard parameter holds at most "
                f"{STANDARD_LIMIT} (use tier='Intelligent-Tiering' or 'Advanced')"
            )
        return raw

    async def _batch(self, names: list[str]) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        by_param = {self.qualified(n): n for n in names}
        try:
            got = await self._worker.call(self._client.get_parameters, Names=list(by_param))
        except ClientError as exc:
            raise self._fail("get", names[0], exc) from None
        out: dict[str, Any] = dict.fromkeys(names)
        for param in got.get("Parameters", []):
            name = by_param.get(param["Name"])
            if name is None:
                continue
            try:
                out[name] = load_value(param["Value"])
            except ValueError:
                raise UnhandledError(f"{self.kind} value {name!r} is not JSON") from None
        return out

    async def _get(self, names: list[str]) -> dict[str, Any]:
        unique = list(dict.fromkeys(names))
        parts = await asyncio.gather(
            *(self._batch(unique[i : i + BATCH]) for i in range(0, len(unique), BATCH))
        )
        merged: dict[str, Any] = {}
        for part in parts:
            merged.update(part)
        return {n: merged[n] for n in names}

    async def _put(self, client: Any, op: str, name: str, raw_json: str,
                   overwrite: bool) -> None:
        await self._worker.call(
            client.put_parameter,
            Name=self.qualified(name),
            Value=self._checked(name, raw_json),
            Type="String",
            Overwrite=overwrite,
            Tier=self.tier,
        )

    async def _create_new(self, name: str, raw_json: str) -> None:
        await self._put(self._once, "create", name, raw_json, overwrite=False)

    async def _set(self, name: str, raw_json: str) -> None:
        from botocore.exceptions import ClientError

        try:
            await self._put(self._client, "set", name, raw_json, overwrite=True)
        except ClientError as exc:
            raise self._fail("set", name, exc) from None

    async def _remove(self, name: str) -> None:
        from botocore.exceptions import ClientError

        try:
            await self._worker.call(self._client.delete_parameter, Name=self.qualified(name))
        except ClientError as exc:
            if error_code(exc) != "ParameterNotFound":
                raise self._fail("remove", name, exc) from None

    async def _set_if_absent(self, name: str, raw_json: str, ttl_s: float | None) -> bool:
        self._no_ttl(ttl_s)
        return await self._create(name, raw_json)
