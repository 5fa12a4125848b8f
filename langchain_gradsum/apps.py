"""Optimize a prompt inside a LangChain app: find it, swap a candidate in, run the app.

An *app* is any `Runnable` that holds the prompt to optimize as one of its steps:
``prompt | model | StrOutputParser()``, ``prompt | model.with_structured_output(Answer)``,
a RAG chain ``{"context": retriever | format_docs, "question": RunnablePassthrough()} |
prompt | model | parser``, nested sequences, parallels, bound or configured runnables.

- `AppRunner.from_app` finds the `PromptTemplate` / `ChatPromptTemplate` steps and picks
  one (``target=`` the prompt object or its name); it raises a `ValueError` listing the
  prompts found when none or several could be meant, before any LLM call.
- `AppRunner.build` rebuilds the app with a candidate prompt in place (shallow copies
  of the containers on the way to it; the user's app is never mutated).
- `AppRunner.run` runs the whole app for one row. Each of the app's chat models is
  swapped, in the rebuilt copy, for a stand-in that makes the call through the run's
  `LLMCaller` (budget, retries, call cache, usage: role ``generate``). A model the
  optimizer cannot see (called inside a function or a graph) is still counted against
  ``max_llm_calls`` through a callback, which stops it from starting once the budget
  is spent; such calls are not retried or cached by the optimizer.
- The app's output may be a string, a message (its text), a dict or a pydantic object:
  evaluators get it as it is (``outputs={"output": value}``); critiques, the judge,
  the records and the report show a non-string as JSON.
"""

from __future__ import annotations

import contextvars
import importlib
import json
import os
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel, BaseLanguageModel
from langchain_core.messages import BaseMessage
from langchain_core.prompts import BasePromptTemplate, ChatPromptTemplate, PromptTemplate
from langchain_core.runnables import (
    Runnable,
    RunnableBinding,
    RunnableConfig,
    RunnableParallel,
    RunnableSequence,
)
from langchain_core.runnables.config import ensure_config, merge_configs
from langchain_core.runnables.configurable import RunnableConfigurableFields
from pydantic import BaseModel

from langchain_gradsum._llm import (
    BudgetExhausted,
    LLMCaller,
    RunStopped,
    _text_of,
    _tokens,
    redact,
    without_sdk_retries,
)
from langchain_gradsum._templates import PromptSlot

__all__ = ["AppRunner", "FoundPrompt", "find_prompts", "is_app", "load_app"]

_PREVIEW = 70


def is_app(obj: Any) -> bool:
    """Whether `obj` is an app to optimize a prompt inside (a Runnable, not a bare prompt)."""
    return isinstance(obj, Runnable) and not isinstance(obj, BasePromptTemplate)


@dataclass(frozen=True)
class FoundPrompt:
    """A prompt step of an app: the object, where it is, and the names it goes by."""

    prompt: PromptTemplate | ChatPromptTemplate
    path: str
    """Where it sits, e.g. ``app[2]`` (third step) or ``app[0]['context'][1]``."""
    names: tuple[str, ...] = ()
    """Its ``name`` and the ``run_name`` of bindings around it (``with_config``)."""

    def describe(self) -> str:
        kind = type(self.prompt).__name__
        name = f" name={self.names[0]!r}" if self.names else " (no name)"
        try:
            _, text = PromptSlot.from_prompt(self.prompt)
            flat = " ".join(text.split())
            shown = repr(flat if len(flat) <= _PREVIEW else flat[:_PREVIEW] + "...")
        except (ValueError, TypeError) as e:
            shown = f"(cannot be optimized: {e})"
        return f"{self.path}: {kind}{name} {shown}"


@dataclass
class _Found:
    prompts: list[FoundPrompt] = field(default_factory=list)
    models: list[tuple[str, BaseChatModel]] = field(default_factory=list)
    """Chat models the optimizer can route through its caller, in step order."""
    prompt_order: dict[int, int] = field(default_factory=dict)
    """id(prompt) -> how many models had been seen before it (to find the one it feeds)."""


# --- walking an app ---------------------------------------------------------------------

Leaf = BasePromptTemplate | BaseChatModel
Visit = Callable[[Any, str, tuple[str, ...], bool], Any]
"""visit(leaf, path, names, swappable) -> a replacement, or None to keep the leaf."""


def _walk(node: Any, visit: Visit, path: str = "app", names: tuple[str, ...] = (),
          swappable: bool = True, depth: int = 0) -> Any:
    """`node` with `visit` applied to each prompt and chat model in it; containers on
    the way to a replaced leaf are shallow copies, everything else is the same object.

    `swappable` is False below a `RunnableConfigurableFields`, which re-creates its
    default from its fields at invoke time (a stand-in there would be lost)."""
    if depth > 60:
        return node
    if isinstance(node, Leaf):
        new = visit(node, path, names, swappable)
        return node if new is None else new
    if isinstance(node, BaseLanguageModel) or not isinstance(node, Runnable):
        return node  # a completion model (counted by callback), or not a runnable
    if isinstance(node, RunnableSequence):
        steps = node.steps
        new_steps = [_walk(s, visit, f"{path}[{i}]", (), swappable, depth + 1)
                     for i, s in enumerate(steps)]
        if all(a is b for a, b in zip(steps, new_steps, strict=True)):
            return node
        return node.model_copy(update={"first": new_steps[0], "middle": new_steps[1:-1],
                                       "last": new_steps[-1]})
    if not isinstance(node, BaseModel):
        return node  # RunnableLambda and other opaque runnables: nothing to see inside
    update: dict[str, Any] = {}
    for name in type(node).model_fields:
        value = getattr(node, name, None)
        sub_names: tuple[str, ...] = ()
        sub_path = f"{path}.{name}"
        sub_swappable = swappable
        if isinstance(node, RunnableBinding) and name == "bound":
            run_name = (node.config or {}).get("run_name")
            sub_names, sub_path = names + ((run_name,) if run_name else ()), path
        elif isinstance(node, RunnableParallel) and name == "steps__":
            sub_path = path
        elif isinstance(node, RunnableConfigurableFields) and name == "default":
            sub_names, sub_path, sub_swappable = names, path, False
        elif name == "default":
            sub_names, sub_path = names, path
        new = _walk_value(value, visit, sub_path, sub_names, sub_swappable, depth + 1)
        if new is not value:
            update[name] = new
    return node.model_copy(update=update) if update else node


def _walk_value(value: Any, visit: Visit, path: str, names: tuple[str, ...],
                swappable: bool, depth: int) -> Any:
    if isinstance(value, Runnable):
        return _walk(value, visit, path, names, swappable, depth)
    if isinstance(value, list | tuple):
        items = [_walk_value(v, visit, f"{path}[{i}]", (), swappable, depth + 1)
                 for i, v in enumerate(value)]
        if all(a is b for a, b in zip(value, items, strict=True)):
            return value
        return type(value)(items) if isinstance(value, tuple) else items
    if isinstance(value, Mapping):
        out = {k: _walk_value(v, visit, f"{path}[{k!r}]", (), swappable, depth + 1)
               for k, v in value.items()}
        if all(out[k] is v for k, v in value.items()):
            return value
        return out
    return value


def _find(app: Runnable) -> _Found:
    found = _Found()
    seen: set[int] = set()

    def visit(leaf: Any, path: str, names: tuple[str, ...], swappable: bool) -> None:
        if isinstance(leaf, BaseChatModel):
            if swappable:
                found.models.append((path, leaf))
        elif isinstance(leaf, PromptTemplate | ChatPromptTemplate) and id(leaf) not in seen:
            seen.add(id(leaf))  # one object used in two places is one prompt
            all_names = ((leaf.name,) if leaf.name else ()) + names
            found.prompts.append(FoundPrompt(leaf, path, all_names))
            found.prompt_order[id(leaf)] = len(found.models)
        return None

    _walk(app, visit)
    return found


def find_prompts(app: Runnable) -> list[FoundPrompt]:
    """The `PromptTemplate` and `ChatPromptTemplate` steps of `app`, in step order."""
    return _find(app).prompts


# --- the runner -------------------------------------------------------------------------

_IN_CALLER: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "gradsum_app_model_call", default=False)
"""True while a stand-in makes its model call (the callback then does not count it again)."""


class AppRunner:
    """One app and the prompt in it being optimized (`GradSumContext.app`)."""

    def __init__(self, app: Runnable, found: _Found, target: FoundPrompt,
                 input_key: str | None) -> None:
        self.app = app
        self.target = target
        self.prompts = found.prompts
        self.input_key = input_key
        self.slot, self.text = PromptSlot.from_prompt(target.prompt)
        self.model_paths = [path for path, _ in found.models]
        after = found.models[found.prompt_order[id(target.prompt)]:]
        models = after or found.models
        self.model: BaseChatModel | None = models[0][1] if models else None
        """The app's chat model the prompt feeds (the first one after it; else the first):
        the default judge and optimizer model."""
        self._values: dict[str, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_app(cls, app: Any, target: Any = None, input_key: str | None = None
                 ) -> AppRunner:
        """Find the prompt to optimize in `app`.

        Args:
            app: A Runnable holding the prompt as one of its steps.
            target: Which prompt, when there are several: the prompt object itself, or
                its name (``name=`` of the prompt, or ``run_name`` of a ``with_config``).
            input_key: Invoke the app with ``inputs[input_key]`` instead of the row's
                ``inputs`` dict (for a chain that takes a single string).

        Raises:
            ValueError: no prompt, several and no `target`, or a `target` that matches
                none or several; the message lists the prompts found.
        """
        if not is_app(app):
            raise TypeError(f"the app must be a LangChain Runnable, got {type(app).__name__}")
        if input_key is not None and not isinstance(input_key, str):
            raise TypeError(f"input_key must be a str, got {input_key!r}")
        found = _find(app)
        prompts = found.prompts
        if not prompts:
            raise ValueError(
                f"the app ({type(app).__name__}) holds no PromptTemplate or ChatPromptTemplate "
                "the optimizer can reach: the prompt must be a step of the app (in a sequence, "
                "a parallel, a binding), not built inside a function (RunnableLambda) or a "
                "graph node. E.g. app = prompt | model | StrOutputParser()"
            )
        listing = "\n".join(f"  - {p.describe()}" for p in prompts)
        if target is None:
            if len(prompts) > 1:
                raise ValueError(
                    f"the app holds {len(prompts)} prompts; say which one to optimize with "
                    "target= (the prompt object, or its name; name a prompt with "
                    "PromptTemplate.from_template(..., name='answer') or "
                    f"prompt.with_config(run_name='answer')):\n{listing}"
                )
            chosen = prompts[0]
        else:
            if not isinstance(target, str | BasePromptTemplate):
                raise TypeError(
                    f"target must be a prompt of the app or its name, got {type(target).__name__}")
            hits = [p for p in prompts if p.prompt is target]
            if not hits and isinstance(target, str):
                hits = [p for p in prompts if target in p.names]
            elif not hits:
                hits = [p for p in prompts if p.prompt == target]
            shown = repr(target) if isinstance(target, str) else type(target).__name__
            if not hits:
                raise ValueError(f"target={shown} is none of the app's {len(prompts)} "
                                 f"prompt(s):\n{listing}")
            if len(hits) > 1:
                raise ValueError(f"target={shown} matches {len(hits)} of the app's prompts; "
                                 f"give each a distinct name, or pass the object:\n{listing}")
            chosen = hits[0]
        return cls(app, found, chosen, input_key)

    @property
    def prompt(self) -> PromptTemplate | ChatPromptTemplate:
        """The prompt being optimized, as it is in the user's app."""
        return self.target.prompt

    @property
    def calls_per_run(self) -> int:
        """Model calls one run of the app is expected to make (for budget planning):
        one per chat model step found, at least 1."""
        return max(1, len(self.model_paths))

    def describe(self) -> dict[str, Any]:
        """JSON-able facts about the app (settings, run fingerprint)."""
        return {"type": type(self.app).__name__, "target": self.target.path,
                "target_names": list(self.target.names), "prompts": len(self.prompts),
                "models": self.model_paths, "input_key": self.input_key}

    def prompt_for(self, template: str) -> Any:
        """The target prompt rebuilt with `template` (same type, same name)."""
        new = self.slot.rebuild(template)
        if self.prompt.name and isinstance(new, BasePromptTemplate):
            new = new.model_copy(update={"name": self.prompt.name})
        return new

    def build(self, template: str,
              call: Callable[[BaseChatModel, Any, RunnableConfig, dict[str, Any]], Any]
              | None = None) -> Runnable:
        """The app with `template` in the target prompt; the user's app is unchanged.
        With `call`, each chat model is a stand-in that makes its calls through `call`."""
        old, new = self.prompt, self.prompt_for(template)

        def visit(leaf: Any, path: str, names: tuple[str, ...], swappable: bool) -> Any:
            if leaf is old:
                return new
            if call is not None and swappable and isinstance(leaf, BaseChatModel):
                return _CountedModel(without_sdk_retries(leaf), call)
            return None

        return _walk(self.app, visit)

    def app_input(self, inputs: Mapping[str, Any]) -> Any:
        return inputs[self.input_key] if self.input_key is not None else dict(inputs)

    def run(self, caller: LLMCaller, template: str, inputs: Mapping[str, Any], key: str,
            **metadata: Any) -> dict[str, Any]:
        """Run the app with `template` for one row; returns its record (output as text,
        tokens). A model call that fails for good raises, as for a bare prompt; another
        error of the app (a parser, the user's code) becomes the row's ``error``."""
        info: dict[str, Any] = {"output_tokens": 0, "truncated": False}
        lock = threading.Lock()
        model_errors: list[BaseException] = []

        def add(message: Any) -> None:
            with lock:
                info["output_tokens"] += _tokens(message)[1]
                meta = getattr(message, "response_metadata", None) or {}
                if (meta.get("finish_reason") or meta.get("stop_reason")) == "length":
                    info["truncated"] = True

        def call(model: BaseChatModel, value: Any, config: RunnableConfig,
                 kwargs: dict[str, Any]) -> Any:
            messages = model._convert_input(value).to_messages()
            token = _IN_CALLER.set(True)
            try:
                reply = caller.invoke("generate", model, messages, config, kwargs)
            except BaseException as e:
                model_errors.append(e)
                raise
            finally:
                _IN_CALLER.reset(token)
            add(reply)
            return reply

        unseen = _UnseenModelCalls(caller, add, model_errors)
        config = merge_configs(caller._config("generate", metadata), {"callbacks": [unseen]})
        try:
            value = self.build(template, call).invoke(self.app_input(inputs), config)
        except BaseException as e:
            if not isinstance(e, Exception) or isinstance(e, BudgetExhausted | RunStopped):
                raise
            if any(e is m for m in model_errors):
                if any(e is u for u in unseen.errors):  # not seen by the caller: count, clean
                    failure = caller._failure("generate", e)
                    if failure is not e:
                        raise failure from e
                raise
            caller.count("app_errors")
            return {"error": redact(f"the app raised {type(e).__name__}: {e}")[:500], **info}
        if isinstance(value, BaseMessage):
            value = _text_of(value)
        with self._lock:
            self._values[key] = value
        record: dict[str, Any] = {"output": show(value), **info}
        if not isinstance(value, str):
            record["output_type"] = _type_tag(value)
        return record

    def value(self, record: Mapping[str, Any], key: str) -> Any:
        """The app's output for a record, as evaluators get it: the object the app
        returned (after a resume from a checkpoint: rebuilt from its JSON)."""
        with self._lock:
            if key in self._values:
                return self._values[key]
        tag = record.get("output_type")
        if not tag or "output" not in record:
            return record.get("output")
        data = json.loads(record["output"])
        if tag.startswith("pydantic:"):
            module, _, qualname = tag[len("pydantic:"):].partition(":")
            try:
                cls: Any = importlib.import_module(module)
                for part in qualname.split("."):
                    cls = getattr(cls, part)
                return cls.model_validate(data)
            except Exception:
                return data  # a class defined in a function: its fields as a dict
        return data


class _CountedModel(Runnable[Any, Any]):
    """Stands in for one of the app's chat models in a rebuilt app: each call goes
    through the run's caller (budget, retries, cache, usage)."""

    def __init__(self, model: BaseChatModel,
                 call: Callable[[BaseChatModel, Any, RunnableConfig, dict[str, Any]], Any]
                 ) -> None:
        self.model = model
        self.name = model.get_name()
        self._call = call

    @property
    def InputType(self) -> Any:  # noqa: N802 - Runnable's API
        return self.model.InputType

    @property
    def OutputType(self) -> Any:  # noqa: N802 - Runnable's API
        return self.model.OutputType

    def get_input_schema(self, config: RunnableConfig | None = None) -> Any:
        return self.model.get_input_schema(config)

    def get_output_schema(self, config: RunnableConfig | None = None) -> Any:
        return self.model.get_output_schema(config)

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call(self.model, input, ensure_config(config), kwargs)


class _UnseenModelCalls(BaseCallbackHandler):
    """Counts the model calls of an app that do not go through a stand-in (a model
    called inside a function or a graph): each takes one call from the budget as it
    starts, and none starts once the budget is spent (the error stops it)."""

    raise_error = True
    run_inline = True

    def __init__(self, caller: LLMCaller, add: Callable[[Any], None],
                 model_errors: list[BaseException]) -> None:
        self.caller, self.add, self.model_errors = caller, add, model_errors
        self.runs: set[UUID] = set()
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()

    def _begin(self, run_id: UUID) -> None:
        if _IN_CALLER.get():
            return
        self.caller._start("generate")  # raises BudgetExhausted: the call does not start
        self.caller.count("app_unseen_calls")
        with self._lock:
            self.runs.add(run_id)

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID,
                            **kwargs: Any) -> None:
        self._begin(run_id)

    def on_llm_start(self, serialized: Any, prompts: Any, *, run_id: UUID,
                     **kwargs: Any) -> None:
        self._begin(run_id)

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if run_id in self.runs:
            gens = getattr(response, "generations", None) or [[]]
            message = getattr(gens[0][0], "message", None) if gens and gens[0] else None
            if message is not None:
                self.caller._account("generate", message)
                self.add(message)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        if run_id in self.runs:
            with self._lock:
                self.errors.append(error)
                self.model_errors.append(error)


# --- showing outputs --------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, BaseMessage):
        return _text_of(value)
    if hasattr(value, "page_content"):  # a Document
        return {"page_content": value.page_content, "metadata": getattr(value, "metadata", {})}
    return str(value)


def show(value: Any) -> str:
    """An app output as text: a string as it is, anything else as JSON."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=_jsonable)
    except (TypeError, ValueError):
        return str(value)


def _type_tag(value: Any) -> str:
    if isinstance(value, BaseModel):
        cls = type(value)
        return f"pydantic:{cls.__module__}:{cls.__qualname__}"
    return "json"


# --- the CLI's --app --------------------------------------------------------------------


def load_app(spec: str) -> Runnable:
    """The app named by ``module:attribute`` (the module imported from the current
    directory or the path; the attribute may be dotted).

    Raises:
        ValueError: a malformed spec, a module that fails to import, a missing
            attribute, or an attribute that is not a Runnable.
    """
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"--app must be module:attribute (e.g. myapp.chains:qa_chain), "
                         f"got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module)
    except Exception as e:
        raise ValueError(f"--app: cannot import {module!r}: {type(e).__name__}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"--app: {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not is_app(obj):
        raise ValueError(f"--app: {spec} is a {type(obj).__name__}, not a LangChain Runnable "
                         "(an app such as prompt | model | StrOutputParser())")
    return obj
