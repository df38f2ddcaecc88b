"""The conformance suite: one contract, every adapter, a report people and CI can read."""

from .adapters import AdapterContext

__all__ = ["AdapterContext"]
