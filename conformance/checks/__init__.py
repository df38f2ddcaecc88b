"""Conformance checks, one package per suite and adapter kind."""
