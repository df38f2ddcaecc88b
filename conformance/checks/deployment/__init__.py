"""Checks: deployment."""
