"""Checks: queue_bridge."""
