"""The graph's drawing (a committed snapshot), the package's exports, and the network guard."""

from __future__ import annotations

import importlib
import socket
from pathlib import Path

import pytest
from pytest_socket import SocketConnectBlockedError
from syrupy.assertion import SnapshotAssertion

import langchain_gradsum
from langchain_gradsum import build_graph, create_gradsum_graph

README = Path(__file__).resolve().parents[2] / "README.md"


def mermaid() -> str:
    return create_gradsum_graph().get_graph().draw_mermaid(with_styles=False)


def test_graph_drawing_matches_the_snapshot(snapshot: SnapshotAssertion) -> None:
    """The drawing is locked (syrupy: after a deliberate change, run pytest with
    --snapshot-update), and the README shows exactly it (`make docs` redraws it)."""
    drawn = mermaid()
    assert drawn == snapshot
    readme = README.read_text(encoding="utf-8")
    assert f"```mermaid\n{drawn}```" in readme, "README.md's drawing is stale: run `make docs`"


def test_graph_drawing_shows_the_algorithm() -> None:
    drawn = mermaid()
    lines = {line.strip().rstrip(";") for line in drawn.splitlines()}
    for node in ("generate", "evaluate", "gradient", "summarize", "edit", "finalize"):
        assert any(node in line.split() for line in lines), node
    assert {
        "__start__ --> generate",
        "generate --> evaluate",
        "evaluate -. &nbsp;prune&nbsp; .-> gradient",
        "evaluate -. &nbsp;stop&nbsp; .-> finalize",
        "evaluate -. &nbsp;more&nbsp; .-> generate",
        "gradient --> summarize",
        "summarize --> edit",
        "edit --> generate",
        "finalize --> __end__",
    } <= lines


def test_graph_structure() -> None:
    graph = create_gradsum_graph().get_graph()
    assert set(graph.nodes) == {"__start__", "generate", "evaluate", "gradient", "summarize",
                                "edit", "finalize", "__end__"}
    conditional = {(e.source, e.target, e.data) for e in graph.edges if e.conditional}
    assert conditional == {("evaluate", "gradient", "prune"), ("evaluate", "finalize", "stop"),
                           ("evaluate", "generate", "more")}
    assert build_graph().compile().name == "LangGraph"
    assert create_gradsum_graph(name="mine").name == "mine"


def test_everything_in_all_is_importable() -> None:
    module = langchain_gradsum
    assert module.__all__, "the package exports nothing"
    assert len(set(module.__all__)) == len(module.__all__)
    namespace: dict[str, object] = {}
    exec(f"from langchain_gradsum import {', '.join(module.__all__)}", namespace)
    for name in module.__all__:
        assert namespace[name] is getattr(module, name)
    for expected in ("GradSumOptimizer", "OptimizationResult", "create_gradsum_graph",
                     "GradSumContext", "MetaPrompts", "exact_match"):
        assert expected in module.__all__


@pytest.mark.parametrize(
    "module",
    ["state", "prompts", "_templates", "_llm", "data", "evaluators", "nodes", "beam", "graph",
     "optimizer", "result", "_interrupt", "_knobs", "testing"],
)
def test_module_all_is_importable(module: str) -> None:
    mod = importlib.import_module(f"langchain_gradsum.{module}")
    for name in getattr(mod, "__all__", []):
        assert hasattr(mod, name), f"langchain_gradsum.{module}.__all__ lists missing {name!r}"


# --- the unit tests cannot reach the network ---------------------------------------------


@pytest.mark.filterwarnings("ignore:A test tried to use socket")
def test_network_is_blocked() -> None:
    with pytest.raises(SocketConnectBlockedError):
        socket.create_connection(("203.0.113.7", 443), timeout=1)


def test_loopback_is_allowed() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            conn, _ = server.accept()
            conn.close()


# --- a result from the raw graph ---------------------------------------------------------


def test_optimization_result_from_the_raw_graphs_state() -> None:
    from gradsum_fakes import context, qa_rows, scripted

    from langchain_gradsum import OptimizationResult

    ctx = context(scripted(), max_iterations=1)
    state = create_gradsum_graph().invoke(
        {"prompt": "Q: {question}", "train": qa_rows(4), "val": qa_rows(2, "v")}, context=ctx)
    result = OptimizationResult.from_state(state, ctx)
    assert result.best_id == state["best_id"] and result.split == "val"
    assert result.best_score == state["candidates"][state["best_id"]]["val_score"]
    assert result.best_prompt == result.best_template  # a str template in, a str out
    assert result.stop_reason == state["stop_reason"]
    assert result.total_calls == sum(u["calls"] for u in state["usage"].values())
    assert result.settings["beam_width"] == ctx.beam_width
    assert result.settings["evaluators"] == ["exact_match"]
    assert result.lineage()[0]["id"] == "c0"
    # Stopped early (or asked to): the best minibatch candidate so far.
    stopped = OptimizationResult.from_state(state, stop_reason="interrupted")
    assert stopped.split == "minibatch" and stopped.stop_reason == "interrupted"
    assert stopped.settings == {}
    fresh = OptimizationResult.from_state({"prompt": "Q: {question}"})
    assert fresh.best_id == "c0" and fresh.best_score is None
    with pytest.raises(ValueError, match="neither candidates nor a prompt"):
        OptimizationResult.from_state({})
