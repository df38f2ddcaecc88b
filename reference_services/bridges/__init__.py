"""Event bridges and queue bridges. Broker clients are imported lazily by each module."""

from .memory import DefaultEventBridge, MemoryHub
from .memory_queue import DefaultQueueBridge, MemoryQueueStore

__all__ = ["DefaultEventBridge", "DefaultQueueBridge", "MemoryHub", "MemoryQueueStore"]
