"""The one AWS connection module: settings from a URL, a boto3 client run off the event
loop, error mapping, name encoding and the redaction of botocore's debug logs.

URL forms: ``http://127.0.0.1:PORT`` (an endpoint that answers the AWS APIs, such as a
local ``moto_server``), optionally with ``?region=eu-west-1``; ``aws://`` or
``aws://REGION`` for AWS's own endpoints. Credentials come from boto3's usual chain
(environment, profile, instance role); for an explicit loopback endpoint without any,
the emulator's placeholder keys are used (moto accepts any).

boto3 is synchronous: every call runs in a small thread pool owned by the store, so the
event loop never blocks on the network. boto3 clients are thread-safe.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from reference_services.runtime.errors import HandledError, StatusCode, UnhandledError

__all__ = [
    "AwsSettings",
    "AwsUnavailableError",
    "AwsWorker",
    "RedactSecretValues",
    "encode_name",
    "install_redaction",
]

T = TypeVar("T")
DEFAULT_REGION = "us-east-1"
_KEEP = re.compile(r"[A-Za-z0-9.\-]")
_ARN_LIKE_SUFFIX = re.compile(r"-[A-Za-z0-9]{6}$")
# botocore's debug records that carry request or response bodies
_BODY_LOGGERS = ("botocore.endpoint", "botocore.parsers", "botocore.hooks", "botocore.auth",
                 "botocore.retryhandler", "botocore.httpchecksum", "urllib3.connectionpool")
_SECRET_FIELDS = ("SecretString", "SecretBinary", "secretString", "secretBinary")


class AwsUnavailableError(UnhandledError):
    """The AWS endpoint did not answer (connection refused, timeout, 5xx)."""


class AwsRequestError(HandledError):
    """AWS refused a request for a reason the caller can fix (400)."""

    default_status = StatusCode.BAD_REQUEST


@dataclass(frozen=True)
class AwsSettings:
    """Where and how to reach AWS (no credential is ever kept here)."""

    endpoint_url: str | None
    region: str
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 5.0
    max_attempts: int = 3

    @classmethod
    def resolve(cls, url: str | None, **kwargs: Any) -> AwsSettings:
        """Settings from ``url`` (else ``AWS_ENDPOINT_URL``); a clear error for a bad URL."""
        url = url or os.environ.get("AWS_ENDPOINT_URL") or "aws://"
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        env_region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if parts.scheme == "aws":
            region = parts.hostname or (query.get("region") or [None])[0] or env_region
            return cls(None, region or DEFAULT_REGION, **kwargs)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"AWS URL must be http(s)://host[:port][?region=R] or aws://[REGION], "
                f"got scheme {parts.scheme!r}"
            )
        if parts.username or parts.password:
            raise ValueError("AWS URL must not carry credentials (use the AWS credential chain)")
        region = (query.get("region") or [None])[0] or env_region or DEFAULT_REGION
        endpoint = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        return cls(endpoint, region, **kwargs)

    @property
    def loopback(self) -> bool:
        """Whether the endpoint is on this machine (an emulator)."""
        if self.endpoint_url is None:
            return False
        host = urlsplit(self.endpoint_url).hostname or ""
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def client(self, service: str, *, attempts: int | None = None,
               timeout_s: float | None = None) -> Any:
        """A boto3 client for ``service`` (``secretsmanager``, ``ssm``); ``attempts`` and
        ``timeout_s`` override the retries and both timeouts (health probes, creates).
        Clients are thread-safe and costly to build (service models): one per process
        and configuration, shared by the stores."""
        return _client(self, service, attempts, timeout_s)

    def _new_client(self, service: str, attempts: int | None, timeout_s: float | None) -> Any:
        import boto3
        from botocore.config import Config

        session = boto3.session.Session()
        kwargs: dict[str, Any] = {}
        if self.loopback and session.get_credentials() is None:
            # an emulator on loopback accepts any key; real AWS never gets these
            kwargs = {"aws_access_key_id": "emulator", "aws_secret_access_key": "emulator"}
        config = Config(
            region_name=self.region,
            connect_timeout=timeout_s or self.connect_timeout_s,
            read_timeout=timeout_s or self.read_timeout_s,
            retries={"total_max_attempts": attempts or self.max_attempts, "mode": "standard"},
        )
        return session.client(service, endpoint_url=self.endpoint_url, config=config, **kwargs)


_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


def _client(settings: AwsSettings, service: str, attempts: int | None,
            timeout_s: float | None) -> Any:
    key = (settings, service, attempts, timeout_s)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = settings._new_client(service, attempts, timeout_s)
        return _clients[key]


class AwsWorker:
    """Runs blocking boto3 calls in a thread pool of its own, mapping their errors."""

    def __init__(self, what: str, threads: int = 8) -> None:
        self.what = what
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None

    def open(self) -> None:
        """Create the pool (idempotent)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix=self.what)

    def close(self) -> None:
        """Stop the pool once running calls finished."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in the pool; connection failures become 500s naming
        ``self.what`` (never a value: botocore's message does not carry request bodies)."""
        from botocore.exceptions import BotoCoreError

        self.open()
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
        except BotoCoreError as exc:
            raise AwsUnavailableError(f"{self.what}: {type(exc).__name__}") from None


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ClientError, else None."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code") or "") or None
    return None


def encode_name(name: str) -> str:
    """``name`` as a string of ``[A-Za-z0-9._-]`` only, injectively: every other character
    (``_`` too) becomes ``_`` plus the hex of its UTF-8 bytes; a trailing ``-XXXXXX``
    (which Secrets Manager could read as an ARN suffix) has its hyphen escaped."""
    out = []
    for ch in name:
        if _KEEP.fullmatch(ch):
            out.append(ch)
        else:
            out.append("".join(f"_{b:02x}" for b in ch.encode()))
    text = "".join(out)
    if _ARN_LIKE_SUFFIX.search(text):
        text = text[:-7] + "_2d" + text[-6:]
    return text


class RedactSecretValues(logging.Filter):
    """Replaces botocore/urllib3 debug records that mention a secret value field."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a broken record: drop its arguments, keep the template
            text = str(record.msg)
        if any(field in text for field in _SECRET_FIELDS):
            record.msg = f"[{record.name} record redacted: it carried a secret value]"
            record.args = ()
        return True


_REDACTION = RedactSecretValues()


def install_redaction() -> None:
    """Attach the redaction filter to botocore's body-logging loggers (idempotent).

    A logger's filters apply to the records created on it, so each logger that formats
    request or response bodies gets the filter itself."""
    for name in _BODY_LOGGERS:
        logger = logging.getLogger(name)
        if _REDACTION not in logger.filters:
            logger.addFilter(_REDACTION)
