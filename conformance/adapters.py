"""Adapters under test: built-ins, ``module:factory`` references and entry points.

A *factory* is any callable ``factory(ctx: AdapterContext) -> adapter`` that
returns an unstarted adapter. The adapter's ``kind`` attribute says which
checks apply (``event_bridge``, ``queue_bridge``, ``state_store``,
``config_store`` or ``secret_store``). A check that needs several instances
calls the factory several times with contexts that share ``prefix`` and
``shared``, so the instances form one deployment.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

ENTRY_POINT_GROUP = "purista_conformance.adapters"
KINDS = ("event_bridge", "queue_bridge", "state_store", "config_store", "secret_store")


class UsageError(Exception):
    """A bad adapter selection on the command line (exit code 2)."""


class ServiceUnavailable(Exception):
    """A backing service (broker) could not be provided; the check is skipped."""


def _no_services(service: str) -> str:
    raise ServiceUnavailable(f"no service provider is available for {service!r}")


@dataclass(frozen=True)
class AdapterContext:
    """What a factory receives.

    - ``url(service)``: the URL of a backing service (``rabbitmq``, ``nats``,
      ``redis``, ``mosquitto``), started by the harness on first use.
    - ``prefix``: a unique namespace for every name the adapter creates
      (exchanges, queues, subjects, topics, keys); fresh per check.
    - ``shared``: a dict shared by every instance of one check (e.g. an
      in-memory hub playing the broker).
    - ``options``: constructor options the check asks for (e.g.
      ``enable_set=True`` or ``cache_ttl_s=0.3`` for stores,
      ``drain_timeout_s`` for event bridges). Pass them on as keyword arguments.
    - ``instance``: the index of the instance within the check (0, 1, ...).
    """

    adapter: str
    kind: str
    prefix: str
    provider: str = "none"
    shared: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    instance: int = 0
    url_lookup: Callable[[str], str] = _no_services

    def url(self, service: str) -> str:
        """The URL of ``service``; raises :class:`ServiceUnavailable` if there is none."""
        return self.url_lookup(service)

    def for_instance(self, index: int, options: dict[str, Any]) -> AdapterContext:
        """The context of instance ``index`` with the check's ``options``."""
        return replace(self, instance=index, options=dict(options))


Factory = Callable[[AdapterContext], Any]


@dataclass
class AdapterSpec:
    """One adapter the suite runs: a name, a kind and how to build it."""

    name: str
    kind: str
    factory: Factory | None
    source: str
    reference: str = ""
    capabilities: Any = None
    unavailable: str = ""
    services: tuple[str, ...] = ()
    inject_raw: Callable[[Any, bytes], Any] | None = None

    @property
    def label(self) -> str:
        """``kind:name``, used in test ids and the report matrix."""
        return f"{self.kind}:{self.name}"

    def capabilities_dict(self) -> dict[str, Any]:
        """The declared capabilities as JSON-friendly data."""
        caps = self.capabilities
        if caps is None:
            return {}
        if hasattr(caps, "as_dict"):
            return dict(caps.as_dict())
        return dict(caps)

    def support(self, capability: str) -> tuple[bool, str]:
        """Whether ``capability`` is declared supported, and the declared reason if not."""
        caps = self.capabilities
        if caps is None or not hasattr(caps, capability):
            return False, f"capability {capability!r} is not declared"
        value = getattr(caps, capability)
        if isinstance(value, bool):
            return value, "" if value else f"{capability} declared False"
        return bool(value), getattr(value, "reason", "") or ""


def load_reference(reference: str) -> Any:
    """Import ``module:attribute`` (attribute may be dotted)."""
    module_name, _, attr = reference.partition(":")
    if not module_name or not attr:
        raise UsageError(f"{reference!r} is not of the form module:factory")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------- built-ins
def _memory_event_bridge(ctx: AdapterContext) -> Any:
    from reference_services.adapters.memory.event_bridge import DefaultEventBridge, MemoryHub

    hub = ctx.shared.setdefault("memory_hub", MemoryHub())
    return DefaultEventBridge(hub=hub, **ctx.options)


def _memory_queue_bridge(ctx: AdapterContext) -> Any:
    from reference_services.adapters.memory.queue_bridge import DefaultQueueBridge, MemoryQueueStore

    store = ctx.shared.setdefault("memory_queue_store", MemoryQueueStore())
    return DefaultQueueBridge(store=store, **ctx.options)


def _memory_store(cls_name: str) -> Factory:
    def factory(ctx: AdapterContext) -> Any:
        from reference_services.adapters.memory import stores as memory

        kv = ctx.shared.setdefault("memory_kv", memory.MemoryKV())
        return getattr(memory, cls_name)(kv=kv, **ctx.options)

    return factory


def _broker(reference: str, service: str) -> Factory:
    def factory(ctx: AdapterContext) -> Any:
        cls = load_reference(reference)
        return cls(url=ctx.url(service), prefix=ctx.prefix, **ctx.options)

    return factory


async def _memory_inject_raw(bridge: Any, raw: bytes) -> None:
    bridge.receive_raw(raw)


@dataclass(frozen=True)
class _Builtin:
    name: str
    kind: str
    reference: str
    factory: Factory
    services: tuple[str, ...] = ()
    inject_raw: Callable[[Any, bytes], Any] | None = None


_MEM = "reference_services.adapters.memory.event_bridge"
_BUILTINS: tuple[_Builtin, ...] = (
    _Builtin(
        "memory",
        "event_bridge",
        f"{_MEM}:DefaultEventBridge",
        _memory_event_bridge,
        inject_raw=_memory_inject_raw,
    ),
    _Builtin(
        "amqp",
        "event_bridge",
        "reference_services.adapters.amqp.event_bridge:AmqpBridge",
        _broker("reference_services.adapters.amqp.event_bridge:AmqpBridge", "rabbitmq"),
        ("rabbitmq",),
    ),
    _Builtin(
        "nats",
        "event_bridge",
        "reference_services.adapters.nats.event_bridge:NatsBridge",
        _broker("reference_services.adapters.nats.event_bridge:NatsBridge", "nats"),
        ("nats",),
    ),
    _Builtin(
        "mqtt",
        "event_bridge",
        "reference_services.adapters.mqtt.event_bridge:MqttBridge",
        _broker("reference_services.adapters.mqtt.event_bridge:MqttBridge", "mosquitto"),
        ("mosquitto",),
    ),
    _Builtin(
        "memory",
        "queue_bridge",
        "reference_services.adapters.memory.queue_bridge:DefaultQueueBridge",
        _memory_queue_bridge,
    ),
    _Builtin(
        "redis",
        "queue_bridge",
        "reference_services.adapters.redis.queue_bridge:RedisQueueBridge",
        _broker("reference_services.adapters.redis.queue_bridge:RedisQueueBridge", "redis"),
        ("redis",),
    ),
    _Builtin(
        "nats",
        "queue_bridge",
        "reference_services.adapters.nats.queue_bridge:NatsQueueBridge",
        _broker("reference_services.adapters.nats.queue_bridge:NatsQueueBridge", "nats"),
        ("nats",),
    ),
)


def _store_builtins() -> tuple[_Builtin, ...]:
    out = []
    for kind, suffix in (
        ("state_store", "State"),
        ("config_store", "Config"),
        ("secret_store", "Secret"),
    ):
        out.append(
            _Builtin(
                "memory",
                kind,
                f"reference_services.adapters.memory.stores:Default{suffix}Store",
                _memory_store(f"Default{suffix}Store"),
            )
        )
        ref = f"reference_services.adapters.redis.stores:Redis{suffix}Store"
        out.append(_Builtin("redis", kind, ref, _broker(ref, "redis"), ("redis",)))
        ref = f"reference_services.adapters.nats.kv_stores:NatsKV{suffix}Store"
        out.append(_Builtin("nats-kv", kind, ref, _broker(ref, "nats"), ("nats",)))
    return tuple(out)


BUILTINS: tuple[_Builtin, ...] = _BUILTINS + _store_builtins()


def _builtin_spec(b: _Builtin) -> AdapterSpec:
    spec = AdapterSpec(
        b.name,
        b.kind,
        b.factory,
        "builtin",
        b.reference,
        services=b.services,
        inject_raw=b.inject_raw,
    )
    try:
        cls = load_reference(b.reference)
    except ImportError as exc:
        spec.unavailable = f"adapter module not available: {exc}"
        return spec
    except AttributeError as exc:
        spec.unavailable = f"adapter class not available: {exc}"
        return spec
    spec.capabilities = getattr(cls, "capabilities", None)
    if spec.inject_raw is None:
        spec.inject_raw = _raw_hook_of(cls)
    return spec


def _raw_hook_of(obj: Any) -> Callable[[Any, bytes], Any] | None:
    """An adapter may offer ``publish_raw(raw: bytes)`` to inject wire bytes (tests only)."""
    for attr in ("conformance_inject_raw", "publish_raw", "receive_raw"):
        if callable(getattr(obj, attr, None)):

            async def hook(bridge: Any, raw: bytes, _attr: str = attr) -> None:
                result = getattr(bridge, _attr)(raw)
                if inspect.isawaitable(result):
                    await result

            return hook
    return None


def probe(name: str | None, factory: Factory, source: str, reference: str) -> AdapterSpec:
    """Build a spec for a third-party factory by calling it once with a probe context.

    The probe context has no services (``ctx.url`` returns a placeholder) and
    the object is never started. A factory may instead set ``factory.kind``
    (and ``factory.capabilities``) to skip the probe.
    """
    kind = getattr(factory, "kind", None)
    caps = getattr(factory, "capabilities", None)
    obj = None
    if kind is None or caps is None:
        ctx = AdapterContext(
            adapter=name or "probe",
            kind=kind or "unknown",
            prefix="cfprobe",
            url_lookup=lambda service: f"probe://{service}",
        )
        try:
            obj = factory(ctx)
        except Exception as exc:
            raise UsageError(
                f"adapter {reference}: the factory failed on a probe call: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        kind = kind or getattr(obj, "kind", None)
        caps = caps or getattr(obj, "capabilities", None)
    if kind not in KINDS:
        raise UsageError(f"adapter {reference}: kind {kind!r} is not one of {', '.join(KINDS)}")
    label = name or getattr(obj, "name", None) or reference.rpartition(":")[2]
    spec = AdapterSpec(str(label), str(kind), factory, source, reference, capabilities=caps)
    # a factory may name the harness services it connects to (e.g. ``("nats",)``), so that
    # checks that fault a broker (the faults suite) know which one
    spec.services = tuple(getattr(factory, "services", ()) or ())
    hook = getattr(factory, "inject_raw", None)
    spec.inject_raw = hook if callable(hook) else _raw_hook_of(obj if obj is not None else factory)
    return spec


def entry_point_specs() -> list[AdapterSpec]:
    """Adapters installed under the ``purista_conformance.adapters`` entry-point group."""
    specs = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            factory = ep.load()
        except Exception as exc:
            raise UsageError(f"entry point {ep.name} = {ep.value} failed to load: {exc}") from exc
        specs.append(probe(ep.name, factory, "entry-point", ep.value))
    return specs


def builtin_specs() -> list[AdapterSpec]:
    """Every built-in adapter, with ``unavailable`` set where its module is missing."""
    return [_builtin_spec(b) for b in BUILTINS]


def resolve(selectors: list[str]) -> list[AdapterSpec]:
    """Turn ``--adapter`` values into specs.

    A selector is ``module:factory`` or ``name=module:factory`` (third party),
    or a built-in / installed name: ``memory``, ``event_bridge:amqp``,
    ``redis``. No selector means every built-in and installed adapter.
    """
    builtins = builtin_specs()
    if not selectors:
        return builtins + entry_point_specs()
    installed: list[AdapterSpec] | None = None
    out: list[AdapterSpec] = []
    for sel in selectors:
        sel = sel.strip()
        name, eq, ref = sel.partition("=")
        if not eq:
            name, ref = "", sel
        head, colon_, _tail = ref.partition(":")
        if eq or (colon_ and head not in KINDS):
            try:
                factory = load_reference(ref)
            except (ImportError, AttributeError) as exc:
                raise UsageError(f"cannot load adapter {ref!r}: {exc}") from exc
            if not callable(factory):
                raise UsageError(f"adapter {ref!r} is not callable")
            out.append(probe(name or None, factory, "cli", ref))
            continue
        kind, colon, short = sel.rpartition(":")
        if installed is None:
            installed = entry_point_specs()
        found = [
            s for s in builtins + installed if s.name == short and (not colon or s.kind == kind)
        ]
        if not found:
            known = sorted({s.label for s in builtins + installed})
            raise UsageError(
                f"unknown adapter {sel!r}; known: {', '.join(known)} (or give module:factory)"
            )
        out.extend(s for s in found if s.label not in {o.label for o in out})
    labels = [s.label for s in out]
    dupes = {x for x in labels if labels.count(x) > 1}
    if dupes:
        raise UsageError(
            f"two adapters are named {', '.join(sorted(dupes))}; name them with name=module:factory"
        )
    return out
