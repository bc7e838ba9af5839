"""A real webhook receiver on 127.0.0.1 for tests: keeps what it is sent, verifies the
Standard Webhooks signature, and can be told to fail for a while."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook


class Receiver:
    """Started on a free port; ``url`` to give the service; ``stop()`` when done."""

    def __init__(self) -> None:
        self.secret: str | None = None
        self.failing = False
        self.received: list[dict[str, Any]] = []
        """Verified deliveries in arrival order: {"id", "body", "headers"}."""
        self.refused = 0
        self.bad_signatures = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    if receiver.failing:
                        receiver.refused += 1
                        self.send_response(503)
                        self.end_headers()
                        return
                    try:
                        assert receiver.secret is not None
                        Webhook(receiver.secret).verify(raw, headers)
                    except Exception:
                        receiver.bad_signatures += 1
                        self.send_response(400)
                        self.end_headers()
                        return
                    receiver.received.append(
                        {"id": headers["webhook-id"], "body": json.loads(raw), "headers": headers}
                    )
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.received)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
