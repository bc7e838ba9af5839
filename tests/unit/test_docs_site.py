"""The documentation site builds with no warning, and its generated reference pages hold
every setting and every command."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

import click
import pytest

from app.cli import main
from app.settings import Settings, variable
from tests.support import BIN, ROOT


def _commands(group: click.Group, prefix: str) -> list[str]:
    found = []
    for name, command in group.commands.items():
        if command.hidden:
            continue
        path = f"{prefix} {name}"
        found.append(path)
        if isinstance(command, click.Group):
            found.extend(_commands(command, path))
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    return out


def test_configuration_page_lists_every_setting(site: Path) -> None:
    page = (site / "reference" / "configuration" / "index.html").read_text()
    names = [variable(f.name) for f in dataclasses.fields(Settings)]
    assert len(names) > 40
    missing = [name for name in names if f"<code>{name}</code>" not in page]
    assert not missing, missing


def test_command_line_page_lists_every_command(site: Path) -> None:
    page = (site / "reference" / "cli" / "index.html").read_text()
    commands = _commands(main, "playerpulse")
    assert "playerpulse keys create" in commands
    missing = [command for command in commands if command not in page]
    assert not missing, missing


def test_http_api_page_renders_every_operation(site: Path) -> None:
    page = (site / "reference" / "http-api" / "index.html").read_text()
    document = json.loads((site / "reference" / "openapi.json").read_text())
    operations = [(method, path) for path, item in document["paths"].items() for method in item]
    assert len(operations) > 30
    for method, path in operations:
        # Headings read "METHOD path", path parameters in their own span.
        heading = re.sub(r"\{(\w+)\}", r'<span class="route-param">{\1}</span>', path)
        assert f'<span class="http-{method}">{method.upper()}</span> {heading}<' in page, (
            method,
            path,
        )
