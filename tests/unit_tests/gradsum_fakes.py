"""Data and scripted-model helpers shared by the unit tests (imported, not collected)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from langchain_gradsum import GradSumOptimizer
from langchain_gradsum.state import GradSumContext, RunContext
from langchain_gradsum.testing import ScriptedChatModel

GOOD = "BETTER"


def qa_rows(n: int, prefix: str = "q", answer: str = "B") -> list[dict[str, Any]]:
    """``n`` rows ``{"inputs": {"question": "<prefix><i>"}, "outputs": {"answer": answer}}``."""
    return [{"inputs": {"question": f"{prefix}{i}"}, "outputs": {"answer": answer}}
            for i in range(n)]


def output_in(text: str) -> str | None:
    """The output a judge/gradient meta-prompt shows, from its ``<output>`` block."""
    m = re.search(r"<output>\s*(.*?)\s*</output>", text, re.S)
    return m.group(1) if m else None


class Script:
    """A tiny plausible LLM, as a `ScriptedChatModel` responder.

    generate: "B" when the prompt says BETTER, else "A" (the references say "B");
    judge: 1 for output "B", else 0; edit: a new prompt saying BETTER, numbered so
    that every edit is distinct. Override any role with ``Script(edit=fn)``, where
    ``fn(text)`` returns the reply.
    """

    def __init__(self, **overrides: Callable[[str], Any]) -> None:
        self.overrides = overrides
        self._edits = itertools.count(1)

    def __call__(self, text: str, role: str) -> Any:
        if role in self.overrides:
            return self.overrides[role](text)
        if role == "generate":
            return "B" if GOOD in text else "A"
        if role == "judge":
            good = output_in(text) == "B"
            return {"reasoning": "right" if good else "wrong", "score": 1.0 if good else 0.0}
        if role == "gradient":
            return "The prompt should ask for B."
        if role == "summarize":
            return "Ask for B."
        if role == "edit":
            return f"<prompt>{GOOD} v{next(self._edits)}: {{question}}</prompt>"
        raise AssertionError(role)


def scripted(respond: Callable[[str, str], Any] | None = None, **overrides: Any
             ) -> ScriptedChatModel:
    """A fresh scripted model: `respond`, or a `Script` with per-role overrides."""
    return ScriptedChatModel(respond=respond or Script(**overrides))


def optimizer(model: Any, **settings: Any) -> GradSumOptimizer:
    """An optimizer with fast test defaults (no retry sleeps, exact_match evaluator)."""
    from langchain_gradsum import exact_match

    defaults: dict[str, Any] = dict(evaluators=[exact_match], retry_backoff=0,
                                    max_iterations=1, minibatch_size=2)
    return GradSumOptimizer(model, **{**defaults, **settings})


def context(model: Any, **settings: Any) -> RunContext:
    from langchain_gradsum import exact_match

    defaults: dict[str, Any] = dict(evaluators=(exact_match,), retry_backoff=0,
                                    minibatch_size=2)
    return RunContext(model=model, **{**defaults, **settings})


class FakeRuntime(SimpleNamespace):
    """Stands in for `langgraph.runtime.Runtime`: ``.context`` and ``.stream_writer``."""

    def __init__(self, ctx: GradSumContext) -> None:
        events: list[dict[str, Any]] = []
        super().__init__(context=ctx, stream_writer=events.append, events=events)
