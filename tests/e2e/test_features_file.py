"""A features file with an error is refused at start, naming the feature and the problem."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support import PLAYERPULSE, ServeProcess


def test_serve_refuses_a_bad_features_file(tmp_path: Path) -> None:
    bad = tmp_path / "features.toml"
    bad.write_text('[features.spend]\nevent = "purchase"\nagg = "sum"\n')
    server = ServeProcess(tmp_path, {"PLAYERPULSE_FEATURES": str(bad)})
    result = subprocess.run(
        [PLAYERPULSE, "serve", "--port", str(server.port)],
        env=server.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "feature 'spend'" in result.stderr
    assert "needs a 'field'" in result.stderr
    assert not (tmp_path / "var" / "postgres").exists()  # nothing was started
