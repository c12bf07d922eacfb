"""Small local HTTP stand-ins for an Ollama server and an OpenAI-compatible server, for tests only.

They speak just enough of each API for the real clients (``ChatOllama``, the openai backend's client) to talk to
them: Ollama's ``/api/chat`` (streamed NDJSON or one JSON), ``/api/version`` and ``/api/tags``; OpenAI's
``/v1/chat/completions`` and ``/v1/models``. A structured request gets a JSON object that fills every string field
of the requested schema with the field's name and the last user message, so a test can tell which input an answer
belongs to. ``fail_after`` makes a server fail every request after that many answers (``mode``: ``"500"`` answers
with a server error, ``"down"`` closes the listening socket so new connections are refused); ``fail_first`` answers
the first that many requests with a 500 and then recovers (a transient failure); ``reject`` refuses (400) every
request that mentions that text.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SAID = {
    "request": "Could you explain {user} to me in a few plain sentences?",
    "rejected": "Sure, here is everything about {user} without a second thought.",
    "critique": "The first answer to {user} ignored P1 and gave no reason at all.",
    "chosen": "I choose to help with {user} carefully, because P1 asks me to.",
}


def said(name: str, user: str) -> str:
    """What a stand-in writes in string field ``name`` for the user message ``user``: plain words that name it,
    different in each field (so the meaning checks read them as real answers). A long message (a whole prompt) is
    named by its digest, so the answer does not write the prompt back."""
    import hashlib

    if len(user) > 60:
        user = "message " + hashlib.sha256(user.encode()).hexdigest()[:8]
    return SAID.get(name, "This is the {name} I would write for {user}").format(name=name, user=user)


def fill(schema: dict[str, Any] | None, user: str, parrot: bool = False) -> str:
    """A JSON answer for ``schema`` (plain text when there is none) that names the user message. ``parrot``: a
    well-formed but meaningless answer instead, every string its field's own name."""
    if not schema:
        from fakes import plain_reply

        return plain_reply(user)
    out: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        if "enum" in prop:
            out[name] = prop["enum"][0]
        elif prop.get("type") == "string":
            out[name] = (name if parrot else said(name, user))[: prop.get("maxLength", 200)]
        elif prop.get("type") in ("integer", "number"):
            out[name] = 1
        elif prop.get("type") == "boolean":
            out[name] = True
    return json.dumps(out)


class StandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        kind: str,
        *,
        model: str,
        delay: float = 0.0,
        fail_after: int | None = None,
        mode: str = "500",
        reject: str | None = None,
        parrot: bool = False,
        fail_first: int = 0,
    ):
        super().__init__(("127.0.0.1", 0), OllamaHandler if kind == "ollama" else OpenAIHandler)
        self.kind, self.model, self.delay = kind, model, delay
        self.fail_after, self.mode, self.fail_first = fail_after, mode, fail_first
        self.reject = reject  # a request with a message containing this text is refused with 400
        self.parrot = parrot  # structured answers are well formed and meaningless: each string is its field's name
        self.lock = threading.Lock()
        self.answered: list[str] = []  # the user message of every request answered with 200
        self.failed = 0
        self.requests: list[dict[str, Any]] = []  # every chat request body
        self.headers_seen: list[dict[str, str]] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        base = f"http://127.0.0.1:{self.server_port}"
        return base if self.kind == "ollama" else base + "/v1"

    def __enter__(self) -> StandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.shutdown()
        self.server_close()

    def admit(self) -> bool:
        """Count one chat request; False when it must fail."""
        with self.lock:
            if self.failed < self.fail_first:
                self.failed += 1
                return False
            if self.fail_after is not None and len(self.answered) >= self.fail_after:
                self.failed += 1
                if self.mode == "down":
                    threading.Thread(target=self.stop, daemon=True).start()
                return False
            return True


class _Handler(BaseHTTPRequestHandler):
    server: StandIn

    def log_message(self, *args: Any) -> None:
        pass

    def reply(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> dict[str, Any]:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def chat(self, body: dict[str, Any]) -> str | None:
        """The last user message of a chat request, or None after answering it with a failure."""
        srv = self.server
        with srv.lock:
            srv.requests.append(body)
            srv.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
        if srv.delay:
            time.sleep(srv.delay)
        if srv.reject and any(srv.reject in str(m.get("content", "")) for m in body.get("messages", [])):
            self.reply(400, {"error": {"message": "this request is refused on purpose"}})
            return None
        if not srv.admit():
            if srv.mode == "down":
                self.close_connection = True
                self.connection.close()
            else:
                self.reply(500, {"error": "the stand-in is failing on purpose"})
            return None
        user = next((m.get("content", "") for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
        with srv.lock:
            srv.answered.append(user)
        return user


class OllamaHandler(_Handler):
    def do_GET(self) -> None:
        body = {
            "/api/version": {"version": "0.9.0"},
            "/api/tags": {"models": [{"name": m if ":" in (m := self.server.model) else f"{m}:latest"}]},
        }.get(self.path)
        self.reply(200 if body else 404, body or {"error": "not found"})

    def do_POST(self) -> None:
        if self.path != "/api/chat":
            return self.reply(404, {"error": "not found"})
        body = self.body()
        user = self.chat(body)
        if user is None:
            return None
        fmt = body.get("format")
        text = fill(fmt if isinstance(fmt, dict) else None, user, self.server.parrot)
        base = {"model": body.get("model"), "created_at": "2025-01-01T00:00:00Z"}
        final = {**base, "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop"}
        final.update(prompt_eval_count=len(user), eval_count=len(text))
        if body.get("stream", True):
            chunk = {**base, "message": {"role": "assistant", "content": text}, "done": False}
            data = (json.dumps(chunk) + "\n" + json.dumps(final) + "\n").encode()
            return self.reply(200, data, "application/x-ndjson")
        return self.reply(200, {**final, "message": {"role": "assistant", "content": text}})


class OpenAIHandler(_Handler):
    def do_GET(self) -> None:
        if self.path == "/v1/models":
            return self.reply(200, {"object": "list", "data": [{"id": self.server.model, "object": "model"}]})
        return self.reply(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        if self.path != "/v1/chat/completions":
            return self.reply(404, {"error": {"message": "not found"}})
        body = self.body()
        if self.server.model == "needs-key" and self.headers.get("Authorization") != "Bearer right-key":
            return self.reply(401, {"error": {"message": "invalid key", "type": "auth"}})
        if body.get("model") != self.server.model and self.server.model != "needs-key":
            return self.reply(404, {"error": {"message": f"The model {body.get('model')} does not exist."}})
        user = self.chat(body)
        if user is None:
            return None
        rf = body.get("response_format") or {}
        schema = rf.get("json_schema", {}).get("schema") if rf.get("type") == "json_schema" else None
        text = fill(schema, user, self.server.parrot)
        return self.reply(
            200,
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
            },
        )
