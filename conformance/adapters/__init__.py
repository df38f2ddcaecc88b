"""Adapters under test, from the one registry: descriptors (built-in, installed as entry
points, or given as ``module:DESCRIPTOR``) and plain factories (``module:factory``).

A descriptor (``reference_services.runtime.spi.AdapterDescriptor``) gives an adapter
everything a built-in has: fault tuning, deployment patterns, the harness service it
needs. A *factory* is any callable ``factory(ctx: AdapterContext) -> adapter`` that
returns an unstarted adapter; it may carry ``kind``, ``capabilities``, ``services``,
``fault_options`` and ``inject_raw`` attributes. The adapter's ``kind`` attribute says which
checks apply (``event_bridge``, ``queue_bridge``, ``state_store``,
``config_store`` or ``secret_store``). A check that needs several instances
calls the factory several times with contexts that share ``prefix`` and
``shared``, so the instances form one deployment.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from reference_services.adapters import registry
from reference_services.runtime.spi import descriptor as _descriptor_mod
from reference_services.runtime.spi.descriptor import KINDS, AdapterDescriptor

ENTRY_POINT_GROUP = registry.ENTRY_POINT_GROUP
# the in-process adapters: the monolith's, and the event bridge the stateful check models
REFERENCE_ADAPTER = "memory"
REFERENCE_MODEL = ("event_bridge", REFERENCE_ADAPTER)
# the queue bridge and stores that connect the processes of a deployment pattern
PROCESS_BACKEND = "redis"
# the edge pattern's queue bridge, as in the seed's configuration table: MQTT-native
EDGE_QUEUE = "mqtt"
# the seed's pattern configurations: the serverless functions read secrets from a cloud
# secret store, the edge keeps its state through a Dapr sidecar
SERVERLESS_SECRET_STORE = "aws"
EDGE_STATE_STORE = "dapr"


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
    fault_options: dict[str, Any] = field(default_factory=dict)
    deployable: bool = False
    url_var: str | None = None
    selector: str | None = None
    protocol: str | None = None
    adapter_class: type | None = None

    @property
    def is_reference_model(self) -> bool:
        """Whether this is the built-in in-memory reference model itself."""
        return self.source == "builtin" and (self.kind, self.name) == REFERENCE_MODEL

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

    def describe(self) -> dict[str, Any]:
        """Name, kind, source, reference, availability and capabilities as JSON-friendly data
        (``conformance list --json`` and each adapter's entry in report.json)."""
        return {
            "adapter": self.name,
            "kind": self.kind,
            "source": self.source,
            "reference": self.reference,
            "unavailable": self.unavailable,
            "capabilities": self.capabilities_dict(),
        }

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
    return _descriptor_mod.load_reference(reference)


# ------------------------------------------------------------ descriptors
def descriptor_spec(d: AdapterDescriptor, source: str, selector: str) -> AdapterSpec:
    """The spec of an adapter declared by a descriptor (built-in or third party).

    ``selector`` is what a subprocess (a deployment pattern, a faults-suite service
    process) is given to find the same descriptor: its registered name or a reference.
    """
    spec = AdapterSpec(
        d.name,
        d.kind,
        d.build,
        source,
        d.reference,
        services=(d.service,) if d.service else (),
        inject_raw=d.inject_raw,
        fault_options=dict(d.fault_options),
        deployable=d.deployable,
        url_var=d.url_var,
        selector=selector,
        protocol=d.protocol,
    )
    try:
        cls = d.load()
    except ImportError as exc:
        spec.unavailable = f"adapter module not available: {exc}"
        return spec
    except (AttributeError, TypeError) as exc:
        spec.unavailable = f"adapter class not available: {exc}"
        return spec
    spec.capabilities = getattr(cls, "capabilities", None)
    spec.adapter_class = cls
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
    options = getattr(factory, "fault_options", None)
    spec.fault_options = dict(options) if isinstance(options, dict) else {}
    hook = getattr(factory, "inject_raw", None)
    spec.inject_raw = hook if callable(hook) else _raw_hook_of(obj if obj is not None else factory)
    return spec


def _object_specs(obj: Any, name: str | None, source: str, reference: str) -> list[AdapterSpec]:
    """Specs for what an entry point or a ``module:attr`` selector names."""
    found = registry.descriptors_in(obj)
    if found is not None:
        # a subprocess finds an installed descriptor by name, a given one by its reference
        return [
            descriptor_spec(d, source, d.name if source == "entry-point" else reference)
            for d in found
        ]
    if not callable(obj):
        raise UsageError(f"adapter {reference!r} is neither a descriptor nor a callable factory")
    return [probe(name, obj, source, reference)]


def entry_point_specs() -> list[AdapterSpec]:
    """Adapters installed under the ``purista_conformance.adapters`` entry-point group."""
    specs = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:
            raise UsageError(f"entry point {ep.name} = {ep.value} failed to load: {exc}") from exc
        specs.extend(_object_specs(obj, ep.name, "entry-point", ep.value))
    return specs


def reference_adapter(kind: str) -> AdapterDescriptor:
    """The in-process adapter of ``kind`` the monolith runs on."""
    return registry.resolve(kind, REFERENCE_ADAPTER)  # type: ignore[arg-type]


def process_backend(kind: str) -> AdapterDescriptor:
    """The adapter of ``kind`` (a queue bridge or a store) shared by deployment processes."""
    return registry.resolve(kind, PROCESS_BACKEND)  # type: ignore[arg-type]


def process_backend_urls(url: Callable[[str], str]) -> dict[str, str]:
    """Environment-style URLs of the process backend, from a service-to-URL lookup."""
    out: dict[str, str] = {}
    for kind in ("queue_bridge", "state_store"):
        d = process_backend(kind)
        if d.service and d.url_var:
            out[d.url_var] = url(d.service)
    return out


def store_urls(kind: str, selector: str, url: Callable[[str], str]) -> dict[str, str]:
    """Environment-style URL of the store ``kind:selector`` (from its descriptor)."""
    d = registry.resolve(kind, selector)  # type: ignore[arg-type]
    return {d.url_var: url(d.service)} if d.service and d.url_var else {}


def process_backend_services() -> tuple[str, ...]:
    """The harness services the process backend needs."""
    kinds = ("queue_bridge", "state_store")
    return tuple(dict.fromkeys(s for k in kinds if (s := process_backend(k).service)))


def subprocess_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a service process: ours, with our import path, so that the
    child finds every adapter (and ``module:DESCRIPTOR`` reference) the runner can."""
    path = os.pathsep.join(p for p in sys.path if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def builtin_specs() -> list[AdapterSpec]:
    """Every built-in adapter, with ``unavailable`` set where its module is missing."""
    return [descriptor_spec(d, "builtin", d.name) for d in registry.builtin()]


def resolve(selectors: list[str]) -> list[AdapterSpec]:
    """Turn ``--adapter`` values into specs.

    A selector is ``module:factory`` or ``name=module:factory`` (third party),
    or a built-in / installed name: ``memory``, ``event_bridge:amqp``,
    ``redis``. No selector means every built-in and installed adapter.
    """
    return resolve_by_selector(selectors)[0]


def resolve_by_selector(
    selectors: list[str],
) -> tuple[list[AdapterSpec], dict[str, list[str]]]:
    """:func:`resolve`, and ``{selector: [kind:name, ...]}``: the adapters each value names."""
    builtins = builtin_specs()
    if not selectors:
        return builtins + entry_point_specs(), {}
    installed: list[AdapterSpec] | None = None
    out: list[AdapterSpec] = []
    named: dict[str, list[str]] = {}
    for given in selectors:
        sel = given.strip()
        name, eq, ref = sel.partition("=")
        if not eq:
            name, ref = "", sel
        head, colon_, _tail = ref.partition(":")
        if eq or (colon_ and head not in KINDS):
            try:
                obj = load_reference(ref)
            except (ImportError, AttributeError) as exc:
                if (
                    not eq
                    and "." not in head
                    and isinstance(exc, ModuleNotFoundError)
                    and exc.name == head
                ):  # `kafka:memory`: meant as kind:name, not as a module
                    raise UsageError(
                        f"unknown adapter kind {head!r} in {sel!r}; kinds: {', '.join(KINDS)} "
                        f"(or module:factory; there is no module {head!r})"
                    ) from exc
                raise UsageError(f"cannot load adapter {ref!r}: {exc}") from exc
            specs = _object_specs(obj, name or None, "cli", ref)
            if name and len(specs) == 1:
                specs[0].name = name
            out.extend(specs)
            named[given] = [s.label for s in specs]
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
        named[given] = [s.label for s in found]
    labels = [s.label for s in out]
    dupes = {x for x in labels if labels.count(x) > 1}
    if dupes:
        raise UsageError(
            f"two adapters are named {', '.join(sorted(dupes))}; name them with name=module:factory"
        )
    return out, named
