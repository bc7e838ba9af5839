"""Shared fixtures. Tests are marked by folder: unit, integration, e2e."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ServeProcess


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for kind in ("unit", "integration", "e2e"):
            if f"/tests/{kind}/" in str(item.path):
                item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    """A running `playerpulse serve` in a fresh data dir; stopped (and checked) afterwards."""
    server = ServeProcess(tmp_path).start()
    yield server
    server.stop()
