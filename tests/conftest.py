"""Shared pytest configuration: server fixtures live in tests/fixtures/, one module per kind of server."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.fixtures.services",  # first: tests.fixtures.triton imports it
    "tests.fixtures.models",
    "tests.fixtures.triton",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.gpu`` tests are skipped (with the reason shown) where torch sees no CUDA device."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    import torch  # only when a gpu test was collected: keeps collection of other tests light

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU: torch.cuda.is_available() is False")
    for item in gpu_items:
        item.add_marker(skip)
