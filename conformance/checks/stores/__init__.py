"""Checks: stores."""
