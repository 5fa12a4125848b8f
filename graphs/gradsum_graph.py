"""The GRAD-SUM graph, for ``langgraph dev`` (LangGraph Studio) and deployment.

Run from this directory (``langgraph.json`` sits next to this file)::

    pip install -U "langgraph-cli[inmem]"
    langgraph dev

The graph's input is ``{"prompt": "... {question} ...", "train": [rows], "val": [rows]}``
with rows ``{"inputs": {...}, "outputs": {...}}``; its context (the run's settings,
`GradSumContext`) needs at least ``model`` (``"provider:model"`` or ``"local"``) and
``criteria`` for the LLM judge, e.g. ``{"model": "local", "criteria": "The answer is
correct.", "max_iterations": 3}``. Programmatic evaluators are Python callables, so
they are set from code (`GradSumOptimizer`), not from Studio.
"""

from langchain_gradsum.graph import create_gradsum_graph

# No checkpointer: the LangGraph server brings its own persistence.
graph = create_gradsum_graph()
