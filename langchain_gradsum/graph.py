"""The GRAD-SUM loop as a LangGraph graph. Its drawing is the algorithm:

    generate -> evaluate -(prune)-> gradient -> summarize -> edit -> generate ...
                         |-(more)-> generate   (a screened child, or rows drawn)
                         \\-(stop)-> finalize -> END
"""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from langchain_gradsum.beam import route
from langchain_gradsum.nodes import edit, evaluate, finalize, generate, gradient, summarize
from langchain_gradsum.state import GradSumContext, GradSumInput, GradSumState

__all__ = ["build_graph", "create_gradsum_graph"]


_NODES: dict[str, Any] = {"generate": generate, "evaluate": evaluate, "gradient": gradient,
                          "summarize": summarize, "edit": edit, "finalize": finalize}
"""The five GRAD-SUM modules and `finalize` (typed `Any`: LangGraph's node protocols have
no form for a node taking ``(state, runtime, config)``)."""


def build_graph() -> StateGraph[GradSumState, GradSumContext, GradSumInput, GradSumState]:
    """The uncompiled graph (add your own nodes or compile it with your options)."""
    builder = StateGraph(GradSumState, context_schema=GradSumContext, input_schema=GradSumInput)
    for name, node in _NODES.items():
        builder.add_node(name, node)

    builder.add_edge(START, "generate")
    builder.add_edge("generate", "evaluate")
    builder.add_conditional_edges(
        "evaluate", route, {"prune": "gradient", "more": "generate", "stop": "finalize"}
    )
    builder.add_edge("gradient", "summarize")
    builder.add_edge("summarize", "edit")
    builder.add_edge("edit", "generate")
    builder.add_edge("finalize", END)
    return builder


def create_gradsum_graph(
    *, checkpointer: Any = None, name: str = "gradsum"
) -> CompiledStateGraph[GradSumState, GradSumContext, GradSumInput, GradSumState]:
    """The compiled GRAD-SUM graph.

    Invoke it with ``{"prompt": ..., "train": [...], "val": [...]}`` and
    ``context=GradSumContext(model=...)``; stream it with ``stream_mode="custom"``
    for progress events; pass a checkpointer to persist and resume runs.
    """
    return build_graph().compile(checkpointer=checkpointer, name=name)
