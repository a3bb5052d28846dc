"""The ReAct example's tool service: GET /lookup?q=... → {"observation": ...} (stdlib HTTP server).

Counts calls so tests can check that the tool really ran; ``FAIL_EVERY`` makes every n-th call
answer HTTP 503 to exercise retries. Run it standalone with ``python react_server.py PORT``.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Lookup(BaseHTTPRequestHandler):
    calls = 0
    fail_every = 0
    lock = threading.Lock()

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        url = urlparse(self.path)
        if url.path != "/lookup":
            self.send_error(404)
            return
        with Lookup.lock:
            Lookup.calls += 1
            n = Lookup.calls
        if Lookup.fail_every and n % Lookup.fail_every == 0:
            self.send_error(503, "busy")
            return
        q = parse_qs(url.query).get("q", [""])[0]
        body = json.dumps({"observation": f"obs:{len(q)}"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def start(port: int = 0) -> ThreadingHTTPServer:
    """Start the service on 127.0.0.1 in a daemon thread; ``server.server_port`` is its port."""
    server = ThreadingHTTPServer(("127.0.0.1", port), Lookup)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__":
    srv = start(int(sys.argv[1]) if len(sys.argv) > 1 else 8765)
    print(f"lookup service on http://127.0.0.1:{srv.server_port}")
    threading.Event().wait()
