"""The one adapter registry: built-in descriptors plus those installed as entry points.

An adapter is found by kind and name (``event_bridge`` + ``amqp``) or by a
``module:attribute`` reference to a descriptor, so a subprocess told
``EVENT_BRIDGE=mypkg.bridge:DESCRIPTOR`` builds the same adapter as its parent.
Entry points in the ``purista_conformance.adapters`` group may name a
descriptor, a sequence of descriptors, or (for the conformance suite only) a
factory callable.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable
from typing import Any

from reference_services.runtime.spi.descriptor import (
    KINDS,
    AdapterDescriptor,
    AdapterKind,
    load_reference,
)

ENTRY_POINT_GROUP = "purista_conformance.adapters"
BUILTIN_PACKAGES = ("memory", "amqp", "nats", "mqtt", "redis", "aws", "dapr")


class UnknownAdapter(LookupError):
    """No adapter of that kind and name (the message lists the known ones)."""


def builtin() -> tuple[AdapterDescriptor, ...]:
    """Every descriptor the built-in adapter packages declare."""
    out: list[AdapterDescriptor] = []
    for pkg in BUILTIN_PACKAGES:
        module = importlib.import_module(f"reference_services.adapters.{pkg}")
        out.extend(module.DESCRIPTORS)
    return tuple(out)


def descriptors_in(obj: Any) -> list[AdapterDescriptor] | None:
    """``obj`` as descriptors (one or a sequence), or None if it is not made of them."""
    if isinstance(obj, AdapterDescriptor):
        return [obj]
    if (
        isinstance(obj, (list, tuple))
        and obj
        and all(isinstance(d, AdapterDescriptor) for d in obj)
    ):
        return list(obj)
    return None


def entry_points() -> list[tuple[str, str, Any]]:
    """``(name, value, loaded object)`` for each installed entry point (loading errors raise)."""
    found = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.append((ep.name, ep.value, ep.load()))
    return found


def installed() -> list[AdapterDescriptor]:
    """Descriptors installed as entry points (factory entry points are not descriptors)."""
    out: list[AdapterDescriptor] = []
    for _name, _value, obj in entry_points():
        out.extend(descriptors_in(obj) or [])
    return out


def every() -> list[AdapterDescriptor]:
    """Built-in and installed descriptors."""
    return [*builtin(), *installed()]


def resolve(
    kind: AdapterKind, selector: str, *, known: Iterable[AdapterDescriptor] | None = None
) -> AdapterDescriptor:
    """The descriptor of ``kind`` named ``selector``, or referenced by it (``module:attr``)."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    if ":" in selector:
        found = descriptors_in(load_reference(selector))
        if not found:
            raise UnknownAdapter(f"{selector} is not an AdapterDescriptor (or a sequence of them)")
        matching = [d for d in found if d.kind == kind]
        if len(matching) != 1:
            raise UnknownAdapter(f"{selector} declares {len(matching)} adapters of kind {kind}")
        return matching[0]
    pool = list(known) if known is not None else every()
    for d in pool:
        if d.kind == kind and d.name == selector:
            return d
    names = sorted({d.name for d in pool if d.kind == kind})
    raise UnknownAdapter(
        f"no {kind} adapter named {selector!r}; known: {', '.join(names)} (or module:DESCRIPTOR)"
    )
