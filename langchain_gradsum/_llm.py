"""One helper for every LLM call: role, budget, retry, trace name and usage.

Every call of the optimizer goes through `LLMCaller`, so the budget cap, the
retry policy, usage accounting and LangSmith run names live in one place.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import os
import re
import threading
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, NamedTuple, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, message_to_dict, messages_from_dict
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
from langchain_gradsum.state import GradSumContext, RoleUsage

__all__ = [
    "BudgetExhausted",
    "CallBudget",
    "LLMCaller",
    "MalformedReply",
    "RunLedger",
    "RoleModels",
    "RunStopped",
    "SharedCalls",
    "check_failures",
    "is_transient",
    "redact",
    "resolve_model",
    "role_models",
    "without_sdk_retries",
]

T = TypeVar("T")
R = TypeVar("R")


class BudgetExhausted(RuntimeError):
    """Raised instead of making a call that would exceed `max_llm_calls`."""


class MalformedReply(RuntimeError):
    """A reply that is not a usable completion: a body that is not JSON, no choices.

    Transient: retried like a 429 and counted in ``malformed_replies``.
    """


class RunStopped(BaseException):  # noqa: N818 - a stop, like KeyboardInterrupt
    """Raised instead of starting a call once the run has returned (a hard Ctrl-C, an
    error). A `BaseException`, so no node catches it and nothing of the step is kept."""


class RunLedger:
    """Every call of one `optimize()` run, as it starts, whatever becomes of its step.

    Nodes report their calls in their state update only when the step finishes, so a
    step that fails, or is abandoned by a hard Ctrl-C, would lose them; the ledger keeps
    them for the result. Once closed, no call may start (`RunStopped`).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.closed = False
        self.usage: dict[str, RoleUsage] = {}
        self.counters: dict[str, int] = {}

    def _role(self, role: str) -> RoleUsage:
        return self.usage.setdefault(role, {"calls": 0, "input_tokens": 0, "output_tokens": 0})

    def start(self, role: str, budget: CallBudget) -> None:
        """Take one call from `budget` and count it, unless the run is closed."""
        with self.lock:
            if self.closed:
                raise RunStopped("the run has returned: no new call starts")
            budget.take()
            self._role(role)["calls"] += 1

    def add(self, role: str, calls: int = 0, input_tokens: int = 0,
            output_tokens: int = 0) -> None:
        with self.lock:
            u = self._role(role)
            u["calls"] += calls
            u["input_tokens"] += input_tokens
            u["output_tokens"] += output_tokens

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counters[key] = self.counters.get(key, 0) + n

    def close(self) -> None:
        """From now on no call starts; calls in flight finish (they are counted)."""
        with self.lock:
            self.closed = True


_LEDGER: contextvars.ContextVar[RunLedger | None] = contextvars.ContextVar(
    "gradsum_ledger", default=None)


@contextlib.contextmanager
def run_ledger() -> Iterator[RunLedger]:
    """A ledger for the calls made in this context (threads started in it inherit it);
    closed on exit."""
    ledger = RunLedger()
    token = _LEDGER.set(ledger)
    try:
        yield ledger
    finally:
        ledger.close()
        _LEDGER.reset(token)


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
    """Timeouts, rate limits (429), server errors (5xx), dropped connections, and
    replies that are not a usable completion (`MalformedReply`)."""
    if isinstance(exc, TimeoutError | ConnectionError | MalformedReply):
        return True
    if getattr(exc, "gradsum_transient", False):  # a `RedactedError` of a transient one
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


_MALFORMED_TEXTS = (
    "Unexpected response type",  # langchain-openai: a body that is not a completion
    "missing 'choices'",
    "null value for 'choices'",
    "No generations found",
)


def _chain(exc: BaseException, depth: int = 6) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(seen) < depth:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def is_malformed_reply(exc: BaseException) -> bool:
    """A call that got a reply, but not a usable completion: a 200 whose body is not
    JSON (``JSONDecodeError``), an empty ``choices`` list (``IndexError`` where the
    first generation is taken), ``choices`` missing or null, or a reply the SDK could
    not validate."""
    if isinstance(exc, BudgetExhausted | RunStopped) or is_transient(exc):
        return False
    for e in _chain(exc):
        if isinstance(e, json.JSONDecodeError | IndexError):
            return True
        if type(e).__name__ == "APIResponseValidationError":
            return True
        if isinstance(e, ValueError | KeyError | TypeError) and any(
                t in str(e) for t in _MALFORMED_TEXTS):
            return True
    return False


# --- secrets in error texts ------------------------------------------------------------

REDACTED = "[REDACTED]"
_HEADER_NAMES = (
    r"(?:proxy-)?authorization|x-api-key|api[-_]?key|x-goog-api-key|openai[-_]api[-_]key|"
    r"anthropic[-_]api[-_]key|access[-_]token|auth[-_]token|refresh[-_]token|"
    r"client[-_]secret|password|secret[-_]key"
)
_SECRET_PATTERNS = (
    # a header or parameter by name, quoted or not: keep the name and any auth scheme
    re.compile(
        rf"(?i)(?P<keep>[\"']?\b(?:{_HEADER_NAMES})\b[\"']?\s*[:=]\s*[\"']?"
        r"(?:(?:bearer|basic|token|apikey)\s+)?)"
        r"(?!(?:None|null|true|false|\*+)(?![^\s\"',;&}\]])|\[REDACTED\]"
        r"|(?:bearer|basic|token|apikey)\s)"
        r"(?P<secret>[^\s\"',;&}\]]{4,})"
    ),
    re.compile(r"(?i)(?P<keep>\b(?:bearer|basic)\s+)(?P<secret>[A-Za-z0-9._~+/=-]{8,})"),
    # URL query parameters that carry keys
    re.compile(r"(?i)(?P<keep>[?&](?:key|api[-_]?key|access[-_]token|token|sig|signature)=)"
               r"(?P<secret>[^&\s\"']+)"),
    # key shapes: OpenAI/Anthropic/DeepSeek sk-..., Google AIza..., Groq, xAI, Hugging
    # Face, GitHub, Slack, LangSmith, AWS access key ids, Stripe-like, JWTs
    re.compile(
        r"(?P<secret>\bsk-[A-Za-z0-9_-]{8,}|\bAIza[0-9A-Za-z_-]{20,}|\bgsk_[A-Za-z0-9]{16,}"
        r"|\bxai-[A-Za-z0-9]{16,}|\bhf_[A-Za-z0-9]{16,}|\bgh[pousr]_[A-Za-z0-9]{20,}"
        r"|\bgithub_pat_[A-Za-z0-9_]{20,}|\bxox[abprs]-[A-Za-z0-9-]{10,}"
        r"|\blsv2_[A-Za-z0-9_]{16,}|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
        r"|\b[rsp]k_(?:live|test)_[A-Za-z0-9]{10,}"
        r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"
    ),
)


def redact(text: str) -> str:
    """`text` with API-key shapes and the values of auth headers and key parameters
    (``Authorization``, ``api-key``, ``x-api-key``, ``?key=``...) replaced by
    ``[REDACTED]``."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.groupdict().get("keep") or "") + REDACTED, text)
    return text


class RedactedError(RuntimeError):
    """Stands in for an error whose text held a secret that could not be removed in place."""


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict | list):
        try:
            return json.loads(redact(json.dumps(value)))
        except (TypeError, ValueError):
            return value
    return value


def scrubbed(exc: BaseException) -> BaseException:
    """`exc` with secrets removed from its text (and its causes'), in place when its
    text comes from its arguments (as for every SDK error), else a `RedactedError`."""
    for e in _chain(exc):
        with contextlib.suppress(Exception):
            e.args = tuple(_redact_value(a) for a in e.args)
            for attr in ("message", "body"):
                value = getattr(e, attr, None)
                if isinstance(value, str | dict | list):
                    setattr(e, attr, _redact_value(value))
    try:
        text = str(exc)
    except Exception:
        return exc
    clean = redact(text)
    if clean == text:
        return exc
    stand_in = RedactedError(f"{type(exc).__name__}: {clean}")
    stand_in.gradsum_transient = is_transient(exc)  # type: ignore[attr-defined]
    stand_in.status_code = getattr(exc, "status_code", None)  # type: ignore[attr-defined]
    return stand_in


# --- models ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _init_model(spec: str, env: tuple[tuple[str, str], ...]) -> BaseChatModel:
    """The model of a spec; `env` is part of the key, since providers read their base
    URL and key from the environment when the model is made."""
    if spec == "local":
        from langchain_gradsum.local_llm import local_chat_model

        # A server run names the model by string only: its token cap comes from here.
        cap = dict(env).get("GRADSUM_LOCAL_MAX_TOKENS", "").strip()
        if cap and not (cap.isdigit() and int(cap) > 0):
            raise ValueError(f"GRADSUM_LOCAL_MAX_TOKENS must be a positive int, got {cap!r}")
        return local_chat_model(max_tokens=int(cap)) if cap else local_chat_model()
    from langchain.chat_models import init_chat_model

    return init_chat_model(spec)


def resolve_model(model: str | BaseChatModel, what: str = "model") -> BaseChatModel:
    """A chat model from an instance, ``"provider:model"`` string, or ``"local"``,
    with its SDK's own retries turned off (`without_sdk_retries`).

    Raises:
        ValueError: the string names no known provider or the provider package is missing.
    """
    if isinstance(model, BaseChatModel):
        return without_sdk_retries(model)
    if not isinstance(model, str) or not model:
        raise TypeError(
            f"{what} must be a BaseChatModel or a 'provider:model' string such as "
            f"'openai:gpt-4o-mini', got {model!r}"
        )
    try:
        resolved = _init_model(model, tuple(sorted(os.environ.items())))
    except Exception as e:  # init_chat_model raises ValueError/ImportError/provider errors
        lines = redact(str(e)).strip().splitlines()
        reason = lines[0].rstrip(".") if lines else type(e).__name__
        if "infer model provider" in reason:
            reason = "no known provider in the name"
        raise ValueError(
            f"{what}={model!r} could not be loaded ({reason}). Use a 'provider:model' string "
            "such as 'openai:gpt-4o-mini' (with that provider's package installed and its API "
            "key set), 'local' for the embedded model, or a BaseChatModel instance."
        ) from None
    return without_sdk_retries(resolved)


class RoleModels(NamedTuple):
    """The chat models of a run, by what they do."""

    task: BaseChatModel
    """Runs the candidate prompts (role ``generate``)."""
    judge: BaseChatModel
    """Scores outputs by the criteria (role ``judge``)."""
    optimizer: BaseChatModel
    """Writes the critiques, summaries and edits (roles ``gradient``, ``summarize``, ``edit``)."""


def role_models(ctx: GradSumContext) -> RoleModels:
    """The context's models, resolved; the judge and the optimizer default to the task model."""
    task = resolve_model(ctx.model, "model")
    judge = resolve_model(ctx.judge_model, "judge_model") if ctx.judge_model else task
    opt = resolve_model(ctx.optimizer_model, "optimizer_model") if ctx.optimizer_model else task
    return RoleModels(task, judge, opt)


_NO_RETRY: dict[int, tuple[BaseChatModel, BaseChatModel]] = {}
_NO_RETRY_LOCK = threading.Lock()


def without_sdk_retries(model: BaseChatModel) -> BaseChatModel:
    """`model`, or a copy of it whose provider SDK makes no retries of its own.

    SDK clients retry 429s and 5xx errors inside one call (the OpenAI and Anthropic
    clients twice by default): requests the optimizer would not see, so
    ``max_llm_calls`` could not hold. The copy has ``max_retries=0`` where the model
    has that field, and its SDK clients are re-made with ``max_retries=0``; the
    optimizer does the retrying, counting each attempt. The caller's model is left
    as it is. A model whose retry setting cannot be reached (an SDK client that still
    has retries on) is used as it is, with a `UserWarning`.
    """
    with _NO_RETRY_LOCK:
        hit = _NO_RETRY.get(id(model))
        if hit is not None and hit[0] is model:
            return hit[1]
    copy = _no_retry_copy(model)
    if (left := _retrying_parts(copy)):
        warnings.warn(
            f"{type(model).__name__}: its SDK's own retries could not be turned off "
            f"({', '.join(left)}); a request it retries reaches the provider without "
            "counting against max_llm_calls. Turn them off in the model you pass (e.g. "
            "max_retries=0).",
            UserWarning,
            stacklevel=3,
        )
    with _NO_RETRY_LOCK:
        if len(_NO_RETRY) >= 64:
            _NO_RETRY.pop(next(iter(_NO_RETRY)))
        _NO_RETRY[id(model)] = (model, copy)
        _NO_RETRY[id(copy)] = (copy, copy)
    return copy


def _retries(obj: Any) -> int | None:
    if obj is None or isinstance(obj, str | int | float | bool | bytes | list | dict | tuple):
        return None
    value = getattr(obj, "max_retries", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _no_retry_copy(model: BaseChatModel) -> BaseChatModel:
    update: dict[str, Any] = {}
    fields = type(model).model_fields
    if "max_retries" in fields and model.max_retries != 0:  # type: ignore[attr-defined]
        update["max_retries"] = 0
    parts = dict(vars(model))  # fields and cached properties (SDK clients)
    remade: dict[int, Any] = {}
    for name, value in parts.items():
        if (_retries(value) or 0) > 0:
            for make in ("with_options", "copy"):  # openai, anthropic clients
                with contextlib.suppress(Exception):
                    new = getattr(value, make)(max_retries=0)
                    if _retries(new) == 0:
                        remade[id(value)] = update[name] = new
                        break
    # resources bound to a re-made client (ChatOpenAI.client is root_client.chat.completions)
    for name, value in parts.items():
        bound = getattr(value, "_client", None) if name not in update else None
        if bound is not None and id(bound) in remade:
            with contextlib.suppress(Exception):
                update[name] = type(value)(remade[id(bound)])
    return model.model_copy(update=update) if update else model


def _retrying_parts(model: BaseChatModel) -> list[str]:
    """Names of the parts of `model` that still retry on their own."""
    left = []
    for name, value in vars(model).items():
        if (_retries(value) or 0) > 0 or (_retries(getattr(value, "_client", None)) or 0) > 0:
            left.append(name)
    return left


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

    Inside `run_ledger()` (as in `GradSumOptimizer.optimize`) every call and count is
    also written to the run's ledger as it happens, and no call starts once it is closed.
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
        self._ledger = _LEDGER.get()

    def count(self, key: str, n: int = 1) -> None:
        """Add `n` to a counter (of the result's ``counters``)."""
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + n
        if self._ledger is not None:
            self._ledger.count(key, n)

    def _usage(self, role: str) -> RoleUsage:
        return self.usage.setdefault(role, {"calls": 0, "input_tokens": 0, "output_tokens": 0})

    def _account(self, role: str, message: Any) -> None:
        """Add a reply's tokens (its call was counted when the budget was taken)."""
        tokens_in, tokens_out = _tokens(message)
        with self._lock:
            u = self._usage(role)
            u["input_tokens"] += tokens_in
            u["output_tokens"] += tokens_out
        if self._ledger is not None:
            self._ledger.add(role, input_tokens=tokens_in, output_tokens=tokens_out)

    def _config(self, role: str, metadata: dict[str, Any]) -> RunnableConfig:
        return merge_configs(
            self.config,
            {
                "run_name": f"gradsum.{role}",
                "tags": ["gradsum", f"gradsum:{role}"],
                "metadata": {"gradsum_role": role, **metadata},
            },
        )

    def _start(self, role: str) -> None:
        """Take one call from the budget and count it (no call starts in a closed run)."""
        if self._ledger is not None:
            self._ledger.start(role, self.budget)
        else:
            self.budget.take()
        with self._lock:  # every attempt is a call: usage always equals budget spent
            self._usage(role)["calls"] += 1

    def _attempt(self, role: str, fn: Callable[[], T]) -> T:
        """Run one model call with budget and retries.

        A reply that is not a usable completion becomes a (transient) `MalformedReply`;
        every failure is counted, and its text is stripped of secrets before anything
        can store it.
        """
        retrying = Retrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=wait_exponential(multiplier=self.backoff, max=30 * self.backoff),
            retry=retry_if_exception(is_transient),
            reraise=True,
            before_sleep=lambda _: self.count("retries"),
        )
        for attempt in retrying:
            with attempt:
                self._start(role)
                try:
                    return fn()
                except BaseException as e:
                    failure = self._failure(role, e)
                    if failure is e:
                        raise
                    raise failure from e
        raise AssertionError("unreachable")  # pragma: no cover

    def _failure(self, role: str, error: BaseException) -> BaseException:
        """Classify, count and clean one failed attempt; returns what to raise."""
        if isinstance(error, BudgetExhausted | RunStopped) or not isinstance(error, Exception):
            return error  # not a failed call (or KeyboardInterrupt and the like)
        if is_malformed_reply(error):
            self.count("malformed_replies")
            error = MalformedReply(
                f"the reply was not a usable completion ({type(error).__name__}: {error})")
        self.count("transient_errors" if is_transient(error) else f"{role}_errors")
        return scrubbed(error)

    def text(
        self,
        role: str,
        model: BaseChatModel,
        messages: Sequence[BaseMessage] | str,
        info: dict[str, Any] | None = None,
        **metadata: Any,
    ) -> str:
        """One call returning the reply's text.

        With `info`, the reply's ``output_tokens`` and whether it was ``truncated`` at
        the token cap (finish reason ``length``) are written into it.
        """
        key = self.cache.key(model, messages, "text") if self.cache is not None else None
        if key is not None and (hit := self._cached(role, key)) is not None:
            if info is not None:
                info.update(output_tokens=hit.get("usage", [0, 0])[1],
                            truncated=bool(hit.get("truncated")))
            return str(hit["text"])
        config = self._config(role, metadata)

        def call() -> AIMessage:
            msg = model.invoke(messages, config=config)
            self._account(role, msg)
            return msg  # type: ignore[return-value]

        reply = self._attempt(role, call)
        text = _text_of(reply)
        truncated = _finish_reason(reply) == "length"
        if info is not None:
            info.update(output_tokens=_tokens(reply)[1], truncated=truncated)
        if key is not None:
            self.cache.put(key, {"text": text, "usage": _tokens(reply),  # type: ignore[union-attr]
                                 "truncated": truncated})
            self._paid(key)
        return text

    def invoke(
        self,
        role: str,
        model: BaseChatModel,
        messages: Sequence[BaseMessage],
        config: RunnableConfig | None,
        kwargs: dict[str, Any],
    ) -> BaseMessage:
        """One call of a chat model inside a user's app (`langchain_gradsum.apps`), made
        as the app makes it (its config, its bound kwargs such as tools), with the
        budget, retries, cache and usage of every other call. Returns the reply message."""
        kind = "invoke:" + json.dumps(kwargs, sort_keys=True, default=repr)
        key = self.cache.key(model, messages, kind) if self.cache is not None else None
        if key is not None and (hit := self._cached(role, key)) is not None:
            return messages_from_dict([hit["message"]])[0]

        def call() -> BaseMessage:
            msg = model.invoke(messages, config=config, **kwargs)
            self._account(role, msg)
            return msg

        reply = self._attempt(role, call)
        if key is not None:
            self.cache.put(key, {"message": message_to_dict(reply),  # type: ignore[union-attr]
                                 "usage": _tokens(reply)})
            self._paid(key)
        return reply

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
            tokens_in, tokens_out = hit.get("usage", [0, 0])[:2]
            with self._lock:
                self.paid_now.append(key)
                u = self._usage(role)
                u["calls"] += 1
                u["input_tokens"] += tokens_in
                u["output_tokens"] += tokens_out
            if self._ledger is not None:
                self._ledger.add(role, 1, tokens_in, tokens_out)
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
        """One structured-output call; re-asked on malformed output, else `None`.

        A call that gives no verdict (no reply parsed, or the call failed for good) is
        counted once in ``<role>_failures``.
        """
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

            try:
                out = self._attempt(role, call)
            except Exception as e:
                if not isinstance(e, BudgetExhausted):
                    self.count(f"{role}_failures")  # the call failed for good
                raise
            parsed = out.get("parsed")
            if isinstance(parsed, schema) and out.get("parsing_error") is None:
                if key is not None:
                    self.cache.put(key, {"parsed": parsed.model_dump(),  # type: ignore[union-attr]
                                         "usage": _tokens(out.get("raw"))})
                    self._paid(key)
                return parsed
            self.count(f"{role}_parse_failures")
        self.count(f"{role}_failures")  # no reply parsed, re-asks included
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


def check_failures(caller: LLMCaller, results: Sequence[Any]) -> str | None:
    """The stop reason of a batch of `LLMCaller.map` results, if any.

    Budget exhaustion stops the run (``"budget"``). A call that failed for good costs only
    its own candidate or row, counted once in ``failed_calls`` (jobs that shared one judge
    call share its error). Only when every call failed with an error that is not transient
    (a wrong key, an unknown model: no point going on) is the error raised.
    """
    errors = [r for r in results if isinstance(r, BaseException)]
    failed = [e for e in errors if not isinstance(e, BudgetExhausted)]
    if failed:
        caller.count("failed_calls", len({id(e) for e in failed}))
    if len(failed) < len(errors):
        return "budget"
    if errors and len(errors) == len(results) and not any(is_transient(e) for e in errors):
        raise errors[0]
    return None


class SharedCalls:
    """Identical calls in flight at once are made once (like Go's singleflight).

    The first caller of a key makes the call; the others wait for its result, or get its
    exception (the same object, so the failure counts once). A key is remembered for the
    life of the object: a later caller of it gets the result at once.
    """

    def __init__(self) -> None:
        self._futures: dict[Hashable, Future[Any]] = {}
        self._lock = threading.Lock()

    def call(self, key: Hashable, fn: Callable[[], T], *,
             on_shared: Callable[[], object] | None = None) -> T:
        """`fn()`, or the result of the call already made for `key` (then `on_shared()`
        is called first)."""
        with self._lock:
            future = self._futures.get(key)
            owner = future is None
            if future is None:
                future = self._futures[key] = Future()
        if not owner:
            if on_shared is not None:
                on_shared()
            return future.result()
        try:
            result = fn()
        except BaseException as e:
            future.set_exception(e)
            raise
        future.set_result(result)
        return result


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


def _finish_reason(message: Any) -> str | None:
    meta = getattr(message, "response_metadata", None) or {}
    reason = meta.get("finish_reason") or meta.get("stop_reason")
    return str(reason) if reason else None


def _text_of(message: Any) -> str:
    text = getattr(message, "text", None)
    if isinstance(text, str):  # a property in langchain-core 1.x
        return str(text)
    content = getattr(message, "content", message)
    return content if isinstance(content, str) else str(content)
