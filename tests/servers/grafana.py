"""A local server implementing the subset of Grafana's HTTP API that deploy markers use:
``POST /api/annotations`` and ``GET /api/annotations`` (tags, from, to, limit), with
service-account token auth (``Authorization: Bearer``), answering as Grafana does."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "glsa_e2e_annotations_token"


class Grafana:
    def __init__(self, token: str) -> None:
        self.token = token
        self.annotations: list[dict[str, Any]] = []
        self.lock = threading.Lock()


@contextmanager
def running_grafana(token: str = TOKEN) -> Iterator[tuple[Grafana, str]]:
    grafana = Grafana(token)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorised(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {grafana.token}":
                return True
            self._answer(401, {"message": "Unauthorized"})
            return False

        def do_POST(self) -> None:  # noqa: N802
            if not self._authorised():
                return
            if urlsplit(self.path).path != "/api/annotations":
                self._answer(404, {"message": "Not found"})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            except ValueError:
                self._answer(400, {"message": "bad request data"})
                return
            if not isinstance(body.get("text"), str) or not body["text"]:
                self._answer(400, {"message": "Failed to save annotation: text is required"})
                return
            tags = body.get("tags") or []
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                self._answer(400, {"message": "bad request data"})
                return
            with grafana.lock:
                annotation = {
                    "id": len(grafana.annotations) + 1,
                    "time": int(body.get("time") or 0),
                    "timeEnd": int(body.get("timeEnd") or body.get("time") or 0),
                    "tags": tags,
                    "text": body["text"],
                    "dashboardUID": body.get("dashboardUID") or "",
                }
                grafana.annotations.append(annotation)
            self._answer(200, {"message": "Annotation added", "id": annotation["id"]})

        def do_GET(self) -> None:  # noqa: N802
            if not self._authorised():
                return
            url = urlsplit(self.path)
            if url.path != "/api/annotations":
                self._answer(404, {"message": "Not found"})
                return
            query = parse_qs(url.query)
            tags = query.get("tags", [])
            start, end = int(query.get("from", ["0"])[0]), int(query.get("to", [str(2**62)])[0])
            limit = int(query.get("limit", ["100"])[0])
            with grafana.lock:
                found = [a for a in grafana.annotations if set(tags) <= set(a["tags"]) and start <= a["time"] <= end]
            self._answer(200, sorted(found, key=lambda a: -a["time"])[:limit])

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield grafana, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
