"""Checks: robustness (hostile input, corrupted records, bursts)."""
