"""`GradSumOptimizer`: the drop-in PromptTemplate optimizer (its result: `result.py`)."""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.sqlite import SqliteSaver

from langchain_gradsum._cache import CallCache, open_cache
from langchain_gradsum._interrupt import graceful_sigint, stop_signal
from langchain_gradsum._knobs import MODEL_ROLES, check_knob, knobs, knobs_doc
from langchain_gradsum._llm import RunLedger, redact, resolve_model, run_ledger
from langchain_gradsum._postgres import is_postgres_url, open_postgres_saver
from langchain_gradsum._templates import PromptSlot
from langchain_gradsum.apps import AppRunner, is_app
from langchain_gradsum.beam import calls_needed_for_one_iteration
from langchain_gradsum.data import DataLike, check_variables, load_splits
from langchain_gradsum.evaluators import EvaluatorError, evaluator_name, run_evaluator
from langchain_gradsum.graph import create_gradsum_graph
from langchain_gradsum.result import OptimizationError, OptimizationResult, settings_as_json
from langchain_gradsum.state import (
    Example,
    GradSumContext,
    ModelLike,
    RunContext,
    total_calls,
)

__all__ = ["GradSumOptimizer", "OptimizationError", "OptimizationResult"]

Event = dict[str, Any]


def _default_concurrency(*models: Any) -> int:
    """4 calls in flight; for the embedded model, as many as its server has slots."""
    if any(m == "local" for m in models if isinstance(m, str)):
        from langchain_gradsum.local_llm import server_slots

        return server_slots()
    return 4


class GradSumOptimizer:
    """Optimize a prompt with GRAD-SUM (Austin & Chartock, 2024).

    Takes the knobs of `GradSumContext` as keyword arguments (``model`` may be
    positional). `model` is optional when optimizing a prompt inside an app that has a
    chat model: the app runs its own models, and the judge and optimizer default to the
    app's model. Unlike the context, `max_concurrency` defaults to ``None``: 4, or with
    ``"local"`` the embedded server's parallel slots.

    Args:
    """

    def __init__(self, model: ModelLike | None = None, **knobs: Any) -> None:
        for name in knobs:
            if name not in _KNOBS or name == "model":
                raise TypeError(
                    f"GradSumOptimizer() got an unexpected keyword argument {name!r}")
        judge_model = knobs.pop("judge_model", None)
        optimizer_model = knobs.pop("optimizer_model", None)
        if knobs.get("max_concurrency") is None:
            knobs["max_concurrency"] = _default_concurrency(model, judge_model, optimizer_model)
        if knobs.get("meta_prompts") is None:
            knobs.pop("meta_prompts", None)
        settings = {name: knobs[name] if name in knobs else knob.default
                    for name, knob in _KNOBS.items() if name not in MODEL_ROLES}
        for name, value in settings.items():
            check_knob(name, value)
        evaluators, criteria = settings["evaluators"], settings["criteria"]
        if isinstance(evaluators, str | bytes) or not isinstance(evaluators, Iterable):
            raise TypeError(f"evaluators must be a list of callables, got {evaluators!r}")
        if not criteria and not evaluators:
            raise ValueError(
                "give `criteria` (for the LLM judge) or `evaluators` (programmatic), or both: "
                "nothing would score the outputs"
            )
        settings["evaluators"] = tuple(evaluators)
        for fn in settings["evaluators"]:
            if not callable(fn):
                raise TypeError(f"evaluators must be callables, got {fn!r}")
        settings["criteria"] = criteria or None
        # Resolve models now: an unknown model string fails here, before any call.
        self.model = resolve_model(model, "model") if model is not None else None
        self.judge_model = resolve_model(judge_model, "judge_model") if judge_model else None
        self.optimizer_model = (
            resolve_model(optimizer_model, "optimizer_model") if optimizer_model else None
        )
        self.settings = settings

    # --- public API --------------------------------------------------------------------

    def optimize(
        self,
        prompt: Any,
        train: DataLike,
        val: DataLike | None = None,
        *,
        checkpoint: str | Path | BaseCheckpointSaver | None = None,
        thread_id: str | None = None,
        cache: str | Path | CallCache | None = None,
        stop_file: str | Path | None = None,
        on_event: Callable[[Event], None] | None = None,
        config: RunnableConfig | None = None,
        target: Any = None,
        input_key: str | None = None,
    ) -> OptimizationResult:
        """Optimize `prompt` on `train`; pick the final prompt on `val` (else `train`).

        Args:
            prompt: A str, `PromptTemplate` or `ChatPromptTemplate` with ``{variables}``;
                or an app (any Runnable holding such a prompt as a step: a chain,
                structured output, RAG): each candidate then runs as the whole app, and
                the result's ``best_app`` is the app with the best prompt in place.
            train: Rows ``{"inputs": {...}, "outputs": {...}}``, langsmith Examples, a
                JSONL path, or a LangSmith dataset (name, id, ``Dataset`` or
                `LangSmithDataset`; its ``train`` split when it has one).
            val: Validation rows, same forms (a dataset's validation split when it has
                one). Not given and `train` a dataset with a validation split: that split.
            checkpoint: Persist the run: a SQLite file path, a ``postgresql://`` URL
                (the ``postgres`` extra: LangGraph's ``PostgresSaver``), or any LangGraph
                checkpointer. Running the same call again resumes an interrupted run
                (or returns a finished one) without repeating finished LLM calls.
            thread_id: The run's id in the checkpointer. Default: a hash of the prompt,
                data and settings, so the same call finds its own run.
            cache: Answer identical LLM calls from a SQLite file, a ``postgresql://``
                database (or a `CallCache`). With a checkpoint path or URL and no cache,
                the cache lives in the checkpoint file or database.
            stop_file: If this file appears, the run stops at the next safe point and
                validates what it has (like Ctrl-C).
            on_event: Called with each progress event (iteration, scored, candidate, best).
            config: Extra runnable config (callbacks, tags, metadata) for the run.
            target: With an app holding several prompts: which one to optimize (the
                prompt object, or its name).
            input_key: With an app: invoke it with ``inputs[input_key]`` (e.g. a chain
                that takes the question as a string) instead of the row's ``inputs``.

        The first Ctrl-C stops at the next safe point and returns the validated best
        prompt so far; a second one stops at once and returns the best minibatch
        candidate (``stop_reason="interrupted"``). No LLM call starts after this
        returns; calls in flight finish in the background and are counted.

        Raises:
            ValueError / TypeError: bad input, before any LLM call.
            OptimizationError: the run failed; ``.partial_result`` has what was done.
        """
        run = self._prepare(prompt, train, val, config, checkpoint, thread_id, cache, stop_file,
                            target=target, input_key=input_key)
        last = first = run.initial_state()
        with run_ledger() as ledger:
            try:
                with graceful_sigint(run.stop_event) as interruptible:
                    chunks = interruptible(lambda: run.graph.stream(
                        run.input, run.config, context=run.ctx,
                        stream_mode=["values", "custom"]))
                    for mode, chunk in chunks:
                        last = self._on_chunk(mode, chunk, last, on_event)
            except KeyboardInterrupt:
                ledger.close()  # no call starts from now on; those in flight are counted
                return self._result(_with_ledger(last, first, ledger), run.ctx, run.start,
                                    interrupted="interrupted")
            except Exception as e:
                ledger.close()
                raise OptimizationError(
                    redact(f"optimization failed: {type(e).__name__}: {e}"),
                    self._partial(_with_ledger(last, first, ledger), run.ctx, run.start),
                ) from e
            finally:
                ledger.close()
                run.close()
            return self._result(_with_ledger(last, first, ledger), run.ctx, run.start)

    async def aoptimize(
        self,
        prompt: Any,
        train: DataLike,
        val: DataLike | None = None,
        *,
        checkpoint: BaseCheckpointSaver | None = None,
        thread_id: str | None = None,
        cache: str | Path | CallCache | None = None,
        stop_file: str | Path | None = None,
        on_event: Callable[[Event], None] | None = None,
        config: RunnableConfig | None = None,
        target: Any = None,
        input_key: str | None = None,
    ) -> OptimizationResult:
        """Async `optimize`. `checkpoint` must be a checkpointer instance with async
        support (e.g. LangGraph's ``AsyncSqliteSaver`` or ``InMemorySaver``)."""
        if isinstance(checkpoint, str | Path):
            raise TypeError(
                "aoptimize needs a checkpointer instance (e.g. AsyncSqliteSaver); a path "
                "works with optimize()"
            )
        run = self._prepare(prompt, train, val, config, checkpoint, thread_id, cache, stop_file,
                            target=target, input_key=input_key)
        last = first = await run.ainitial_state()
        with run_ledger() as ledger:
            try:
                async for mode, chunk in run.graph.astream(
                        run.input, run.config, context=run.ctx,
                        stream_mode=["values", "custom"]):
                    last = self._on_chunk(mode, chunk, last, on_event)
            except Exception as e:
                ledger.close()
                raise OptimizationError(
                    redact(f"optimization failed: {type(e).__name__}: {e}"),
                    self._partial(_with_ledger(last, first, ledger), run.ctx, run.start),
                ) from e
            finally:  # also on cancellation: no call starts after this returns
                ledger.close()
                run.close()
            return self._result(_with_ledger(last, first, ledger), run.ctx, run.start)

    # --- internals ---------------------------------------------------------------------

    def context(self, slot: PromptSlot | None = None, app: Any = None) -> RunContext:
        """The graph context these settings make (`app`: an `apps.AppRunner`)."""
        model = self.model
        if model is None and app is not None:  # the app's own model, else the optimizer's
            model = app.model or self.optimizer_model
        return RunContext(model=model, judge_model=self.judge_model,  # type: ignore[arg-type]
                          optimizer_model=self.optimizer_model, prompt_slot=slot,
                          app=app, **self.settings)

    def validate(
        self, prompt: Any, train: DataLike, val: DataLike | None = None, *,
        target: Any = None, input_key: str | None = None,
    ) -> tuple[PromptSlot, str, list[Example], list[Example]]:
        """Check a prompt (or an app, see `optimize`) and data against these settings
        without any LLM call.

        Returns:
            ``(slot, template_text, train_rows, val_rows)``, normalized.

        Raises:
            ValueError / TypeError: what is wrong and how to fix it.
        """
        return self._validate(prompt, train, val, target, input_key)[:4]

    def _validate(
        self, prompt: Any, train: DataLike, val: DataLike | None, target: Any = None,
        input_key: str | None = None,
    ) -> tuple[PromptSlot, str, list[Example], list[Example], AppRunner | None]:
        app = None
        if is_app(prompt):  # a prompt inside a user's app (apps.py)
            app = AppRunner.from_app(prompt, target, input_key)
            prompt = app.prompt
        elif target is not None or input_key is not None:
            raise ValueError("target= and input_key= are for optimizing a prompt inside an "
                             f"app (a Runnable); got a {type(prompt).__name__}")
        if self.model is None and app is None:
            raise ValueError("model= is required: the task model that runs the prompt (a "
                             "BaseChatModel, a 'provider:model' string or 'local'); only a "
                             "prompt inside an app with its own chat model can do without")
        if self.model is None and app is not None and app.model is None \
                and self.optimizer_model is None:
            raise ValueError("the app has no chat model the optimizer can see (a step such as "
                             "prompt | model): pass model= (or optimizer_model= and "
                             "judge_model=) for the judge, critiques and edits")
        slot, text = PromptSlot.from_prompt(prompt)
        variables = slot.all_variables(text)
        # In an app the prompt may hold no placeholder: the app brings the row's input to
        # its model by another way (a graph's system prompt, read from its context).
        if not variables and app is None:
            raise ValueError(
                "the prompt has no {variables}: without one, no example can be filled in. "
                "Add a placeholder such as {question}"
            )
        train_rows, val_rows = load_splits(train, val)
        # An app fills its prompt itself (retrieval...): rows need only what the app takes.
        needed = variables if app is None else [input_key] if input_key is not None else []
        check_variables(train_rows, needed, "train")
        check_variables(val_rows, needed, "val")
        ctx = self.context(slot, app)
        if app is None:  # an app's output type is known only once it runs
            # (names of built-in evaluators were resolved when the context was made)
            _dry_run_evaluators(ctx.evaluators, train_rows[0])  # type: ignore[arg-type]
        if ctx.max_llm_calls is not None:
            need = calls_needed_for_one_iteration(len(train_rows), len(val_rows), ctx)
            if ctx.max_llm_calls < need:
                raise ValueError(
                    f"max_llm_calls={ctx.max_llm_calls} is too small for one iteration with "
                    f"these settings: it needs at least {need} (scoring the initial prompt, one "
                    "round of gradients, summary and edits, scoring the new prompts, and the "
                    f"final validation of up to {ctx.beam_width + 1} prompts on "
                    f"{len(val_rows) or len(train_rows)} rows). Raise max_llm_calls or lower "
                    "minibatch_size, candidates_per_prompt, beam_width or the validation size."
                )
        return slot, text, train_rows, val_rows, app

    def _prepare(
        self,
        prompt: Any,
        train: DataLike,
        val: DataLike | None,
        config: RunnableConfig | None,
        checkpoint: str | Path | BaseCheckpointSaver | None = None,
        thread_id: str | None = None,
        cache: str | Path | CallCache | None = None,
        stop_file: str | Path | None = None,
        target: Any = None,
        input_key: str | None = None,
    ) -> _PreparedRun:
        slot, text, train_rows, val_rows, app = self._validate(prompt, train, val, target,
                                                               input_key)
        ctx = self.context(slot, app)
        inputs = {"prompt": text, "train": train_rows, "val": val_rows}
        run = _PreparedRun(ctx=ctx, input=inputs)
        if thread_id is None:  # an app's run is told apart by where its prompt sits
            thread_id = _run_fingerprint(
                inputs if app is None else {**inputs, "app": app.describe()}, self)
        saver: BaseCheckpointSaver | None
        if is_postgres_url(checkpoint):
            # LangGraph's PostgresSaver, and the call cache in the same database
            saver, close = open_postgres_saver(str(checkpoint))
            run.closers.append(close)
            if cache is None:
                cache = str(checkpoint)
        elif isinstance(checkpoint, str | Path):
            conn = sqlite3.connect(str(checkpoint), check_same_thread=False)
            run.closers.append(conn.close)
            saver = SqliteSaver(conn)
            if cache is None:
                cache = Path(checkpoint)
        else:
            saver = checkpoint
        if isinstance(cache, str | Path):
            try:
                cache = open_cache(cache)
            except BaseException:
                run.close()
                raise
            run.closers.append(cache.close)
        if cache is not None and saver is not None:
            cache.run_id = thread_id  # calls paid before a crash still count on resume
        run.ctx.cache = cache
        run.ctx.should_stop = stop_signal(run.stop_event, stop_file)
        run.graph = create_gradsum_graph(checkpointer=saver)
        run_config: RunnableConfig = {
            "run_name": "GradSum",
            "recursion_limit": 6 * (ctx.max_iterations + 2) + 10,
            "metadata": {"gradsum_beam_width": ctx.beam_width,
                         "gradsum_max_iterations": ctx.max_iterations},
        }
        # No graph-level max_concurrency: LangGraph's streaming uses one of those
        # slots itself (a limit of 1 deadlocks); LLMCaller bounds the calls instead.
        if config:
            run_config = {**config, **run_config,
                          "metadata": {**config.get("metadata", {}), **run_config["metadata"]}}
            if config.get("run_name"):
                run_config["run_name"] = config["run_name"]
        if saver is not None:
            run_config["configurable"] = {**run_config.get("configurable", {}),
                                          "thread_id": thread_id}
        run.config = run_config
        return run

    @staticmethod
    def _on_chunk(mode: str, chunk: Any, last: dict[str, Any],
                  on_event: Callable[[Event], None] | None) -> dict[str, Any]:
        if mode == "values":
            return chunk
        if on_event is not None:
            on_event({**chunk, "calls": chunk.get("calls", total_calls(last.get("usage")))})
        return last

    def _result(self, state: dict[str, Any], ctx: GradSumContext, start: float,
                interrupted: str | None = None) -> OptimizationResult:
        return OptimizationResult.from_state(
            state, ctx, stop_reason=interrupted, wall_time_s=round(time.monotonic() - start, 3),
            settings=self.describe_settings())

    def _partial(self, state: dict[str, Any], ctx: GradSumContext,
                 start: float) -> OptimizationResult | None:
        """What an `OptimizationError` keeps (`None` when the run had not even an input)."""
        if not state.get("candidates") and not state.get("prompt"):
            return None
        return self._result(state, ctx, start, interrupted="error")

    def describe_settings(self) -> dict[str, Any]:
        """The settings as JSON-able data (for results, reports and benchmarks)."""
        return settings_as_json({**self.settings, **{role: getattr(self, role)
                                              for role in MODEL_ROLES}})


@dataclass
class _PreparedRun:
    """One prepared run: graph, input (or `None` to resume), context and config."""

    ctx: RunContext
    input: dict[str, Any] | None
    graph: Any = None
    config: RunnableConfig = field(default_factory=dict)  # type: ignore[assignment]
    stop_event: threading.Event = field(default_factory=threading.Event)
    closers: list[Callable[[], None]] = field(default_factory=list)
    start: float = field(default_factory=time.monotonic)

    def _resume_from(self, snapshot: Any) -> dict[str, Any]:
        saved = snapshot.values if snapshot is not None else None
        if not saved:
            return dict(self.input or {})
        assert self.input is not None
        if saved.get("prompt") != self.input["prompt"] or saved.get("train") != self.input[
            "train"
        ]:
            raise ValueError(
                f"thread_id {self.config['configurable']['thread_id']!r} holds a different "
                "run (another prompt or data) in this checkpoint; pass another thread_id"
            )
        self.input = None  # resume where it stopped (a finished run just returns)
        return dict(saved)

    def initial_state(self) -> dict[str, Any]:
        if "thread_id" not in self.config.get("configurable", {}):
            return dict(self.input or {})
        return self._resume_from(self.graph.get_state(self.config))

    async def ainitial_state(self) -> dict[str, Any]:
        if "thread_id" not in self.config.get("configurable", {}):
            return dict(self.input or {})
        return self._resume_from(await self.graph.aget_state(self.config))

    def close(self) -> None:
        for close in reversed(self.closers):
            close()


def _run_fingerprint(inputs: dict[str, Any], optimizer: GradSumOptimizer) -> str:
    """A stable id for (prompt, data, settings), so re-running a call resumes it."""
    settings = {k: v for k, v in optimizer.settings.items() if k != "evaluators"}
    settings["evaluators"] = [evaluator_name(f) for f in optimizer.settings["evaluators"]]
    blob = json.dumps([inputs, settings], sort_keys=True, default=repr)
    return "gradsum-" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _with_ledger(last: dict[str, Any], first: dict[str, Any],
                 ledger: RunLedger) -> dict[str, Any]:
    """`last` with the usage and counters of every call this process made.

    The state holds a step's calls only once the step is done; a step that failed, or
    that a hard Ctrl-C left behind, made calls too. What the state lacks is the
    ledger's count on top of where this run started (`first`, for a resumed run).
    """
    with ledger.lock:
        made, counted = copy.deepcopy(ledger.usage), dict(ledger.counters)
    usage = {role: dict(u) for role, u in (last.get("usage") or {}).items()}
    before = first.get("usage") or {}
    for role, u in made.items():
        cur = usage.setdefault(role, {"calls": 0, "input_tokens": 0, "output_tokens": 0})
        for k in ("calls", "input_tokens", "output_tokens"):
            cur[k] = max(cur.get(k, 0), before.get(role, {}).get(k, 0) + u[k])
    counters = dict(last.get("counters") or {})
    before_c = first.get("counters") or {}
    for key, n in counted.items():
        counters[key] = max(counters.get(key, 0), before_c.get(key, 0) + n)
    return {**last, "usage": usage, "counters": counters}


def _dry_run_evaluators(evaluators: Iterable[Callable[..., Any]], row: Example) -> None:
    """Call each evaluator once with the reference as the output, so a broken
    evaluator fails now and not after calls were paid for."""
    ref = row["outputs"]
    fake_output = str(ref.get("answer", next(iter(ref.values()), ""))) if ref else ""
    for fn in evaluators:
        try:
            run_evaluator(fn, row["inputs"], fake_output, ref)
        except Exception as e:
            cause = e.__cause__ if isinstance(e, EvaluatorError) and e.__cause__ else e
            raise ValueError(
                f"evaluator {evaluator_name(fn)!r} failed a dry run on train row 0 (with the "
                f"reference answer as the output): {type(cause).__name__}: {cause}"
            ) from None


_KNOBS = knobs()
# The constructor's signature and the docstring's knob list, from `GradSumContext`.
_AUTO: dict[str, Any] = {"max_concurrency": None, "meta_prompts": None}
"""Knobs whose optimizer default differs from the context's (resolved in `__init__`)."""
setattr(GradSumOptimizer.__init__, "__signature__", inspect.Signature([  # noqa: B010
    inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                      annotation=ModelLike | None),
    *(inspect.Parameter(k.name, inspect.Parameter.KEYWORD_ONLY,
                        default=_AUTO.get(k.name, k.default),
                        annotation=k.hint | None if k.name in _AUTO else k.hint)
      for k in _KNOBS.values() if k.name != "model"),
], return_annotation=None))
GradSumOptimizer.__doc__ = (GradSumOptimizer.__doc__ or "").rstrip(" ") + knobs_doc(
    overrides={"model": "None", "max_concurrency": "None"})
