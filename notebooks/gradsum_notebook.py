"""Shared by the notebooks in this folder: which models they run, and the CI fake.

One switch, the environment variable ``GRADSUM_NOTEBOOK_MODEL``:

* ``local``  the embedded Qwen2.5-Coder-1.5B server at ``$GRADSUM_LOCAL_BASE_URL``
  (``python -m langchain_gradsum.local_llm run -- jupyter lab`` starts one and sets it);
* ``fake``   a scripted `ScriptedChatModel`: no server, no network, instant (CI runs
  every notebook this way);
* ``provider:model``  any hosted chat model through ``init_chat_model``, e.g.
  ``openai:gpt-4o-mini`` (needs that provider's package and API key).

Unset, it is ``local`` when ``$GRADSUM_LOCAL_BASE_URL`` is set, else ``fake``.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel

from langchain_gradsum.demo import demo_rows
from langchain_gradsum.testing import ScriptedChatModel

__all__ = ["MODE", "OUT", "describe", "models", "scripted_model"]


def _mode() -> str:
    mode = os.environ.get("GRADSUM_NOTEBOOK_MODEL", "").strip()
    if mode:
        return mode
    return "local" if os.environ.get("GRADSUM_LOCAL_BASE_URL") else "fake"


MODE = _mode()
"""``fake``, ``local`` or a ``provider:model`` string."""

OUT = Path(os.environ.get("GRADSUM_NOTEBOOK_OUT", "runs"))
"""Where the notebooks write results and reports (CI points it at a temp dir)."""


def models(task_max_tokens: int = 384, optimizer_max_tokens: int = 220
           ) -> tuple[BaseChatModel, BaseChatModel]:
    """``(task_model, optimizer_model)`` for `MODE`.

    The local server gets two clients: a reply cap for the task model (room to reason)
    and another for gradients, summaries and edits.
    """
    if MODE == "fake":
        model = scripted_model()
        return model, model
    if MODE == "local":
        from langchain_gradsum.local_llm import local_chat_model

        return (local_chat_model(max_tokens=task_max_tokens),
                local_chat_model(max_tokens=optimizer_max_tokens))
    from langchain.chat_models import init_chat_model

    model = init_chat_model(MODE, temperature=0)
    return model, model


def describe() -> str:
    if MODE == "fake":
        return ("fake: a scripted ScriptedChatModel (no LLM; its figures only show the "
                "mechanics)")
    if MODE == "local":
        return f"local: Qwen2.5-Coder-1.5B-Instruct at {os.environ.get('GRADSUM_LOCAL_BASE_URL')}"
    return f"hosted: {MODE}"


# --- the CI fake ---------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_EDITS = (
    "Solve the math word problem step by step: work out each quantity you need, check "
    "the arithmetic, then end your reply with the final number alone on the last line.\n\n"
    "Problem: {vars}",
    "Read the problem carefully and reason step by step. Show each calculation, then "
    "write the final answer as a number on the last line.\n\n{vars}",
    "You are a careful math tutor. Work step by step through {vars}\n\nFinish with the "
    "final number only.",
)


def _last_number(text: str) -> str | None:
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def _block(text: str, tag: str) -> str:
    m = re.search(rf"<{tag}>\s*(.*?)\s*</{tag}>", text, re.S)
    return m.group(1) if m else ""


def scripted_model() -> ScriptedChatModel:
    """A plausible scripted model for the bundled GSM8K rows.

    The task model answers every other problem right with a bare prompt and all of
    them once the prompt asks to work step by step; the judge compares final numbers;
    gradients, summaries and edits say what a real optimizer model tends to say.
    """
    answers = {r["inputs"]["question"]: str(r["outputs"]["answer"]) for r in demo_rows()}
    edits = itertools.count()

    def respond(text: str, role: str) -> Any:
        if role == "generate":
            for i, (question, answer) in enumerate(answers.items()):
                if question in text:
                    if "step by step" in text.lower():
                        return (f"Let me work through it step by step.\n"
                                f"... (each quantity, then the arithmetic) ...\n{answer}")
                    if i % 2 == 0:
                        return f"The answer is {answer}."
                    return f"The answer is {int(float(answer)) + 12}."
            return "42"
        if role == "judge":
            got, want = (_last_number(_block(text, "output")),
                         _last_number(_block(text, "expected_output")))
            ok = got is not None and got == want
            return {"reasoning": f"The final number is {got}; expected {want}.",
                    "score": 1.0 if ok else 0.0}
        if role == "gradient":
            return ("The prompt only says to answer, so the assistant jumps to a number "
                    "without working through the quantities and makes arithmetic slips. It "
                    "should ask for step-by-step reasoning and a final line with the number.")
        if role == "summarize":
            return ("Ask the assistant to reason step by step through each quantity in the "
                    "problem, to check its arithmetic, and to end with the final number "
                    "alone on the last line.")
        if role == "edit":
            m = re.search(r"Keep the placeholder (.+?) where the input goes", text)
            placeholder = m.group(1) if m else "{question}"
            return f"<prompt>{_EDITS[next(edits) % len(_EDITS)].format(vars=placeholder)}</prompt>"
        raise ValueError(f"unexpected role {role!r}")

    return ScriptedChatModel(respond=respond, model_name="scripted-gsm8k")
