"""Bootstraps for the four deployment patterns; configuration comes from the environment."""

from .config import DeploymentConfig
from .factory import make_event_bridge, make_queue_bridge, make_stores

__all__ = ["DeploymentConfig", "make_event_bridge", "make_queue_bridge", "make_stores"]
