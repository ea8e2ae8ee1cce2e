"""An OpenAI-compatible model server for `nightshift bench startup --model-server`.

The scripted model answers inside the worker, so it never shows what a real provider costs a
prompt before its first request leaves: building an SDK client, its connection pool, the
request's encoding. This server answers `POST /v1/chat/completions` (streamed, as Nightshift
asks) with "Nothing to change." and notes when each request arrived, keyed by the prompt's
text, so the bench times prompt → first request as the provider would see it.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWER = "Nothing to change."


class ModelServer:
    """Runs on 127.0.0.1 in a thread; `arrivals[prompt]` is the first request's wall time."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.requests = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                arrived = time.time()
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                server.arrived(body, arrived)
                if not self.path.endswith("/chat/completions"):
                    self.send_error(404, "only /v1/chat/completions is served")
                    return
                self._answer(body)

            def _answer(self, body: dict[str, Any]) -> None:
                model = str(body.get("model") or "bench")
                base = {"id": "bench", "created": int(time.time()), "model": model}
                usage = {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
                if not body.get("stream"):
                    message = {"role": "assistant", "content": ANSWER}
                    choice = {"index": 0, "message": message, "finish_reason": "stop"}
                    data = json.dumps(
                        {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
                    ).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                chunk = {**base, "object": "chat.completion.chunk"}
                events = [
                    {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
                    {**chunk, "choices": [{"index": 0, "delta": {"content": ANSWER}}]},
                    {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                    {**chunk, "choices": [], "usage": usage},
                ]
                text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                raw = text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def arrived(self, body: dict[str, Any], at: float) -> None:
        """Note the first request of each prompt (its newest user message's text)."""
        users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
        content = users[-1].get("content") if users else ""
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        with self._lock:
            self.requests += 1
            self.arrivals.setdefault(str(content), at)

    def first_request(self, prompt: str) -> float | None:
        """When the first request carrying `prompt` arrived (wall time), if one did."""
        with self._lock:
            return next((t for text, t in self.arrivals.items() if prompt in text), None)

    def __enter__(self) -> ModelServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
