"""Shared pytest configuration: server fixtures live in tests/fixtures/, one module per kind of server."""

pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.triton",
    "tests.fixtures.services",
]
