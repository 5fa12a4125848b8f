"""LangGraph's own server runs the graph: ``langgraph dev`` from graphs/, driven by
``langgraph_sdk`` as a user (or Studio) does, on the embedded local model.

Starts ``langgraph dev --no-browser --no-reload`` on a free loopback port (its in-memory
runtime, from the ``server`` extra), waits for ``GET /ok``, finds the ``gradsum``
assistant, checks its context schema (every knob, with its description), runs a tiny
optimization on a thread with the settings passed as the run's context, streams the
custom progress events, and reads the final state back. A few minutes on 2 cores.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

GRAPHS = Path(__file__).resolve().parents[2] / "graphs"
MAX_CALLS = 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def langgraph_server(local_base_url: str, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[str]:
    pytest.importorskip("langgraph_sdk", reason="the server extra is not installed "
                        "(pip install -e '.[server]'; make test-integration installs it)")
    pytest.importorskip("langgraph_api", reason="the server extra is not installed "
                        "(langgraph-cli[inmem]; make test-integration installs it)")
    cli = Path(sys.executable).with_name("langgraph")
    assert cli.exists(), f"no langgraph CLI next to {sys.executable}"
    port = _free_port()
    log = tmp_path_factory.mktemp("langgraph-dev") / "server.log"
    env = {**os.environ,
           "GRADSUM_LOCAL_BASE_URL": local_base_url,  # the model "local" of the context
           "GRADSUM_LOCAL_MAX_TOKENS": "128",  # short replies: this is a smoke test
           "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LANGSMITH_TRACING": "false"}
    for var in ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY", "LANGCHAIN_TRACING_V2"):
        env.pop(var, None)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(cli), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1",
             "--port", str(port)], cwd=GRAPHS, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"langgraph dev exited ({proc.returncode}):\n"
                            f"{log.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/ok", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("langgraph dev did not answer /ok in 120 s:\n"
                            f"{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_the_server_runs_an_optimization_streams_progress_and_keeps_the_state(
        langgraph_server: str) -> None:
    from langgraph_sdk import get_sync_client

    from langchain_gradsum import GradSumOptimizer

    client = get_sync_client(url=langgraph_server, api_key=None)
    [assistant] = client.assistants.search(graph_id="gradsum")
    assistant_id = assistant["assistant_id"]

    # Every knob of GradSumOptimizer is in the assistant's context schema, described.
    import inspect

    context_schema = client.assistants.get_schemas(assistant_id)["context_schema"]
    props = context_schema["properties"]
    for knob in inspect.signature(GradSumOptimizer).parameters:
        assert props.get(knob, {}).get("description"), knob

    rows = [{"inputs": {"n": n}, "outputs": {"answer": a}}
            for n, a in (("4", "Yes"), ("7", "No"), ("10", "Yes"))]
    context = {"model": "local", "evaluators": ["exact_match"],
               "task_description": "Say whether the number is even. The reply must be "
                                   "exactly Yes or No.",
               "beam_width": 1, "candidates_per_prompt": 1, "max_iterations": 1,
               "minibatch_size": 2, "max_gradients_per_prompt": 1, "screen_size": 1,
               "max_llm_calls": MAX_CALLS, "max_concurrency": 2, "retry_backoff": 0.5}
    thread = client.threads.create()
    events, modes = [], set()
    started = time.monotonic()
    for part in client.runs.stream(
            thread["thread_id"], assistant_id,
            input={"prompt": "Is {n} an even number?", "train": rows[:2], "val": rows[2:]},
            context=context, stream_mode=["custom", "values"]):
        modes.add(part.event)
        if part.event == "custom":
            events.append(part.data)
        assert part.event != "error", part.data
    elapsed = time.monotonic() - started
    print(f"\nserver run: {elapsed:.0f} s, events: {[e.get('event') for e in events]}")

    kinds = [e.get("event") for e in events]
    assert kinds[0] == "iteration" and "best" in kinds and "finalize" in kinds
    assert {"custom", "values"} <= modes

    state = client.threads.get_state(thread["thread_id"])["values"]
    best = state["candidates"][state["best_id"]]
    calls = sum(u["calls"] for u in state["usage"].values())
    print(f"best {state['best_id']} val {best['val_score']} (initial "
          f"{state['candidates']['c0']['val_score']}), {calls} calls, "
          f"stop {state['stop_reason']}: {best['template']!r}")
    assert state["stop_reason"]
    assert "{n}" in best["template"]
    assert best["val_score"] is not None
    assert best["val_score"] >= state["candidates"]["c0"]["val_score"]
    assert 0 < calls <= MAX_CALLS
    assert events[-1]["event"] == "best" and events[-1]["candidate"] == state["best_id"]
