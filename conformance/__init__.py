"""The conformance suite: one contract, every adapter, a report people and CI can read."""

from conformance.adapters import AdapterContext

__all__ = ["AdapterContext"]
