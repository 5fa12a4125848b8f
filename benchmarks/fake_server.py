"""A tiny fake OpenAI-compatible chat server, to smoke-test `run.py` without a model.

    python benchmarks/fake_server.py --port 8765 &
    python benchmarks/run.py --base-url http://127.0.0.1:8765/v1 --results-dir /tmp/r ...

Replies: a tool call (judge) when tools are given; for DSPy-formatted prompts, every
output field it asks for (``[[ ## field ## ]]``); otherwise a short answer with a
number and a letter, or a rewritten prompt in <prompt> tags.
"""

from __future__ import annotations

import argparse
import http.server
import json
import re
import socketserver
import time
from typing import Any


def reply(body: dict[str, Any]) -> dict[str, Any]:
    text = "\n".join(str(m.get("content")) for m in body.get("messages", []))
    msg: dict[str, Any] = {"role": "assistant", "content": ""}
    if body.get("tools"):
        name = body["tools"][0]["function"]["name"]
        msg["tool_calls"] = [{"id": "c1", "type": "function", "function": {
            "name": name, "arguments": json.dumps({"reasoning": "ok", "score": 1.0})}}]
    elif "Your output fields are" in text:
        sysmsg = str(body["messages"][0].get("content"))
        part = sysmsg.split("Your output fields are", 1)[1].split("All interactions", 1)[0]
        fields = re.findall(r"`(\w+)`", part)
        out = []
        for f in fields:
            val = "(A)" if f == "answer" else f"Think step by step about {f}. Answer clearly."
            out.append(f"[[ ## {f} ## ]]\n{val}")
        msg["content"] = "\n\n".join(out + ["[[ ## completed ## ]]"])
    elif "Write an improved version of the prompt" in text:
        var = re.findall(r"\{(\w+)\}", text.split("<prompt>", 1)[-1])
        keep = " ".join("{" + v + "}" for v in dict.fromkeys(var)) or "{question}"
        msg["content"] = f"<prompt>Think step by step, then answer. {keep}</prompt>"
    else:
        msg["content"] = "The answer is (A). 12"
    n = len(text.split())
    return {"id": "x", "object": "chat.completion", "created": int(time.time()),
            "model": "local", "choices": [{"index": 0, "message": msg,
                                           "finish_reason": "stop"}],
            "usage": {"prompt_tokens": n, "completion_tokens": 10,
                      "total_tokens": n + 10}}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._send(200, {"object": "list", "data": [{"id": "local", "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self._send(200, reply(body))

    def _send(self, status: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8765)
    Server(("127.0.0.1", p.parse_args().port), Handler).serve_forever()
