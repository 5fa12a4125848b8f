"""Scripted fake chat models for tests, notebooks run in CI, and benchmarks.

No network: a Python function decides each reply. It is told which GRAD-SUM module
made the call by the ``gradsum:<role>`` tag every call of the optimizer carries, so a
script works with any meta-prompts. Structured output (the judge) works through tool
calls, like a real function-calling model.

Example:
    >>> def respond(text: str, role: str):
    ...     if role == "judge":
    ...         return {"reasoning": "looks right", "score": 1.0}
    ...     return "42"
    >>> model = ScriptedChatModel(respond=respond)
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr

__all__ = ["ScriptedChatModel", "role_from_tags", "role_of"]

_TAG = "gradsum:"

_MARKERS = (
    ("judge", "You are grading the output"),
    ("gradient", "the assistant's output fell short"),
    ("summarize", "Merge the critiques"),
    ("edit", "Write an improved prompt that fixes the problems"),
    ("edit", "Write the one instruction"),
)


def role_from_tags(tags: Sequence[str] | None) -> str | None:
    """The role of a call from its ``gradsum:<role>`` tag (``None`` when untagged)."""
    for tag in tags or ():
        if tag.startswith(_TAG):
            return tag[len(_TAG):]
    return None


def role_of(text: str) -> str:
    """Which GRAD-SUM module sent a prompt, guessed from the default meta-prompts' words
    (else ``"generate"``): for what sees only the text, such as a fake HTTP server. A
    `ScriptedChatModel` reads the call's tag instead (`role_from_tags`)."""
    for role, marker in _MARKERS:
        if marker in text:
            return role
    return "generate"


Reply = str | dict[str, Any] | BaseMessage | BaseException
Responder = Callable[[str, str], Reply]


class ScriptedChatModel(BaseChatModel):
    """A chat model whose replies come from ``respond(prompt_text, role)``.

    `role` is the call's ``gradsum:<role>`` tag (``"generate"``, ``"judge"``,
    ``"gradient"``, ``"summarize"`` or ``"edit"``); an untagged call is ``"generate"``.

    The reply may be a string, a dict (the arguments of the bound tool, for
    structured output), an `AIMessage`, or an exception instance to raise.
    Every call is logged in `calls` as ``(role, prompt_text, reply)``.

    Args:
        respond: The script.
        latency: Seconds each call sleeps (for efficiency benchmarks).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    respond: Responder
    latency: float = 0.0
    model_name: str = Field(default="scripted")
    _calls: list[tuple[str, str, Any]] = PrivateAttr(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _ids: Any = PrivateAttr(default_factory=itertools.count)

    @property
    def _llm_type(self) -> str:
        return "scripted-fake"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    @property
    def calls(self) -> list[tuple[str, str, Any]]:
        with self._lock:
            return list(self._calls)

    def calls_by_role(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for role, _, _ in self.calls:
            out[role] = out.get(role, 0) + 1
        return out

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = "\n\n".join(str(m.content) for m in messages)
        role = role_from_tags(run_manager.tags if run_manager else None) or "generate"
        if self.latency:
            time.sleep(self.latency)
        reply = self.respond(text, role)
        with self._lock:
            self._calls.append((role, text, reply))
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(reply, BaseMessage):
            message = reply
        elif isinstance(reply, dict):
            tools = kwargs.get("tools") or []
            if not tools:
                raise ValueError("a dict reply needs a bound tool (structured output)")
            name = tools[0]["function"]["name"]
            message = AIMessage(
                content="",
                tool_calls=[{"name": name, "args": reply, "id": f"call_{next(self._ids)}"}],
            )
        else:
            message = AIMessage(content=str(reply))
        message.usage_metadata = {  # type: ignore[attr-defined]
            "input_tokens": len(text.split()),
            "output_tokens": len(str(message.content).split()) or 1,
            "total_tokens": len(text.split()) + (len(str(message.content).split()) or 1),
        }
        return ChatResult(generations=[ChatGeneration(message=message)])

    def bind_tools(
        self,
        tools: Sequence[Any],
        *,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)
