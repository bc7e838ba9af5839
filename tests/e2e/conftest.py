"""End-to-end fixtures: one real server shared by a module's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import ServeProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A running `playerpulse serve`, shared by the tests of one module."""
    process = ServeProcess(tmp_path_factory.mktemp("serve")).start()
    yield process
    assert process.stop() == 0, process.log()
