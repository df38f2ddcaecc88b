"""Reference runtime for PURISTA-style message-driven services."""

__version__ = "0.1.0"
