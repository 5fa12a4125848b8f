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


def arithmetic(*, wrong: str = "five", reasoning: str = "checked",
               gradient: str = "The prompt does not ask for step-by-step reasoning.",
               summary: str = "Ask for step-by-step reasoning and a final number.",
               good_prompt: str = "Think step by step, then answer: {question}",
               instruction_is_good: bool = False) -> Callable[[str, str], Any]:
    """The "2+2" script of the CLI, report and tracing tests, as a responder.

    generate: "The answer is 4" when the prompt says "step by step", else `wrong`;
    judge: 1 for an output with "answer is 4"; edit: `good_prompt` for the first edit
    variant (and, with `instruction_is_good`, for an added instruction), else a prompt
    that does not help. The texts are parameters so a test can carry its own payload.
    """

    def respond(text: str, role: str) -> Any:
        if role == "judge":
            return {"reasoning": reasoning, "score": 1.0 if "answer is 4" in text else 0.0}
        if role == "gradient":
            return gradient
        if role == "summarize":
            return summary
        if role == "edit":
            if "version 1" in text or (instruction_is_good
                                       and "Write the one instruction" in text):
                return f"<prompt>{good_prompt}</prompt>"
            return "<prompt>Work it out carefully.\n{question}</prompt>"
        return "The answer is 4" if "step by step" in text else wrong

    return respond


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
