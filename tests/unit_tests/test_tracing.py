"""LangSmith tracing, proven offline against a loopback capture server.

The real langsmith client (0.15: multipart ingestion, ``POST /runs/multipart``;
zstd only when the server's ``/info`` enables it, which ours does not) sends to
a threading HTTP server on 127.0.0.1. We rebuild every run from the captured
bodies and check the trace tree: one ``GradSum`` root, a run per graph node,
and exactly one ``llm`` run per LLM call the optimizer counted, each under its
node and tagged with its module and iteration. The planted API key must travel
only in the auth header, never in a body.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import threading
import zlib
from collections import Counter
from collections.abc import Iterator
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from gradsum_fakes import arithmetic
from langchain_core.tracers.langchain import LangChainTracer
from langsmith import Client
from langsmith import run_trees as ls_run_trees
from langsmith import utils as ls_utils
from typer.testing import CliRunner

from langchain_gradsum import GradSumOptimizer, local_llm, numeric_match
from langchain_gradsum.cli import app
from langchain_gradsum.testing import ScriptedChatModel

FAKE_KEY = "lsv2_fake_SECRET123"
NODES = {"generate", "evaluate", "gradient", "summarize", "edit", "finalize"}
ROLES = {"generate", "judge", "gradient", "summarize", "edit"}


# --- the capture server --------------------------------------------------------------


class CaptureServer:
    """Answers ``GET /info`` with `info` (default ``{}``); records every POST/PATCH
    (decompressed)."""

    def __init__(self, info: dict[str, Any] | None = None) -> None:
        self.info = info or {}
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int = 200, payload: Any = None) -> None:
                body = json.dumps({} if payload is None else payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                with capture._lock:
                    capture.requests.append({
                        "method": self.command,
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "raw": raw,
                        "body": _decode(raw, self.headers.get("Content-Encoding")),
                    })
                self._reply(200, {})

            def do_GET(self) -> None:  # noqa: N802
                with capture._lock:
                    capture.requests.append({"method": "GET", "path": self.path,
                                             "headers": dict(self.headers), "raw": b"",
                                             "body": b""})
                self._reply(200, capture.info if self.path.startswith("/info") else {})

            do_POST = _record  # noqa: N815
            do_PATCH = _record  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CaptureServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def writes(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["method"] in ("POST", "PATCH")]

    def runs(self) -> dict[str, dict[str, Any]]:
        """Every run, its creation merged with its updates, by id."""
        posts: dict[str, dict[str, Any]] = {}
        patches: dict[str, dict[str, Any]] = {}
        for req in self.writes:
            path = req["path"].split("?")[0].rstrip("/")
            ctype = req["headers"].get("content-type", "")
            if path.endswith("/runs/multipart"):
                for name, value in _multipart(req["body"], ctype):
                    op, run_id, *field = name.split(".")
                    target = (posts if op == "post" else patches).setdefault(run_id, {})
                    if field:
                        target[field[0]] = value
                    else:
                        target.update(value)
            elif path.endswith("/runs/batch"):
                batch = json.loads(req["body"])
                for run in batch.get("post") or []:
                    posts.setdefault(str(run["id"]), {}).update(run)
                for run in batch.get("patch") or []:
                    patches.setdefault(str(run["id"]), {}).update(run)
            elif path.endswith("/runs") and req["method"] == "POST":
                run = json.loads(req["body"])
                posts.setdefault(str(run["id"]), {}).update(run)
            elif "/runs/" in path and req["method"] == "PATCH":
                patches.setdefault(path.rsplit("/", 1)[1], {}).update(json.loads(req["body"]))
        runs = {rid: dict(r) for rid, r in posts.items()}
        for rid, r in patches.items():
            runs.setdefault(rid, {}).update(r)
        return runs


def _decode(raw: bytes, encoding: str | None) -> bytes:
    encoding = (encoding or "").lower().strip()
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    if encoding == "gzip":
        return gzip.decompress(raw)
    if encoding == "deflate":
        return zlib.decompress(raw)
    return raw


def _multipart(body: bytes, content_type: str) -> Iterator[tuple[str, Any]]:
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    assert message.is_multipart(), "runs/multipart body is not multipart"
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if part.get_content_type() == "application/json":
            yield name, json.loads(payload)
        else:
            yield name, payload


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(params=["plain"])
def langsmith_env(request: pytest.FixtureRequest) -> Iterator[CaptureServer]:
    """A capture server and the LANGSMITH_* env pointing at it, with langsmith's
    env cache and cached client reset before and after.

    ``zstd``: the server's /info turns on langsmith's zstd-compressed multipart.
    """
    info = {"instance_flags": {"zstd_compression_enabled": True}} \
        if request.param == "zstd" else {}
    with CaptureServer(info) as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv("LANGSMITH_TRACING", "true")
        mp.setenv("LANGSMITH_ENDPOINT", server.url)
        mp.setenv("LANGSMITH_API_KEY", FAKE_KEY)
        mp.setenv("LANGSMITH_PROJECT", "gradsum-tests")
        for var in ("LANGCHAIN_API_KEY", "LANGCHAIN_ENDPOINT", "LANGSMITH_RUNS_ENDPOINTS",
                    "LANGSMITH_OTEL_ENABLED", "LANGSMITH_OTEL_ONLY", "LANGSMITH_WORKSPACE_ID"):
            mp.delenv(var, raising=False)
        mp.setattr(ls_run_trees, "_CLIENT", None)
        _clear_langsmith_caches()
        try:
            yield server
        finally:
            cached = ls_run_trees._CLIENT
            if cached is not None:
                with contextlib.suppress(Exception):
                    cached.flush()
    _clear_langsmith_caches()


def _clear_langsmith_caches() -> None:
    ls_utils.get_env_var.cache_clear()
    ls_utils.get_tracer_project.cache_clear()


respond = arithmetic()


ROWS = [{"inputs": {"question": f"2+2 (#{i})"}, "outputs": {"answer": "4"}} for i in range(4)]


def _optimizer(model: ScriptedChatModel) -> GradSumOptimizer:
    return GradSumOptimizer(model, task_description="arithmetic", criteria="correct",
                            evaluators=[numeric_match], beam_width=2, candidates_per_prompt=2,
                            max_iterations=2, minibatch_size=2, max_concurrency=2)


# --- the checks ----------------------------------------------------------------------


def _ancestors(runs: dict[str, dict[str, Any]], run: dict[str, Any]) -> list[dict[str, Any]]:
    chain = []
    parent = run.get("parent_run_id")
    while parent is not None:
        assert parent in runs, f"run {run['name']} has a parent that was never sent"
        chain.append(runs[parent])
        parent = runs[parent].get("parent_run_id")
    return chain


def check_trace(server: CaptureServer, total_calls: int, model_calls: int) -> Counter[str]:
    """Every assertion on the captured trace; returns the LLM runs by role."""
    runs = server.runs()
    assert runs, "nothing was traced"
    roots = [r for r in runs.values() if not r.get("parent_run_id")]
    assert [r["name"] for r in roots] == ["GradSum"], [r["name"] for r in roots]
    root = roots[0]
    assert root["run_type"] == "chain" and root.get("end_time"), "the root run never ended"
    assert root.get("session_name") == "gradsum-tests"

    llm_runs = [r for r in runs.values() if r["run_type"] == "llm"]
    assert len(llm_runs) == total_calls == model_calls

    by_role: Counter[str] = Counter()
    for run in llm_runs:
        assert str(run["trace_id"]) == str(root["id"])
        assert str(run["dotted_order"]).split(".")[0].endswith(str(root["id"]))
        assert run.get("end_time"), "an LLM run never ended"
        meta = run["extra"]["metadata"]
        role = meta["gradsum_role"]
        assert role in ROLES
        assert isinstance(meta["iteration"], int) and meta["iteration"] >= 0
        assert "gradsum" in run["tags"] and f"gradsum:{role}" in run["tags"]
        chain = _ancestors(runs, run)
        assert chain[-1]["id"] == root["id"]
        # Its module name: the LLM run itself, or (structured output: the judge)
        # the runnable wrapping the model, is named gradsum.<role>.
        named = [r for r in [run, *chain] if r["name"].startswith("gradsum.")]
        assert named and named[0]["name"] == f"gradsum.{role}", (run["name"], role)
        # Under the run of the graph node that made the call.
        node_runs = [r for r in chain if r["name"] in NODES and r["run_type"] == "chain"]
        assert node_runs, f"{run['name']} is not under a graph node run"
        assert node_runs[0]["name"] == meta["langgraph_node"]
        assert node_runs[0]["parent_run_id"] == root["id"]
        by_role[role] += 1

    # Every graph node step is a child of the root.
    node_names = {r["name"] for r in runs.values() if r.get("parent_run_id") == root["id"]}
    assert {"generate", "evaluate", "gradient", "summarize", "edit", "finalize"} <= node_names

    # The planted key goes in the auth header only, never in a body.
    writes = server.writes
    assert writes
    for req in writes:
        assert req["headers"].get("x-api-key") == FAKE_KEY
        assert FAKE_KEY.encode() not in req["raw"]
        assert FAKE_KEY.encode() not in req["body"]
        assert b"SECRET123" not in req["body"]
    return by_role


@pytest.mark.parametrize("langsmith_env", ["plain", "zstd"], indirect=True)
def test_optimizer_run_is_one_trace(langsmith_env: CaptureServer) -> None:
    """A fresh Client from the LANGSMITH_* env, handed to the run as a tracer."""
    client = Client()
    assert client.api_url == langsmith_env.url
    tracer = LangChainTracer(client=client, project_name="gradsum-tests")
    model = ScriptedChatModel(respond=respond)
    result = _optimizer(model).optimize("Answer: {question}", ROWS, ROWS[:2],
                                        config={"callbacks": [tracer]})
    tracer.wait_for_futures()
    client.flush()
    by_role = check_trace(langsmith_env, result.total_calls, len(model.calls))
    assert dict(by_role) == {role: u["calls"] for role, u in result.usage.items()}
    assert by_role == Counter(model.calls_by_role())
    assert set(by_role) == ROLES
    assert ls_run_trees._CLIENT is None  # the tracer passed in was the only one used
    encodings = {r["headers"].get("content-encoding") for r in langsmith_env.writes}
    if langsmith_env.info:
        # zstd once the client's compression thread is up (ops queued before it
        # started go out as plain multipart): both kinds were decoded above.
        assert "zstd" in encodings
    else:
        assert encodings == {None}


def test_cli_run_traces_from_the_environment(langsmith_env: CaptureServer,
                                             monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    """`gradsum optimize` with only LANGSMITH_* set: LangChain's own tracer, and the
    CLI flushes it before exiting."""
    models: list[ScriptedChatModel] = []

    @contextlib.contextmanager
    def running(port: int | None = None) -> Iterator[str]:
        yield "http://127.0.0.1:1/v1"

    def local_model(base_url: str | None = None, **kwargs: Any) -> ScriptedChatModel:
        models.append(ScriptedChatModel(respond=respond))
        return models[-1]

    monkeypatch.setattr(local_llm, "running_local_llm", running)
    monkeypatch.setattr(local_llm, "local_chat_model", local_model)
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "optimize", "Answer: {question}", "--data", str(train), "--model", "local",
        "--criteria", "correct", "--evaluator", "numeric_match", "--beam-width", "2",
        "--max-iterations", "1", "--minibatch-size", "2", "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output + res.stderr
    assert "tracing to LangSmith" not in res.output  # -q
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    by_role = check_trace(langsmith_env, result["total_calls"], len(models[0].calls))
    assert sum(by_role.values()) == result["total_calls"]
    assert FAKE_KEY not in (out / "result.json").read_text(encoding="utf-8")
    assert FAKE_KEY not in (out / "report.html").read_text(encoding="utf-8")
