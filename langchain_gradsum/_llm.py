"""One helper for every LLM call: role, budget, retry, trace name and usage.

Every call of the optimizer goes through `LLMCaller`, so the budget cap, the
retry policy, usage accounting and LangSmith run names live in one place.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_executor_for_config, merge_configs
from pydantic import BaseModel
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from langchain_gradsum._cache import CallCache
from langchain_gradsum.state import RoleUsage

__all__ = ["BudgetExhausted", "CallBudget", "LLMCaller", "is_transient", "resolve_model"]

T = TypeVar("T")
R = TypeVar("R")


class BudgetExhausted(RuntimeError):
    """Raised instead of making a call that would exceed `max_llm_calls`."""


class CallBudget:
    """A thread-safe count of calls that may still be made."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self) -> None:
        with self._lock:
            if self.limit is not None and self.used >= self.limit:
                raise BudgetExhausted(f"the budget of {self.limit} LLM calls is spent")
            self.used += 1

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else self.limit - self.used


def is_transient(exc: BaseException) -> bool:
    """Timeouts, rate limits (429), server errors (5xx) and dropped connections."""
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    names = {c.__name__ for c in type(exc).__mro__}
    if names & {
        "APITimeoutError",
        "APIConnectionError",
        "RateLimitError",
        "InternalServerError",
        "TimeoutException",
        "ConnectError",
        "RemoteProtocolError",
    }:
        return True
    status = getattr(exc, "status_code", None) or getattr(
        getattr(exc, "response", None), "status_code", None
    )
    return isinstance(status, int) and (status == 429 or status >= 500)


@functools.lru_cache(maxsize=32)
def _init_model(spec: str) -> BaseChatModel:
    if spec == "local":
        from langchain_gradsum.local_llm import local_chat_model

        return local_chat_model()
    from langchain.chat_models import init_chat_model

    return init_chat_model(spec)


def resolve_model(model: str | BaseChatModel, what: str = "model") -> BaseChatModel:
    """A chat model from an instance, ``"provider:model"`` string, or ``"local"``.

    Raises:
        ValueError: the string names no known provider or the provider package is missing.
    """
    if isinstance(model, BaseChatModel):
        return model
    if not isinstance(model, str) or not model:
        raise TypeError(
            f"{what} must be a BaseChatModel or a 'provider:model' string such as "
            f"'openai:gpt-4o-mini', got {model!r}"
        )
    try:
        return _init_model(model)
    except Exception as e:  # init_chat_model raises ValueError/ImportError/provider errors
        lines = str(e).strip().splitlines()
        reason = lines[0].rstrip(".") if lines else type(e).__name__
        if "infer model provider" in reason:
            reason = "no known provider in the name"
        raise ValueError(
            f"{what}={model!r} could not be loaded ({reason}). Use a 'provider:model' string "
            "such as 'openai:gpt-4o-mini' (with that provider's package installed and its API "
            "key set), 'local' for the embedded model, or a BaseChatModel instance."
        ) from None


class LLMCaller:
    """Makes the LLM calls of one graph node and accounts for them.

    Args:
        budget: Shared call budget; every attempt (retries included) takes one call.
        config: The node's runnable config, so each call is traced under the node.
        max_retries: Retries of a transient failure, with exponential backoff.
        max_parse_retries: Re-asks when structured output does not parse.
        backoff: Initial backoff in seconds (tests set 0).
        max_concurrency: Calls in flight at once in `map`.
        cache: Finished calls are answered from here, costing no budget.
        paid: Cache keys the run's state has already counted as calls.
    """

    def __init__(
        self,
        budget: CallBudget,
        config: RunnableConfig | None,
        *,
        max_retries: int = 2,
        max_parse_retries: int = 1,
        backoff: float = 1.0,
        max_concurrency: int | None = None,
        cache: CallCache | None = None,
        paid: Iterable[str] = (),
    ) -> None:
        self.budget = budget
        self.cache = cache
        self.paid = set(paid)
        """Cache keys of calls already counted in the run's usage."""
        self.paid_now: list[str] = []
        """Cache keys of calls this caller counted (goes into the state)."""
        self.config = config or {}
        if max_concurrency is not None:
            self.config = {**self.config, "max_concurrency": max_concurrency}
        self.max_retries = max_retries
        self.max_parse_retries = max_parse_retries
        self.backoff = backoff
        self.usage: dict[str, RoleUsage] = {}
        self.counters: dict[str, int] = {}
        self._lock = threading.Lock()

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + n

    def _usage(self, role: str) -> RoleUsage:
        return self.usage.setdefault(role, {"calls": 0, "input_tokens": 0, "output_tokens": 0})

    def _account(self, role: str, message: Any) -> None:
        """Add a reply's tokens (its call was counted when the budget was taken)."""
        meta = getattr(message, "usage_metadata", None) or {}
        with self._lock:
            u = self._usage(role)
            u["input_tokens"] += int(meta.get("input_tokens", 0) or 0)
            u["output_tokens"] += int(meta.get("output_tokens", 0) or 0)

    def _config(self, role: str, metadata: dict[str, Any]) -> RunnableConfig:
        return merge_configs(
            self.config,
            {
                "run_name": f"gradsum.{role}",
                "tags": ["gradsum", f"gradsum:{role}"],
                "metadata": {"gradsum_role": role, **metadata},
            },
        )

    def _attempt(self, role: str, fn: Callable[[], T]) -> T:
        """Run one model call with budget and retries."""
        retrying = Retrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=wait_exponential(multiplier=self.backoff, max=30 * self.backoff),
            retry=retry_if_exception(is_transient),
            reraise=True,
            before_sleep=lambda _: self.count("retries"),
        )
        for attempt in retrying:
            with attempt:
                self.budget.take()
                with self._lock:  # every attempt is a call: usage always equals budget spent
                    self._usage(role)["calls"] += 1
                try:
                    return fn()
                except BaseException as e:
                    if not isinstance(e, BudgetExhausted):
                        self.count(f"{role}_errors" if not is_transient(e) else "transient_errors")
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def text(
        self,
        role: str,
        model: BaseChatModel,
        messages: Sequence[BaseMessage] | str,
        **metadata: Any,
    ) -> str:
        """One call returning the reply's text."""
        key = self.cache.key(model, messages, "text") if self.cache is not None else None
        if key is not None and (hit := self._cached(role, key)) is not None:
            return str(hit["text"])
        config = self._config(role, metadata)

        def call() -> AIMessage:
            msg = model.invoke(messages, config=config)
            self._account(role, msg)
            return msg  # type: ignore[return-value]

        reply = self._attempt(role, call)
        text = _text_of(reply)
        if key is not None:
            self.cache.put(key, {"text": text, "usage": _tokens(reply)})  # type: ignore[union-attr]
            self._paid(key)
        return text

    def _cached(self, role: str, key: str) -> dict[str, Any] | None:
        """A cached reply, if any.

        A reply this run paid for whose call is not in the state's usage (the
        process died before its node finished) is counted now, in usage and
        budget, so a resumed run accounts exactly like an uninterrupted one.
        """
        assert self.cache is not None
        hit = self.cache.get(key)
        if hit is None:
            return None
        with self._lock:
            unaccounted = (self.cache.run_id is not None and hit.get("run") == self.cache.run_id
                           and key not in self.paid)
            if unaccounted:
                self.paid.add(key)
        if unaccounted:
            self.budget.take()
            with self._lock:
                self.paid_now.append(key)
                u = self._usage(role)
                u["calls"] += 1
                u["input_tokens"] += hit.get("usage", [0, 0])[0]
                u["output_tokens"] += hit.get("usage", [0, 0])[1]
            self.count("resumed_calls")
        else:
            self.count("cache_hits")
        return hit

    def _paid(self, key: str | None) -> None:
        if key is not None:
            with self._lock:
                self.paid.add(key)
                self.paid_now.append(key)

    def structured(
        self,
        role: str,
        model: BaseChatModel,
        messages: Sequence[BaseMessage] | str,
        schema: type[BaseModel],
        **metadata: Any,
    ) -> BaseModel | None:
        """One structured-output call; re-asked on malformed output, else `None`."""
        kind = f"structured:{schema.__module__}.{schema.__qualname__}"
        key = self.cache.key(model, messages, kind) if self.cache is not None else None
        if key is not None and (hit := self._cached(role, key)) is not None:
            return schema.model_validate(hit["parsed"])
        config = self._config(role, metadata)
        # Name the model itself, so the LLM run (not only its wrapping chain) is
        # traced as gradsum.<role>.
        bound = _structured(_named(model, f"gradsum.{role}"), schema)
        for _ in range(self.max_parse_retries + 1):

            def call() -> dict[str, Any]:
                out = bound.invoke(messages, config=config)
                self._account(role, out.get("raw"))
                return out

            out = self._attempt(role, call)
            parsed = out.get("parsed")
            if isinstance(parsed, schema) and out.get("parsing_error") is None:
                if key is not None:
                    self.cache.put(key, {"parsed": parsed.model_dump(),  # type: ignore[union-attr]
                                         "usage": _tokens(out.get("raw"))})
                    self._paid(key)
                return parsed
            self.count(f"{role}_parse_failures")
        return None

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R | BaseException]:
        """Run `fn` over items with at most `max_concurrency` in flight.

        Returns each result or the exception it raised, in input order, so a
        failure of one item never loses the others.
        """
        items = list(items)

        def safe(item: T) -> R | BaseException:
            try:
                return fn(item)
            except Exception as e:
                return e

        if len(items) <= 1:
            return [safe(i) for i in items]
        with get_executor_for_config(self.config) as ex:
            return list(ex.map(safe, items))


def _named(model: BaseChatModel, name: str) -> BaseChatModel:
    """A shallow copy of `model` whose runs are named `name`."""
    return model if model.name == name else model.model_copy(update={"name": name})


def _structured(model: BaseChatModel, schema: type[BaseModel]) -> Any:
    try:
        return model.with_structured_output(schema, method="function_calling", include_raw=True)
    except (TypeError, ValueError, NotImplementedError):
        return model.with_structured_output(schema, include_raw=True)


def _tokens(message: Any) -> list[int]:
    meta = getattr(message, "usage_metadata", None) or {}
    return [int(meta.get("input_tokens", 0) or 0), int(meta.get("output_tokens", 0) or 0)]


def _text_of(message: Any) -> str:
    text = getattr(message, "text", None)
    if isinstance(text, str):  # a property in langchain-core 1.x
        return str(text)
    content = getattr(message, "content", message)
    return content if isinstance(content, str) else str(content)
