"""graphs/: the `langgraph dev` entry point and the committed drawing of the graph."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from langgraph.graph.state import CompiledStateGraph

from langchain_gradsum import GradSumContext
from langchain_gradsum.testing import ScriptedChatModel

GRAPHS = Path(__file__).resolve().parents[2] / "graphs"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_graphs_{name}", GRAPHS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_langgraph_json_points_at_the_graph() -> None:
    config = json.loads((GRAPHS / "langgraph.json").read_text(encoding="utf-8"))
    assert config["dependencies"] == [".."]
    assert (GRAPHS / ".." / "pyproject.toml").is_file()
    for ref in config["graphs"].values():
        path, _, attr = ref.partition(":")
        module_path = (GRAPHS / path).resolve()
        assert module_path.is_file() and module_path.parent == GRAPHS
        module = _load(module_path.stem)
        assert isinstance(getattr(module, attr), CompiledStateGraph)


def test_graph_module_exposes_a_runnable_graph() -> None:
    graph = _load("gradsum_graph").graph
    assert graph.checkpointer is None  # the LangGraph server brings its own
    assert set(graph.get_graph().nodes) >= {"generate", "evaluate", "gradient", "summarize",
                                            "edit", "finalize"}

    def respond(text: str, role: str) -> object:
        if role == "judge":
            return {"reasoning": "ok", "score": 1.0}
        return "4"

    # What Studio would send: JSON input, and a context with a model and criteria.
    out = graph.invoke(
        {"prompt": "Answer: {question}",
         "train": [{"inputs": {"question": "2+2"}, "outputs": {"answer": "4"}}]},
        context=GradSumContext(model=ScriptedChatModel(respond=respond), criteria="correct",
                               max_iterations=1, minibatch_size=1, retry_backoff=0),
    )
    assert out["best_id"] == "c0" and out["stop_reason"]


def test_committed_drawing_matches_the_code() -> None:
    draw = _load("draw")
    committed = (GRAPHS / "gradsum_graph.mmd").read_text(encoding="utf-8")
    assert committed == draw.render(), "graphs/gradsum_graph.mmd is stale: run " \
                                       "`python graphs/draw.py`"
    for edge in ("generate --> evaluate", "gradient --> summarize", "summarize --> edit",
                 "edit --> generate", "finalize --> __end__"):
        assert edge in committed
    readme = (GRAPHS / "README.md").read_text(encoding="utf-8")
    assert f"```mermaid\n{committed}```" in readme, "graphs/README.md's drawing is stale"
    assert draw.readme_with(committed, readme) == readme


def test_draw_check_cli() -> None:
    proc = subprocess.run([sys.executable, str(GRAPHS / "draw.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_every_knob_is_in_the_context_schema_with_its_description() -> None:
    """What LangGraph Server shows as the assistant's context schema (Studio's form)."""
    import inspect

    from langchain_gradsum import GradSumOptimizer

    schema = _load("gradsum_graph").graph.get_context_jsonschema()
    props = schema["properties"]
    knobs = [p for p in inspect.signature(GradSumOptimizer).parameters]
    assert "beam_width" in knobs and "meta_prompts" in knobs
    for knob in knobs:
        assert knob in props, knob
        assert len(props[knob].get("description", "")) > 10, knob
    # code-only fields (Python objects) are not offered
    assert not {"prompt_slot", "app", "cache", "should_stop"} & set(props)
    assert schema["required"] == ["model"]
    assert props["evaluators"]["items"]["enum"] == ["exact_match", "numeric_match",
                                                    "contains_answer", "choice_match"]
    json.dumps(schema)  # JSON all the way


def test_a_json_context_is_coerced() -> None:
    """A server run's context is JSON: meta-prompts as a dict, evaluators by name."""
    from langchain_gradsum import exact_match
    from langchain_gradsum.prompts import MetaPrompts

    ctx = GradSumContext(model="local", evaluators=["exact_match"],
                         meta_prompts={"edit_retry": "Try again: {why}"})
    assert ctx.evaluators == (exact_match,)
    assert isinstance(ctx.meta_prompts, MetaPrompts)
    assert ctx.meta_prompts.edit_retry == "Try again: {why}"
    import pytest

    with pytest.raises(ValueError, match="unknown evaluator 'nope'"):
        GradSumContext(model="local", evaluators=["nope"])
