"""The GRAD-SUM graph, for ``langgraph dev`` (LangGraph Studio) and deployment.

Run from this directory (``langgraph.json`` sits next to this file)::

    pip install -e "..[server]"     # langgraph-cli[inmem], langgraph-sdk
    langgraph dev

The graph's input is ``{"prompt": "... {question} ...", "train": [rows], "val": [rows]}``
with rows ``{"inputs": {...}, "outputs": {...}}``; its context (the run's settings,
`GradSumContext`, every knob described in its JSON schema) needs at least ``model``
(``"provider:model"`` or ``"local"``) and ``criteria`` for the LLM judge or built-in
``evaluators`` by name, e.g. ``{"model": "local", "evaluators": ["exact_match"],
"max_iterations": 3}``. Your own Python evaluators are set from code (`GradSumOptimizer`).
"""

from langchain_gradsum.graph import create_gradsum_graph

# No checkpointer: the LangGraph server brings its own persistence.
graph = create_gradsum_graph()
