"""What an adapter package declares about itself: one ``AdapterDescriptor`` per adapter.

A descriptor is the single answer to "how is this adapter built, what does it
connect to, how is it tuned for fault runs, can it run in its own process".
The deployment bootstrap (``reference_services.deploy``) and the conformance
suite read descriptors and nothing else, so a third-party adapter that declares
one (as an entry point or a ``module:attribute`` reference) is treated exactly
like a built-in one.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol

AdapterKind = Literal["event_bridge", "queue_bridge", "state_store", "config_store", "secret_store"]
KINDS: tuple[AdapterKind, ...] = (
    "event_bridge",
    "queue_bridge",
    "state_store",
    "config_store",
    "secret_store",
)


class BuildContext(Protocol):
    """What a descriptor's ``create`` receives (the conformance ``AdapterContext`` is one).

    ``url(service)`` gives the URL of a backing service, ``prefix`` a unique namespace,
    ``shared`` a dict shared by the instances of one deployment (an in-memory hub),
    ``options`` the constructor options asked for.
    """

    prefix: str
    shared: dict[str, Any]
    options: dict[str, Any]

    def url(self, service: str) -> str: ...


def load_reference(reference: str) -> Any:
    """Import ``module:attribute`` (the attribute may be dotted)."""
    module_name, _, attr = reference.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{reference!r} is not of the form module:attribute")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class AdapterDescriptor:
    """One adapter: its name and kind, how to build it, what it needs and how to tune it.

    - ``reference``: ``module:Class``, imported only when the adapter is used (broker
      clients stay unimported until then).
    - ``service``: the harness service it connects to (``rabbitmq``, ``nats``, ``redis``,
      ``mosquitto``); ``None`` for an in-process adapter.
    - ``url_var``: the environment variable the deployment bootstrap reads its URL from.
    - ``fault_options``: JSON-able constructor options for fault runs (short heartbeats,
      fast reconnects), so a dead connection is noticed in seconds.
    - ``deployable``: whether it can connect separate OS processes (a real broker); the
      faults suite's service-process checks and the deployment patterns use it.
    - ``protocol``: the wire protocol it speaks (``amqp``, ``nats``, ``mqtt``, ...): checks
      that read the broker with a raw client of that protocol (the PURISTA wire family)
      pick their client by it, never by the adapter's name.
    - ``create``: custom construction from a :class:`BuildContext` (default: the class with
      ``url=ctx.url(service), prefix=ctx.prefix, **ctx.options``).
    - ``inject_raw``: ``async (adapter, raw: bytes)`` putting raw bytes on the wire the
      adapter consumes, for the suite's malformed-input checks (default: the adapter's own
      ``publish_raw`` or ``receive_raw`` method, if it has one).
    """

    name: str
    kind: AdapterKind
    reference: str
    service: str | None = None
    url_var: str | None = None
    fault_options: Mapping[str, Any] = field(default_factory=dict)
    deployable: bool = False
    protocol: str | None = None
    create: Callable[[BuildContext], Any] | None = None
    inject_raw: Callable[[Any, bytes], Awaitable[None]] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"adapter {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if (self.service is None) != (self.url_var is None):
            raise ValueError(f"adapter {self.name!r}: give both service and url_var, or neither")
        if self.deployable and self.service is None:
            raise ValueError(f"adapter {self.name!r}: an in-process adapter cannot be deployable")
        object.__setattr__(self, "fault_options", _frozen(self.fault_options))

    @property
    def label(self) -> str:
        """``kind:name``."""
        return f"{self.kind}:{self.name}"

    def load(self) -> type[Any]:
        """The adapter class (imports its module)."""
        cls = load_reference(self.reference)
        if not isinstance(cls, type):
            raise TypeError(f"adapter {self.label}: {self.reference} is not a class")
        return cls

    @property
    def capabilities(self) -> Any:
        """The class's declared capabilities."""
        return self.load().capabilities

    def build(self, ctx: BuildContext) -> Any:
        """An unstarted instance for ``ctx``."""
        if self.create is not None:
            return self.create(ctx)
        if self.service is None:
            return self.load()(**ctx.options)
        return self.load()(url=ctx.url(self.service), prefix=ctx.prefix, **ctx.options)

    def build_from_urls(self, urls: Mapping[str, str], prefix: str, **options: Any) -> Any:
        """An unstarted instance from environment-style URLs (the deployment bootstrap)."""
        if self.url_var is None:
            return self.load()(**options)
        if not urls.get(self.url_var):
            raise ValueError(f"{self.url_var} must be set for adapter {self.label}")
        return self.load()(url=urls[self.url_var], prefix=prefix, **options)


STORE_KINDS: tuple[tuple[AdapterKind, str], ...] = (
    ("state_store", "State"),
    ("config_store", "Config"),
    ("secret_store", "Secret"),
)


def store_descriptors(
    name: str, reference: str, create: Callable[[str], Any] | None = None, **fields: Any
) -> tuple[AdapterDescriptor, ...]:
    """The state, config and secret store descriptors of one family.

    ``reference`` has a ``{kind}`` placeholder (``pkg.stores:Redis{kind}Store``) filled
    with ``State``, ``Config`` and ``Secret``; ``create`` (optional) is called with the
    class name to give each store's ``create``.
    """
    return tuple(
        AdapterDescriptor(
            name,
            kind,
            reference.format(kind=cls),
            create=create(reference.format(kind=cls).rpartition(":")[2]) if create else None,
            **fields,
        )
        for kind, cls in STORE_KINDS
    )
