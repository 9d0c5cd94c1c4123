"""Test suite; a package so tests can share helpers (``from tests.strategies import ...``)."""
