"""The README's walkthrough, run verbatim against a real `playerpulse serve`."""

from __future__ import annotations

import json
import re
import subprocess

from tests.support import ROOT, ServeProcess


def walkthrough_script() -> str:
    """The bash between the README's walkthrough markers."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- walkthrough -->", 1)[1].split("<!-- /walkthrough -->", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert blocks, "the README has no walkthrough block"
    return "\n".join(blocks)


def test_readme_walkthrough_works_verbatim(serve: ServeProcess) -> None:
    script = walkthrough_script()
    # The only change: where the server is. The venv's bin is already on PATH.
    assert "export PP=http://127.0.0.1:8000" in script
    script = script.replace("export PP=http://127.0.0.1:8000", f"export PP={serve.url}")
    script = script.replace("source .venv/bin/activate", ":")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=serve.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{serve.log()}"
    check_walkthrough_output(result.stdout)


def check_walkthrough_output(stdout: str) -> None:
    """What the walkthrough prints, checked value by value."""
    lines = stdout.splitlines()
    accepted, profile, upload, prediction = (json.loads(line) for line in lines[:4])

    token = accepted.pop("token")
    assert accepted == {"accepted": 4, "rejected": []}
    assert re.fullmatch(r"\d+\.\d+", token), token  # one partition: the player's
    assert profile["player_id"] == "p-42"
    assert profile["features"] == {
        "purchases_7d": 2,
        "spend_total": 44.5,
        "sessions_7d": 1,
        "last_level": 7,
    }
    assert profile["events_applied"] == 4
    assert upload == {"name": "offers", "version": 1}
    assert prediction["model"] == "offers"
    assert prediction["version"] == 1
    assert prediction["outputs"]["output_label"] == 2
    probabilities = prediction["outputs"]["output_probability"]
    assert set(probabilities) == {"0", "1", "2"}
    assert abs(sum(probabilities.values()) - 1.0) < 1e-6
    table = "\n".join(lines[4:])
    # Step 7: the segment, then its first transition as a server-sent event.
    segment = json.loads(next(line for line in lines[4:] if line.startswith('{"name"')))
    assert segment["name"] == "big_spenders"
    assert segment["source"] == "api"
    event = dict(
        line.strip().split(": ", 1) for line in lines if line.startswith(("event:", "data:", "id:"))
    )
    assert event["event"] == "segment.entered"
    change = json.loads(event["data"])
    assert change["type"] == "segment.entered"
    assert change["data"]["player_id"] == "p-42"
    assert change["data"]["segment"] == "big_spenders"
    assert change["data"]["features"] == {"sessions_7d": 1, "spend_total": 44.5}
    assert event["id"] == str(change["id"])
    for event_type, count in [("level_complete", 1), ("purchase", 2), ("session_start", 1)]:
        assert re.search(rf"{event_type}\s*┃?│?\s*{count}\b", table), table
