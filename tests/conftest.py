"""Shared fixtures. Tests are marked by folder: unit, integration, e2e; and ``kafka`` for
those `make test-kafka` reruns against a separate Apache Kafka (every integration test,
and the end-to-end tests whose outcome depends on the broker: durability, back-pressure,
exactly-once folding, model change notices between servers)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.s3 import S3Server, SeaweedS3, external_server
from tests.support import ServeProcess

# CI draws the same property-test examples every run, so a failure there repeats on a
# rerun; elsewhere each run explores new ones (failures are kept in .hypothesis/).
settings.register_profile("ci", derandomize=True, database=None)
settings.load_profile(os.environ.get("PLAYERPULSE_HYPOTHESIS_PROFILE", "default"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for kind in ("unit", "integration", "e2e"):
            if f"/tests/{kind}/" in str(item.path):
                item.add_marker(getattr(pytest.mark, kind))
        if "/tests/integration/" in str(item.path) and item.get_closest_marker("s3") is None:
            item.add_marker(pytest.mark.kafka)  # every integration test talks to the broker


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    """A running `playerpulse serve` in a fresh data dir; stopped (and checked) afterwards."""
    server = ServeProcess(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server for the session (SeaweedFS unless PLAYERPULSE_TEST_S3_ENDPOINT)."""
    external = external_server()
    if external is not None:
        yield external
        return
    server = SeaweedS3(tmp_path_factory.mktemp("s3"))
    try:
        yield server.start()
    finally:
        server.stop()
