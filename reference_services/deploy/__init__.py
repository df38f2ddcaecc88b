"""Bootstraps for the four deployment patterns; configuration comes from the environment."""

from reference_services.deploy.config import DeploymentConfig
from reference_services.deploy.factory import make_event_bridge, make_queue_bridge, make_stores

__all__ = ["DeploymentConfig", "make_event_bridge", "make_queue_bridge", "make_stores"]
