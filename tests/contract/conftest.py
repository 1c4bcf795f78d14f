"""Fixtures for the contract tests: a real anvil node per test (see tests/fixtures/anvil.py)."""

from tests.fixtures.anvil import anvil, anvil_bin, anvil_w3  # noqa: F401
