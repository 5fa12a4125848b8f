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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel

from langchain_gradsum.demo import demo_rows
from langchain_gradsum.testing import ScriptedChatModel

__all__ = ["KB_DOCS", "MODE", "OUT", "describe", "kb_rows", "models", "scripted_kb_model",
           "scripted_model"]


def _mode() -> str:
    mode = os.environ.get("GRADSUM_NOTEBOOK_MODEL", "").strip()
    if mode:
        return mode
    return "local" if os.environ.get("GRADSUM_LOCAL_BASE_URL") else "fake"


MODE = _mode()
"""``fake``, ``local`` or a ``provider:model`` string."""

OUT = Path(os.environ.get("GRADSUM_NOTEBOOK_OUT", "runs"))
"""Where the notebooks write results and reports (CI points it at a temp dir)."""


def models(task_max_tokens: int = 384, optimizer_max_tokens: int = 220,
           fake: Callable[[], BaseChatModel] | None = None
           ) -> tuple[BaseChatModel, BaseChatModel]:
    """``(task_model, optimizer_model)`` for `MODE`.

    The local server gets two clients: a reply cap for the task model (room to reason)
    and another for gradients, summaries and edits. `fake` makes the scripted model
    (default: `scripted_model`, for the GSM8K rows).
    """
    if MODE == "fake":
        model = (fake or scripted_model)()
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


# --- notebook 04: a tiny knowledge base about a made-up city (the model must read it) ---

KB_DOCS = (
    "The Lumen Bridge over the river Arro opened in 1987 and is 412 metres long.",
    "Harbor Line trains leave Velmont Central station every 15 minutes.",
    "A Velmont library card lets you borrow up to 12 books for three weeks.",
    "Ines Caldera has been mayor of Velmont since 2019; her deputy is Tomas Reyl.",
    "Velmont's lantern festival is held on the first Saturday of October.",
    "The Velmont Observatory stands on Mount Sabre, 1240 metres above sea level.",
    "An adult ticket for the Arro river ferry costs 3 euros; children under 6 ride free.",
    "The Velmont Herons football club plays its home games at Quarry Park.",
)
"""Made-up facts: a model cannot know them, so a right answer comes from retrieval."""

_KB_QA = (
    ("In which year did the Lumen Bridge open?", "1987"),
    ("Who is the deputy mayor of Velmont?", "Tomas Reyl"),
    ("How many books can you borrow with a Velmont library card?", "12"),
    ("On which mountain does the Velmont Observatory stand?", "Mount Sabre"),
    ("How long is the Lumen Bridge, in metres?", "412"),
    ("Who has been mayor of Velmont since 2019?", "Ines Caldera"),
)


def kb_rows() -> list[dict[str, Any]]:
    """Questions about `KB_DOCS` with short reference answers (scored by exact_match)."""
    return [{"inputs": {"question": q}, "outputs": {"answer": a}} for q, a in _KB_QA]


def scripted_kb_model() -> ScriptedChatModel:
    """A plausible scripted model for `kb_rows`: it answers right but in a sentence
    ("According to the notes, ...") until the prompt asks for only the answer; the
    gradients, summary and edit say so (the edit as one added instruction)."""
    answers = dict(_KB_QA)

    def respond(text: str, role: str) -> Any:
        if role == "generate":
            for question, answer in answers.items():
                if question in text:
                    if "only the answer" in text.lower():
                        return answer
                    return f"According to the notes, the answer is {answer}."
            return "I don't know."
        if role == "judge":
            return {"reasoning": "Compared with the expected answer.", "score": 0.0}
        if role == "gradient":
            return ("The reply has the right fact but wraps it in a sentence ('According to "
                    "the notes, the answer is ...'), while the expected reply is the short "
                    "answer alone. The prompt never says what form the reply must take.")
        if role == "summarize":
            return ("Tell the assistant to reply with only the answer taken from the "
                    "context (a name, a number or a year), without a sentence around it.")
        if role == "edit":
            instruction = ("Reply with only the answer itself (a name, a number or a year), "
                           "with no sentence around it.")
            if "Write the one instruction" in text:
                return f"<instruction>{instruction}</instruction>"
            return f"<prompt>{_block(text, 'current_prompt')}\n{instruction}</prompt>"
        raise ValueError(f"unexpected role {role!r}")

    return ScriptedChatModel(respond=respond, model_name="scripted-kb")
