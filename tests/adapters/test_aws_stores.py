"""The AWS secret store (Secrets Manager) and config store (SSM Parameter Store) against a
real moto_server: backend layout, escaping, limits, and no secret value in any log record,
repr or error."""

from __future__ import annotations

import json
import logging
from typing import Any

import boto3
import pytest
from adapter_helpers import adapters_fixture
from hypothesis import example, given
from hypothesis import strategies as st

from reference_services.adapters.aws.client import AwsSettings, encode_name
from reference_services.adapters.aws.parameter_store import AwsConfigStore
from reference_services.adapters.aws.secrets_manager import AwsSecretStore
from reference_services.runtime.errors import PuristaError
from reference_services.runtime.spi.store_base import StoreValueError

SECRET = "s3cr3t-value-7f1c2a"
OPEN = {"enable_get": True, "enable_set": True, "enable_remove": True}


make_store = adapters_fixture(AwsSecretStore, "moto", yields="store", quiet=True)


def raw_client(url: str, service: str) -> Any:
    return boto3.client(service, endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="emulator", aws_secret_access_key="emulator")


# the escape character, hex digits and characters that need escaping, plus any text
_NAMES = st.text(alphabet="a_:3f-/é", min_size=1, max_size=8) | st.text(min_size=1, max_size=12)


@example(["a:", "a_3a"])
@given(st.lists(_NAMES, min_size=2, max_size=2, unique=True))
def test_encode_name_is_injective_and_in_the_backend_alphabet(pair: list[str]) -> None:
    a, b = (encode_name(n) for n in pair)
    assert a != b
    for encoded in (a, b):
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in encoded), encoded


def test_names_that_look_like_an_arn_suffix_are_escaped() -> None:
    assert encode_name("api-abcdef") == "api_2dabcdef"
    assert encode_name("user:1") == "user_3a1" and encode_name("a_b") == "a_5fb"


async def test_backend_layout(make_store: Any, harness_moto: Any, namespace: str) -> None:
    secrets = await make_store(AwsSecretStore, **OPEN)
    params = await make_store(AwsConfigStore, **OPEN)
    await secrets.set("user:1", {"key": SECRET})
    await params.set("user:1", {"limit": 3, "note": "{{not a reference}}"})
    sm = raw_client(harness_moto.url, "secretsmanager")
    got = sm.get_secret_value(SecretId=f"{encode_name(namespace)}/user_3a1")
    assert json.loads(got["SecretString"]) == {"key": SECRET}
    ssm = raw_client(harness_moto.url, "ssm")
    param = ssm.get_parameter(Name=f"/{encode_name(namespace)}/user_3a1")["Parameter"]
    assert param["Type"] == "String" and "{{" not in param["Value"]
    assert await params.get("user:1") == {"user:1": {"limit": 3, "note": "{{not a reference}}"}}


async def test_get_of_more_than_ten_parameters(make_store: Any) -> None:
    params = await make_store(AwsConfigStore, **OPEN)
    for i in range(0, 23, 2):
        await params.set(f"p{i}", i)
    got = await params.get(*(f"p{i}" for i in range(23)))
    assert got == {f"p{i}": (i if i % 2 == 0 else None) for i in range(23)}


async def test_standard_parameter_limit_is_a_400_naming_the_key(make_store: Any) -> None:
    params = await make_store(AwsConfigStore, **OPEN)
    with pytest.raises(StoreValueError, match=r"'big'.*4096"):
        await params.set("big", "x" * 5000)
    assert await params.get("big") == {"big": None}


async def test_ttl_is_refused_as_unsupported(make_store: Any) -> None:
    secrets = await make_store(AwsSecretStore, **OPEN)
    with pytest.raises(PuristaError) as err:
        await secrets.set_if_absent("lease", 1, ttl_s=5)
    assert err.value.status == 501 and "ttl" in str(err.value)
    assert await secrets.get("lease") == {"lease": None}


def test_durability_follows_the_endpoint() -> None:
    assert not AwsSecretStore("http://127.0.0.1:1").capabilities.durable
    assert AwsSecretStore("aws://eu-west-1").capabilities.durable
    assert AwsSecretStore("http://127.0.0.1:1", durable=True).capabilities.durable


def test_bad_urls_are_named_without_their_credentials() -> None:
    with pytest.raises(ValueError, match="scheme 'redis'"):
        AwsSettings.resolve("redis://127.0.0.1:6379")
    with pytest.raises(ValueError) as err:
        AwsSettings.resolve(f"http://key:{SECRET}@127.0.0.1:5000")
    assert SECRET not in str(err.value)
    assert AwsSettings.resolve("http://127.0.0.1:5000?region=eu-west-1").region == "eu-west-1"


async def test_no_secret_value_in_logs_repr_or_errors(
    make_store: Any, caplog: pytest.LogCaptureFixture, harness_moto: Any
) -> None:
    caplog.set_level(logging.DEBUG)  # botocore logs request and response bodies at DEBUG
    secrets = await make_store(AwsSecretStore, cache_ttl_s=60, **OPEN)
    await secrets.set("api-key", SECRET)
    assert await secrets.get("api-key") == {"api-key": SECRET}
    assert await secrets.set_if_absent("other", SECRET) is True
    assert SECRET not in repr(secrets)
    await secrets.destroy()
    down = AwsSecretStore("http://127.0.0.1:9", prefix="down", connect_timeout_s=0.2,
                          retry_attempts=1, **OPEN)
    with pytest.raises(PuristaError) as err:
        await down.start()
    with pytest.raises(PuristaError) as err:  # a write that cannot reach the endpoint
        await down.set("api-key", SECRET)
    assert SECRET not in str(err.value) and err.value.__cause__ is None
    await down.destroy()
    records = [r for r in caplog.records if r.name.startswith(("botocore", "urllib3"))]
    assert records, "no botocore debug record captured: the check would prove nothing"
    leaked = [r.name for r in caplog.records if SECRET in r.getMessage()]
    assert not leaked, f"secret value in log records of {sorted(set(leaked))}"
