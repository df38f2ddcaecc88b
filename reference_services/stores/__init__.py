"""State, config and secret stores. Broker clients are imported lazily by each module."""

from .memory import DefaultConfigStore, DefaultSecretStore, DefaultStateStore, MemoryKV

__all__ = ["DefaultConfigStore", "DefaultSecretStore", "DefaultStateStore", "MemoryKV"]
