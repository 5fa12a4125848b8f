"""`GradSumOptimizer`: the drop-in PromptTemplate optimizer, and its result."""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import hashlib
import json
import math
import queue
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.sqlite import SqliteSaver

from langchain_gradsum._cache import CallCache
from langchain_gradsum._llm import RunLedger, redact, resolve_model, run_ledger
from langchain_gradsum._templates import PromptSlot
from langchain_gradsum.apps import AppRunner, is_app
from langchain_gradsum.beam import calls_needed_for_one_iteration
from langchain_gradsum.data import DataLike, check_variables, load_examples
from langchain_gradsum.evaluators import EvaluatorError, evaluator_name, run_evaluator
from langchain_gradsum.graph import create_gradsum_graph
from langchain_gradsum.prompts import MetaPrompts
from langchain_gradsum.state import (
    Candidate,
    Example,
    GradSumContext,
    GradSumState,
    RoleUsage,
)

__all__ = ["GradSumOptimizer", "OptimizationError", "OptimizationResult"]

Event = dict[str, Any]


@dataclass
class OptimizationResult:
    """What a run produced. ``best_prompt`` has the type and variables of the input prompt."""

    best_prompt: Any
    best_template: str
    best_id: str
    best_score: float | None
    """Score of the best prompt on `split` (validation when given)."""
    initial_score: float | None
    """Score of the initial prompt on the same split."""
    split: str
    stop_reason: str
    iterations: int
    candidates: dict[str, Candidate]
    """Every candidate written, with parent, iteration, summary, gradients and scores."""
    usage: dict[str, RoleUsage]
    counters: dict[str, int]
    wall_time_s: float
    records: dict[str, Any] = field(default_factory=dict, repr=False)
    """Every output and evaluation, by ``"candidate|split|row"``."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The run's knobs (JSON-able: evaluators by name, meta-prompts as text)."""
    best_app: Any = field(default=None, repr=False)
    """When an app was optimized: the same app with the best prompt in place, ready to
    invoke (the app passed in is not changed); else ``None``."""

    @property
    def total_calls(self) -> int:
        return sum(u["calls"] for u in self.usage.values())

    @property
    def total_tokens(self) -> int:
        return sum(u["input_tokens"] + u["output_tokens"] for u in self.usage.values())

    @property
    def history(self) -> list[list[Candidate]]:
        """Candidates by the iteration that wrote them (index 0 holds the initial prompt)."""
        out: list[list[Candidate]] = [[] for _ in range(self.iterations + 1)]
        for cand in self.candidates.values():
            if cand["iteration"] < len(out):
                out[cand["iteration"]].append(cand)
        return out

    def lineage(self, candidate_id: str | None = None) -> list[Candidate]:
        """The chain of candidates from the initial prompt to `candidate_id` (default best)."""
        chain: list[Candidate] = []
        cid: str | None = candidate_id or self.best_id
        while cid is not None:
            chain.append(self.candidates[cid])
            cid = self.candidates[cid]["parent_id"]
        return chain[::-1]

    def mean_output_tokens(self, candidate_id: str | None = None) -> float | None:
        """Mean generated tokens per task call of a candidate (default: the best) on the
        split it was picked on; ``None`` where the provider reported no token counts.
        On a CPU, output tokens are most of a call's time."""
        cid = candidate_id or self.best_id
        split = "val" if self.split == "val" else "train"
        counts = [r["output_tokens"] for k, r in self.records.items()
                  if k.startswith(f"{cid}|{split}|") and "output_tokens" in r]
        return sum(counts) / len(counts) if counts else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_template": self.best_template,
            "best_id": self.best_id,
            "best_score": self.best_score,
            "initial_score": self.initial_score,
            "split": self.split,
            "stop_reason": self.stop_reason,
            "iterations": self.iterations,
            "total_calls": self.total_calls,
            "total_tokens": self.total_tokens,
            "wall_time_s": self.wall_time_s,
            "mean_output_tokens": {"initial": self.mean_output_tokens("c0"),
                                   "best": self.mean_output_tokens()},
            "usage": self.usage,
            "counters": self.counters,
            "candidates": self.candidates,
            "records": self.records,
            "settings": self.settings,
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(indent=2), encoding="utf-8")
        return path


def _default_concurrency(*models: Any) -> int:
    """4 calls in flight; for the embedded model, as many as its server has slots."""
    if any(m == "local" for m in models if isinstance(m, str)):
        from langchain_gradsum.local_llm import server_slots

        return server_slots()
    return 4


class OptimizationError(RuntimeError):
    """The run failed; `partial_result` keeps everything finished before the failure."""

    def __init__(self, message: str, partial_result: OptimizationResult | None) -> None:
        super().__init__(message)
        self.partial_result = partial_result


class GradSumOptimizer:
    """Optimize a prompt with GRAD-SUM (Austin & Chartock, 2024).

    Args:
        model: Task model: a `BaseChatModel`, a ``"provider:model"`` string, or
            ``"local"`` for the embedded Qwen2.5-Coder-1.5B server. Optional when
            optimizing a prompt inside an app that has a chat model: the app runs its
            own models, and the judge and optimizer default to the app's model.
        task_description: Plain-language description of the task.
        criteria: Evaluation criteria for the LLM judge (scores 0..1). Optional
            when `evaluators` are given; when both are given, scores are averaged.
        evaluators: Programmatic evaluators, LangSmith/openevals style.
        judge_model: Model of the judge (default `model`).
        optimizer_model: Model of gradient, summary and edit (default `model`).
        beam_width: Candidates kept per iteration [3].
        candidates_per_prompt: New prompts written per beam member per iteration [2].
        max_iterations: Edit rounds [10].
        minibatch_size: Training rows scored per iteration, fresh each time [10].
        max_gradients_per_prompt: Cap on critiques per candidate per iteration (default: all).
        patience: Stop after this many iterations without a better best.
        target_score: Stop once the best minibatch score reaches this.
        max_llm_calls: Hard cap on LLM calls (retries included), never exceeded.
        max_concurrency: LLM calls in flight at once (default 4; with ``"local"``, the
            embedded server's parallel slots).
        max_retries: Retries of timeouts, 429s and 5xx errors.
        summarize: ``False`` runs the paper's ablation: one edit per gradient, no summary.
        repair_missing_variables: An edited prompt that lost a ``{variable}`` gets it
            appended at the end (counted as repaired); ``False`` rejects it instead.
        reject_copied_examples: Reject an edited prompt that pastes in 8+ consecutive
            words of a training or validation input (it would overfit that example and
            leak data); ``False`` allows few-shot style prompts built from the data.
        retry_unusable_edits: Re-ask the editor once, saying why, when its new prompt
            was rejected or repeats an earlier prompt (the call comes out of the
            scoring budget of the child that did not come about).
        screen_size: Score a new child first on this many of the failures it was
            written for; only a child strictly better than its parent there is scored
            on the whole batch (0 scores every child on the batch, as the paper does).
        instruction_edits: A parent's first child adds one instruction to it (short and
            reliable for a small editor model); the other children are rewrites.
        prefer_short_outputs: At equal validation score, pick the prompt whose outputs
            are shorter (fewer generated tokens: cheaper and faster).
        form_progress: At equal score, rank higher the prompt whose replies take the
            expected answers' form (an option label, yes/no, a number) on more rows,
            in screens and in the beam: progress a 0/1 metric cannot see yet.
        seed: Seed of the minibatch sampling.
        meta_prompts: Override the judge/gradient/summary/edit prompts.
    """

    def __init__(
        self,
        model: str | BaseChatModel | None = None,
        *,
        task_description: str = "",
        criteria: str | None = None,
        evaluators: Sequence[Callable[..., Any]] = (),
        judge_model: str | BaseChatModel | None = None,
        optimizer_model: str | BaseChatModel | None = None,
        beam_width: int = 3,
        candidates_per_prompt: int = 2,
        max_iterations: int = 10,
        minibatch_size: int = 10,
        max_gradients_per_prompt: int | None = None,
        patience: int | None = None,
        target_score: float | None = None,
        max_llm_calls: int | None = None,
        max_concurrency: int | None = None,
        max_retries: int = 2,
        max_parse_retries: int = 1,
        retry_backoff: float = 1.0,
        summarize: bool = True,
        repair_missing_variables: bool = True,
        reject_copied_examples: bool = True,
        retry_unusable_edits: bool = True,
        screen_size: int = 2,
        instruction_edits: bool = True,
        prefer_short_outputs: bool = True,
        form_progress: bool = True,
        seed: int = 0,
        meta_prompts: MetaPrompts | None = None,
    ) -> None:
        _check_int("beam_width", beam_width, 1)
        _check_int("candidates_per_prompt", candidates_per_prompt, 1)
        _check_int("max_iterations", max_iterations, 0)
        _check_int("minibatch_size", minibatch_size, 1)
        if max_concurrency is None:
            max_concurrency = _default_concurrency(model, judge_model, optimizer_model)
        _check_int("max_concurrency", max_concurrency, 1)
        _check_int("max_retries", max_retries, 0)
        _check_int("max_parse_retries", max_parse_retries, 0)
        _check_int("screen_size", screen_size, 0)
        _check_int("seed", seed, None)
        if max_gradients_per_prompt is not None:
            _check_int("max_gradients_per_prompt", max_gradients_per_prompt, 1)
        if patience is not None:
            _check_int("patience", patience, 1)
        if max_llm_calls is not None:
            _check_int("max_llm_calls", max_llm_calls, 1)
        if target_score is not None:
            _check_number("target_score", target_score, 0, 1, low_open=True)
        _check_number("retry_backoff", retry_backoff, 0, _MAX_BACKOFF_S)
        for name, flag in (("summarize", summarize),
                           ("repair_missing_variables", repair_missing_variables),
                           ("reject_copied_examples", reject_copied_examples),
                           ("retry_unusable_edits", retry_unusable_edits),
                           ("instruction_edits", instruction_edits),
                           ("prefer_short_outputs", prefer_short_outputs),
                           ("form_progress", form_progress)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        if not isinstance(task_description, str):
            raise TypeError(
                f"task_description must be a str, got {type(task_description).__name__}")
        if meta_prompts is not None and not isinstance(meta_prompts, MetaPrompts):
            raise TypeError(
                f"meta_prompts must be a MetaPrompts, got {type(meta_prompts).__name__}")
        if isinstance(evaluators, str | bytes) or not isinstance(evaluators, Iterable):
            raise TypeError(f"evaluators must be a list of callables, got {evaluators!r}")
        if not criteria and not evaluators:
            raise ValueError(
                "give `criteria` (for the LLM judge) or `evaluators` (programmatic), or both: "
                "nothing would score the outputs"
            )
        if criteria is not None and not isinstance(criteria, str):
            raise TypeError(f"criteria must be a str, got {type(criteria).__name__}")
        evaluators = list(evaluators)
        for fn in evaluators:
            if not callable(fn):
                raise TypeError(f"evaluators must be callables, got {fn!r}")
        # Resolve models now: an unknown model string fails here, before any call.
        self.model = resolve_model(model, "model") if model is not None else None
        self.judge_model = resolve_model(judge_model, "judge_model") if judge_model else None
        self.optimizer_model = (
            resolve_model(optimizer_model, "optimizer_model") if optimizer_model else None
        )
        self.settings = dict(
            task_description=task_description,
            criteria=criteria or None,
            evaluators=tuple(evaluators),
            beam_width=beam_width,
            candidates_per_prompt=candidates_per_prompt,
            max_iterations=max_iterations,
            minibatch_size=minibatch_size,
            max_gradients_per_prompt=max_gradients_per_prompt,
            patience=patience,
            target_score=target_score,
            max_llm_calls=max_llm_calls,
            max_concurrency=max_concurrency,
            max_retries=max_retries,
            max_parse_retries=max_parse_retries,
            retry_backoff=retry_backoff,
            summarize=summarize,
            repair_missing_variables=repair_missing_variables,
            reject_copied_examples=reject_copied_examples,
            retry_unusable_edits=retry_unusable_edits,
            screen_size=screen_size,
            instruction_edits=instruction_edits,
            prefer_short_outputs=prefer_short_outputs,
            form_progress=form_progress,
            seed=seed,
            meta_prompts=meta_prompts or MetaPrompts(),
        )

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
            train: Rows ``{"inputs": {...}, "outputs": {...}}``, langsmith Examples or a
                JSONL path.
            val: Validation rows, same forms.
            checkpoint: Persist the run: a SQLite file path (or any LangGraph
                checkpointer). Running the same call again resumes an interrupted run
                (or returns a finished one) without repeating finished LLM calls.
            thread_id: The run's id in the checkpointer. Default: a hash of the prompt,
                data and settings, so the same call finds its own run.
            cache: Answer identical LLM calls from a SQLite file (or `CallCache`). With a
                checkpoint path and no cache, the cache lives in the checkpoint file.
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
                with _graceful_sigint(run.stop_event) as interruptible:
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

    def context(self, slot: PromptSlot | None = None, app: Any = None) -> GradSumContext:
        """The graph context these settings make (`app`: an `apps.AppRunner`)."""
        model = self.model
        if model is None and app is not None:  # the app's own model, else the optimizer's
            model = app.model or self.optimizer_model
        return GradSumContext(model=model, judge_model=self.judge_model,  # type: ignore[arg-type]
                              optimizer_model=self.optimizer_model, prompt_slot=slot,
                              app=app, **self.settings)  # type: ignore[arg-type]

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
        train_rows = load_examples(train, name="train")
        val_rows = load_examples(val, name="val") if val is not None else []
        # An app fills its prompt itself (retrieval...): rows need only what the app takes.
        needed = variables if app is None else [input_key] if input_key is not None else []
        check_variables(train_rows, needed, "train")
        check_variables(val_rows, needed, "val")
        ctx = self.context(slot, app)
        if app is None:  # an app's output type is known only once it runs
            _dry_run_evaluators(ctx.evaluators, train_rows[0])
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
    ) -> _Run:
        slot, text, train_rows, val_rows, app = self._validate(prompt, train, val, target,
                                                               input_key)
        ctx = self.context(slot, app)
        inputs = {"prompt": text, "train": train_rows, "val": val_rows}
        run = _Run(ctx=ctx, input=inputs)
        if thread_id is None:  # an app's run is told apart by where its prompt sits
            thread_id = _run_fingerprint(
                inputs if app is None else {**inputs, "app": app.describe()}, self)
        saver: BaseCheckpointSaver | None
        if isinstance(checkpoint, str | Path):
            conn = sqlite3.connect(str(checkpoint), check_same_thread=False)
            run.closers.append(conn.close)
            saver = SqliteSaver(conn)
            if cache is None:
                cache = Path(checkpoint)
        else:
            saver = checkpoint
        if isinstance(cache, str | Path):
            cache = CallCache(cache)
            run.closers.append(cache.close)
        if cache is not None and saver is not None:
            cache.run_id = thread_id  # calls paid before a crash still count on resume
        run.ctx.cache = cache
        run.ctx.should_stop = _stop_signal(run.stop_event, stop_file)
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
            on_event({**chunk, "calls": chunk.get("calls", _calls(last))})
        return last

    def _result(self, state: dict[str, Any], ctx: GradSumContext, start: float,
                interrupted: str | None = None) -> OptimizationResult:
        if state.get("best_id") and not interrupted:
            best_id = state["best_id"]
            cands = state["candidates"]
            return self._build(state, ctx, start, best_id, cands[best_id]["val_score"],
                               cands["c0"]["val_score"],
                               "val" if state.get("val") else "train", state["stop_reason"])
        return self._partial(state, ctx, start, interrupted or "incomplete")

    def _partial(self, state: dict[str, Any], ctx: GradSumContext, start: float,
                 reason: str = "error") -> OptimizationResult | None:
        """Best so far when the run did not finish: the top minibatch score of the
        latest iteration anything was scored in (not validated). Stopped before the
        first step ended, that is the initial prompt, unscored."""
        cands: dict[str, Candidate] = state.get("candidates") or {}
        if not cands:
            if not state.get("prompt"):
                return None
            cands = {"c0": {"id": "c0", "template": state["prompt"], "parent_id": None,
                            "iteration": 0, "summary": None, "gradients": {}, "summaries": {},
                            "scores": {}, "val_score": None}}
            state = {**state, "candidates": cands}
        best_id, best, latest = "c0", None, -1
        for cid, cand in cands.items():
            for it, score in cand["scores"].items():
                if int(it) > latest or (int(it) == latest and score > (best or -1)):
                    best_id, best, latest = cid, score, int(it)
        init = cands["c0"]["scores"].get(str(latest))
        return self._build(state, ctx, start, best_id, best, init, "minibatch", reason)

    def _build(self, state: dict[str, Any], ctx: GradSumContext, start: float, best_id: str,
               best: float | None, initial: float | None, split: str,
               reason: str) -> OptimizationResult:
        slot: PromptSlot = ctx.prompt_slot or PromptSlot("str")
        template = state["candidates"][best_id]["template"]
        return OptimizationResult(
            best_prompt=slot.rebuild(template),
            best_app=ctx.app.build(template) if ctx.app is not None else None,
            best_template=template,
            best_id=best_id,
            best_score=best,
            initial_score=initial,
            split=split,
            stop_reason=reason,
            iterations=state.get("iteration", 0),
            candidates=dict(state["candidates"]),
            usage=dict(state.get("usage") or {}),
            counters=dict(state.get("counters") or {}),
            wall_time_s=round(time.monotonic() - start, 3),
            records=dict(state.get("records") or {}),
            settings={**self.describe_settings(),
                      **({"app": ctx.app.describe()} if ctx.app is not None else {})},
        )

    def describe_settings(self) -> dict[str, Any]:
        """The settings as JSON-able data (for results, reports and benchmarks)."""
        out: dict[str, Any] = {}
        for key, value in self.settings.items():
            if key == "evaluators":
                value = [evaluator_name(f) for f in value]
            elif key == "meta_prompts":
                value = dataclasses.asdict(value)
            out[key] = value
        for role in ("model", "judge_model", "optimizer_model"):
            model = getattr(self, role)
            out[role] = None if model is None else _model_label(model)
        return out


@dataclass
class _Run:
    """One prepared run: graph, input (or `None` to resume), context and config."""

    ctx: GradSumContext
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


def _stop_signal(event: threading.Event, stop_file: str | Path | None) -> Callable[[], str | None]:
    def should_stop() -> str | None:
        if event.is_set():
            return "interrupted"
        if stop_file is not None and Path(stop_file).exists():
            return "stop_file"
        return None

    return should_stop


Stream = Callable[[], Iterable[Any]]


@contextlib.contextmanager
def _graceful_sigint(event: threading.Event) -> Iterator[Callable[[Stream], Iterator[Any]]]:
    """First Ctrl-C: ask the run to stop at the next safe point. Second: stop now.

    Yields a wrapper for the graph's stream. In the main thread the stream runs in
    a worker thread while the main thread polls for its chunks: Python runs signal
    handlers only in the main thread, and only when it runs, so a main thread
    blocked inside LangGraph for a whole step (minutes on a slow model) would not
    see Ctrl-C until the step ends. A hard stop returns everything finished so
    far; calls still in flight then finish in the background (counted by the run's
    ledger, which `optimize` closes, so that no further call starts).
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda stream: iter(stream())
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if event.is_set():
            raise KeyboardInterrupt
        event.set()

    signal.signal(signal.SIGINT, handler)
    try:
        yield _in_worker_thread
    finally:
        signal.signal(signal.SIGINT, previous)


_DONE = object()


def _in_worker_thread(stream: Stream) -> Iterator[Any]:
    """Iterate `stream()` in a daemon thread (same contextvars), handing items over.

    When the consumer stops early (a hard Ctrl-C), the stream is closed at its next
    item, so no new graph step (and no new LLM call) starts behind the caller's back.
    """
    items: queue.Queue[Any] = queue.Queue()
    abandoned = threading.Event()

    def produce() -> None:
        it: Any = None
        try:
            it = iter(stream())
            for item in it:
                if abandoned.is_set():
                    break
                items.put(item)
        except BaseException as e:  # re-raised in the consumer
            items.put(_Failed(e))
        finally:
            if close := getattr(it, "close", None):
                with contextlib.suppress(Exception):
                    close()
            items.put(_DONE)

    worker = threading.Thread(target=contextvars.copy_context().run, args=(produce,),
                              name="gradsum-graph", daemon=True)
    worker.start()
    try:
        while True:
            try:
                item = items.get(timeout=0.1)  # wakes the main thread for signal handlers
            except queue.Empty:
                continue
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        abandoned.set()


@dataclass
class _Failed:
    error: BaseException


def _model_label(model: BaseChatModel) -> str:
    """A readable model name (never its parameters, which may hold keys)."""
    for attr in ("model_name", "model"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return f"{type(model).__name__}:{value}"
    return type(model).__name__


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


def _calls(state: GradSumState | dict[str, Any]) -> int:
    return sum(u["calls"] for u in (state.get("usage") or {}).values())


_MAX_BACKOFF_S = 60.0
"""Largest `retry_backoff`: the first retry waits this long, later ones up to 30 times it."""


def _check_number(name: str, value: Any, low: float, high: float, *,
                  low_open: bool = False) -> None:
    """A finite real number in [low, high] (or (low, high]); never a bool or a str."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
        bounds = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g}]"
        raise ValueError(f"{name} must be in {bounds}, got {value!r}")


def _check_int(name: str, value: Any, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _dry_run_evaluators(evaluators: Iterable[Callable[..., Any]], row: dict[str, Any]) -> None:
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
