"""Fixtures of the operator tests; the helpers live in mockapi.py."""

from .mockapi import cluster  # noqa: F401  (fixture)
