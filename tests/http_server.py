"""A real HTTP server on 127.0.0.1 that serves files and injects faults on request.

`server.faults` is a list consumed one entry per request: "ok", "503", "404", "reset" (half the
body then a TCP reset), "truncate" (half the body, then a clean close), "flip" (bytes altered),
"stall" (no answer for `stall_seconds`). When the list is empty every request is served normally.
Range requests are honoured unless `server.ranges` is False.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(BaseHTTPRequestHandler):
    server: "FaultyServer"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server
        fault = srv.faults.pop(0) if srv.faults else "ok"
        srv.requests.append({"path": self.path, "range": self.headers.get("Range"), "fault": fault})
        file = srv.root / self.path.split("?")[0].lstrip("/")
        if fault == "503":
            return self._status(503)
        if fault == "404" or not file.is_file():
            return self._status(404)
        if fault == "stall":
            time.sleep(srv.stall_seconds)
            return self._status(503)
        body = file.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.ranges and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
            if start >= len(body):
                return self._status(416)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        srv.requests[-1]["served_from"] = start
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "bytes" if srv.ranges else "none")
        self.end_headers()
        if fault == "flip":
            payload = bytes(b ^ 0xFF if i % 997 == 0 else b for i, b in enumerate(payload))
        if fault in ("reset", "truncate"):
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            time.sleep(0.3)  # let the first half arrive, as on a real link that breaks later
            if fault == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        self.wfile.write(payload)

    def _status(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


class FaultyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = Path(root)
        self.faults: list[str] = []
        self.requests: list[dict] = []
        self.ranges = True
        self.stall_seconds = 3.0
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"

    def __enter__(self) -> "FaultyServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
