"""Driving wrk (Debian package) from the benchmarks, its summary read back as JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

_DONE = (
    "done = function(summary, latency, requests)\n"
    '  io.write(string.format("JSON {\\"requests\\": %d, \\"seconds\\": %f, \\"errors\\": %d,'
    ' \\"non2xx\\": %d, \\"p50\\": %f, \\"p99\\": %f}\\n", summary.requests,'
    " summary.duration / 1e6, summary.errors.connect + summary.errors.read +"
    " summary.errors.write + summary.errors.timeout, summary.errors.status,"
    " latency:percentile(50) / 1000, latency:percentile(99) / 1000))\n"
    "end\n"
)


def available() -> bool:
    """True if wrk is installed."""
    return shutil.which("wrk") is not None


def run(
    url: str, script: str, *, seconds: int, connections: int, threads: int = 1
) -> dict[str, Any]:
    """Run wrk with a Lua ``script`` (requests); requests/s, failures and latency (ms)."""
    work = Path(tempfile.mkdtemp())
    try:
        path = work / "load.lua"
        path.write_text(script + "\n" + _DONE)
        out = subprocess.run(
            [
                "wrk",
                "-t",
                str(threads),
                "-c",
                str(connections),
                "-d",
                f"{seconds}s",
                "-s",
                str(path),
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = json.loads(next(ln for ln in out.splitlines() if ln.startswith("JSON "))[5:])
    return {
        "requests_s": result["requests"] / result["seconds"],
        "failed": result["errors"] + result["non2xx"],
        "p50": result["p50"],
        "p99": result["p99"],
        "tool": "wrk",
    }
