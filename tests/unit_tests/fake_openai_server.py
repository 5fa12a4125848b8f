"""A loopback OpenAI-compatible chat server that counts requests and injects faults.

Imported by the fault tests, not collected. One thread per request
(``ThreadingHTTPServer``); ``POST /v1/chat/completions`` answers from a
``respond(text, role)`` script like `ScriptedChatModel`'s (a dict answers a
tool call, for the judge's structured output), unless the fault plan says
otherwise for that request:

- ``"429"`` / ``"500"``: an error status with an OpenAI-style JSON error body;
- ``"timeout"``: hold the request longer than the client waits;
- ``"drop"``: close the connection without a reply;
- ``"malformed"``: status 200 with a body that is not JSON;
- ``"empty"``: status 200, valid JSON with an empty ``choices`` list.

Every request is counted on arrival, faults by kind, and the arrival time of each
is kept, so a test can compare the server's count with what the optimizer reports.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from langchain_gradsum.testing import role_of

FAULTS = ("429", "500", "timeout", "drop", "malformed", "empty")

Responder = Callable[[str, str], Any]
Plan = Callable[[int, str], str | None]
"""``plan(request_number, role)``: a fault kind for this request, or None to answer."""


def random_faults(rate: float, kinds: tuple[str, ...] = FAULTS, seed: int = 0) -> Plan:
    """Each request fails with probability `rate`, with a kind drawn from `kinds`."""
    rng = random.Random(seed)
    lock = threading.Lock()

    def plan(n: int, role: str) -> str | None:
        with lock:
            return rng.choice(kinds) if rng.random() < rate else None

    return plan


class FakeOpenAIServer:
    """The server; use `serving()` to run one for a test."""

    def __init__(self, respond: Responder, plan: Plan | None = None,
                 hold_s: float = 1.0) -> None:
        self.respond = respond
        self.plan = plan or (lambda n, role: None)
        self.hold_s = hold_s
        self.lock = threading.Lock()
        self.requests = 0
        self.faults: Counter[str] = Counter()
        self.by_role: Counter[str] = Counter()
        self.arrivals: list[float] = []
        self.bodies: list[dict[str, Any]] = []
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(length) or b"{}")
        text = "\n\n".join(_content(m) for m in body.get("messages", []))
        role = role_of(text)
        with self.lock:
            self.requests += 1
            n = self.requests
            self.by_role[role] += 1
            self.arrivals.append(time.monotonic())
            self.bodies.append(body)
        fault = self.plan(n, role)
        if fault is not None:
            with self.lock:
                self.faults[fault] += 1
            self._fault(handler, fault)
            return
        reply = self.respond(text, role)
        self._send(handler, 200, _completion(body, reply, text))

    def _fault(self, handler: BaseHTTPRequestHandler, kind: str) -> None:
        if kind == "429":
            self._send(handler, 429, {"error": {"message": "rate limited (injected)",
                                                "type": "rate_limit_error", "code": None}})
        elif kind == "500":
            self._send(handler, 500, {"error": {"message": "server error (injected)",
                                                "type": "server_error", "code": None}})
        elif kind == "timeout":
            time.sleep(self.hold_s)
            handler.close_connection = True
        elif kind == "drop":
            handler.close_connection = True
            handler.connection.close()
        elif kind == "malformed":
            self._send(handler, 200, b'{"id": "x", "choices": [ not json')
        elif kind == "empty":
            self._send(handler, 200, {"id": "chatcmpl-empty", "object": "chat.completion",
                                      "created": 0, "model": "fake", "choices": []})
        else:  # pragma: no cover - a typo in a test's plan
            raise AssertionError(kind)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:  # the client gave up (timed out) meanwhile
            handler.close_connection = True

    @contextmanager
    def serving(self) -> Iterator[FakeOpenAIServer]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                server.handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        try:
            yield self
        finally:
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5)


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def _completion(body: dict[str, Any], reply: Any, text: str) -> dict[str, Any]:
    message: dict[str, Any]
    if isinstance(reply, dict):  # structured output: answer the bound tool
        tools = body.get("tools") or []
        if not tools:
            raise AssertionError("a dict reply needs a bound tool (structured output)")
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": tools[0]["function"]["name"], "arguments": json.dumps(reply)}}
        ]}
        finish = "tool_calls"
    else:
        message = {"role": "assistant", "content": str(reply)}
        finish = "stop"
    prompt_tokens = len(text.split())
    completion_tokens = max(1, len(str(message.get("content") or "").split()))
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
        "model": body.get("model", "fake"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }
