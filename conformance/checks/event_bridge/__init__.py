"""Checks: event_bridge."""
