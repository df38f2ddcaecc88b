"""Checks: faults."""
