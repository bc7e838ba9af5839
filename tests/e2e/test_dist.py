"""The one-file build of `make dist`, run as on a fresh VM: the README walkthrough against it.

The executable runs from an empty directory, with a fresh HOME, no virtual environment on
PATH (only the executable and /usr/bin:/bin), the proxy and package-index variables
pointing at a closed local port, and, where the kernel allows it (root in CI), in a
network namespace of its own whose only interface is the loopback: no network at all
beyond 127.0.0.1. The server and the walkthrough (its `playerpulse` CLI calls too) run
inside it, driven by a small bash script; the values are checked here.

Marked `dist`: `make test-dist` (CI) builds the executable if it is missing or older than
the sources, then runs this test; `make test` leaves it out.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import shutil
import subprocess
from pathlib import Path

import psutil
import pytest

from app.embedded.process import free_port
from tests.e2e.test_walkthrough import check_walkthrough_output, walkthrough_script
from tests.support import ROOT

# Building the executable (when run without `make test-dist`) takes minutes.
pytestmark = [pytest.mark.dist, pytest.mark.timeout(1800)]

PROXY_VARIABLES = (
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
)
NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection fails at once

DRIVER = r"""
set -uo pipefail
if [[ -n "${OWN_NETNS:-}" ]]; then ip link set lo up; fi
cd "$SERVE_DIR"
started=$(date +%s.%N)
playerpulse serve --port "$PORT" >"$SERVE_LOG" 2>&1 &
server=$!
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
  if ! kill -0 "$server" 2>/dev/null; then echo "serve exited before ready" >&2; exit 97; fi
  if (( $(date +%s) - ${started%.*} > 300 )); then echo "not ready in 300 s" >&2; exit 98; fi
  sleep 0.2
done
echo "ready_s=$(echo "$(date +%s.%N) - $started" | bc)" >"$FACTS"
echo "workers=$(pgrep -fc -- "$(readlink -f "$(command -v playerpulse)") worker")" >>"$FACTS"
(cd "$CLIENT_DIR" && bash -euo pipefail -c "$WALKTHROUGH") >"$WALK_OUT" 2>"$WALK_ERR"
echo "walkthrough=$?" >>"$FACTS"
kill -TERM "$server"
wait "$server"
echo "serve_exit=$?" >>"$FACTS"
"""


def _newest_source_mtime() -> float:
    paths = [ROOT / "requirements.lock", ROOT / "pyproject.toml", ROOT / "scripts/build-dist.sh"]
    for folder in ("app", "packaging"):
        paths += [
            p for p in (ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts
        ]
    return max(p.stat().st_mtime for p in paths)


@pytest.fixture(scope="module")
def artifact() -> Path:
    """The executable of `make dist`, built here if missing or older than the sources."""
    version = importlib.metadata.version("playerpulse")
    path = ROOT / "dist" / f"playerpulse-{version}-linux-x86_64"
    if not path.exists() or path.stat().st_mtime < _newest_source_mtime():
        subprocess.run(["make", "dist"], cwd=ROOT, check=True, timeout=1800)
    return path


def _own_netns_works() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--net", "ip", "link", "set", "lo", "up"], capture_output=True, check=False
    )
    return probe.returncode == 0


def _leftovers(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        with contextlib.suppress(psutil.Error):
            if marker in " ".join(proc.info["cmdline"] or []) or marker in str(
                (proc.info["environ"] or {}).get("PLAYERPULSE_DATA_DIR", "")
            ):
                found.append(proc)
    return found


def test_the_executable_serves_the_walkthrough_offline_from_an_empty_dir(
    artifact: Path, tmp_path: Path
) -> None:
    home, bindir, serve_dir, client_dir = (tmp_path / d for d in ("home", "bin", "run", "client"))
    for folder in (home, bindir, serve_dir, client_dir, tmp_path / "tmp"):
        folder.mkdir()
    (bindir / "playerpulse").symlink_to(artifact)
    # The walkthrough reads the example model and manifest from its working directory.
    shutil.copytree(ROOT / "examples", client_dir / "examples")
    port = free_port()
    script = walkthrough_script()
    assert "export PP=http://127.0.0.1:8000" in script
    script = script.replace("export PP=http://127.0.0.1:8000", f"export PP=http://127.0.0.1:{port}")
    script = script.replace("source .venv/bin/activate", ":")
    own_netns = _own_netns_works()
    data_dir = serve_dir / "var"
    env = {
        "HOME": str(home),
        "PATH": f"{bindir}:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "TMPDIR": str(tmp_path / "tmp"),
        "PLAYERPULSE_DATA_DIR": str(data_dir),
        "PLAYERPULSE_LOG_FORMAT": "json",
        "PLAYERPULSE_LAKE_FLUSH_S": "1",
        "PLAYERPULSE_WORKERS": "2",
        **dict.fromkeys(
            ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"), NOWHERE
        ),
        "ALL_PROXY": NOWHERE,
        "no_proxy": "127.0.0.1,localhost",
        "NO_PROXY": "127.0.0.1,localhost",
        "PIP_INDEX_URL": f"{NOWHERE}/simple",
        "UV_INDEX_URL": f"{NOWHERE}/simple",
        "JAVA_TOOL_OPTIONS": "-Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort=9 "
        "-Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort=9",
        "OWN_NETNS": "1" if own_netns else "",
        "SERVE_DIR": str(serve_dir),
        "CLIENT_DIR": str(client_dir),
        "PORT": str(port),
        "SERVE_LOG": str(tmp_path / "serve.log"),
        "FACTS": str(tmp_path / "facts"),
        "WALK_OUT": str(tmp_path / "walkthrough.out"),
        "WALK_ERR": str(tmp_path / "walkthrough.err"),
        "WALKTHROUGH": script,
    }
    command = ["bash", "-c", DRIVER]
    if own_netns:
        command = ["unshare", "--net", *command]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    full_log = (tmp_path / "serve.log").read_text(errors="replace")
    serve_log = full_log[-6000:]
    assert result.returncode == 0, f"{result.stderr}\n{serve_log}"
    facts = dict(line.split("=", 1) for line in (tmp_path / "facts").read_text().splitlines())
    walk_err = (tmp_path / "walkthrough.err").read_text()
    assert facts["walkthrough"] == "0", f"{walk_err}\n{serve_log}"
    check_walkthrough_output((tmp_path / "walkthrough.out").read_text())
    assert int(facts["workers"]) >= 2, serve_log  # re-invoked as `playerpulse worker`
    assert facts["serve_exit"] == "0", serve_log
    assert '"embedded kafka ready"' in full_log
    assert "resolving the Apache Kafka jars" not in full_log  # they are inside the file
    print(f"ready after {float(facts['ready_s']):.1f} s (own network namespace: {own_netns})")
    # Stopped cleanly: nothing it started is left (PostgreSQL, Kafka, workers).
    assert _leftovers(str(data_dir)) == []
    assert not list(home.rglob("*.jar"))  # nothing fetched into HOME: the jars are inside
