"""Driving wrk (Debian package) from the benchmarks, its summary read back as JSON.

``run`` appends a ``done`` that reports wrk's own counters (``failed`` = socket errors +
answers with a status of 400 or more). A script with its own ``done`` (one that counts
exact statuses in ``response``, say) goes through ``run_script``, which returns whatever
that ``done`` printed on its ``JSON {...}`` line.
"""

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


def run_script(
    url: str, script: str, *, seconds: float, connections: int, threads: int = 1
) -> dict[str, Any]:
    """Run wrk with a complete Lua ``script``; the JSON its ``done`` printed."""
    work = Path(tempfile.mkdtemp())
    try:
        path = work / "load.lua"
        path.write_text(script)
        out = subprocess.run(
            [
                "wrk",
                "-t",
                str(threads),
                "-c",
                str(connections),
                "-d",
                f"{max(1, round(seconds))}s",
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
    line = next((ln for ln in out.splitlines() if ln.startswith("JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no JSON summary:\n{out}")
    result: dict[str, Any] = json.loads(line[5:])
    return result


def run(
    url: str, script: str, *, seconds: int, connections: int, threads: int = 1
) -> dict[str, Any]:
    """Run wrk with a Lua ``script`` (requests); requests/s, failures and latency (ms)."""
    result = run_script(
        url, script + "\n" + _DONE, seconds=seconds, connections=connections, threads=threads
    )
    return {
        "requests_s": result["requests"] / result["seconds"],
        "failed": result["errors"] + result["non2xx"],
        "p50": result["p50"],
        "p99": result["p99"],
        "tool": "wrk",
    }
