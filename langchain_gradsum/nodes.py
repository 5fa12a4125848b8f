"""The five GRAD-SUM modules as LangGraph nodes, plus `finalize`.

generate -> evaluate -(route)-> gradient -> summarize -> edit -> generate ...

Each node reads the state, makes its LLM calls through one `LLMCaller` (budget,
retries, trace names, usage) and returns only what it changed. `evaluate` also
writes what the beam decisions (`beam.advance`) make of the new scores; the `route`
edge only reads them. Once a node has set ``stop_reason`` (say, the budget ran out
mid-step) the later nodes of the iteration do nothing and `route` goes to `finalize`.
"""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime

from langchain_gradsum import beam as beam_mod
from langchain_gradsum._editing import (
    EditWriter,
    batch_evidence,
    edit_jobs,
    extract_prompt,
    new_candidate,
    new_children,
)
from langchain_gradsum._llm import CallBudget, LLMCaller, check_failures, role_models
from langchain_gradsum._scoring import (
    rank_finalists,
    rows_of,
    run_outputs,
    score_outputs,
    split_score,
)
from langchain_gradsum.data import minibatch_indices
from langchain_gradsum.feedback import (
    kind_counts,
    show_feedback,
    show_inputs,
    show_output,
    show_reference,
)
from langchain_gradsum.state import (
    GradSumContext,
    GradSumState,
    Record,
    add_usage,
    record_key,
    total_calls,
)

__all__ = ["edit", "evaluate", "extract_prompt", "finalize", "generate", "gradient",
           "new_candidate", "summarize"]

Ctx = Runtime[GradSumContext]


# --- the five modules ------------------------------------------------------------------


def generate(state: GradSumState, runtime: Ctx, config: RunnableConfig) -> dict[str, Any]:
    """Run every candidate in the beam over its rows: this iteration's batch, or, for a
    new child under screening, the few failures it was written to fix."""
    ctx = runtime.context
    update: dict[str, Any] = {}
    if not state.get("candidates"):  # first step: the user's prompt is candidate c0
        c0 = new_candidate("c0", state["prompt"], parent_id=None, iteration=0, summary=None)
        update = {"candidates": {"c0": c0}, "beam": ["c0"], "iteration": 0}
        state = {**state, **update}  # type: ignore[typeddict-item]
        update["batch"] = beam_mod.current_batch(state, ctx)
        state = {**state, **update}  # type: ignore[typeddict-item]
    if state.get("stop_reason"):
        return update
    it = state["iteration"]
    if "c0" in update.get("candidates", {}):  # later iterations are announced by `edit`
        runtime.stream_writer({"event": "iteration", "iteration": 0, "beam": ["c0"]})
    jobs = [
        (cid, "train", i)
        for cid in state["beam"]
        for i in beam_mod.rows_to_score(state, ctx, cid)
        if record_key(cid, "train", i) not in state.get("records", {})
    ]
    caller = _caller(state, runtime, config, phase="loop")
    records, stop = run_outputs(caller, ctx, state, jobs, iteration=it)
    return {**update, **_node_update(caller, stop), "records": records}


def evaluate(state: GradSumState, runtime: Ctx, config: RunnableConfig) -> dict[str, Any]:
    """Score each new output (judge and/or evaluators), then decide what follows
    (`beam.advance`): screens, more rows, or the pruned beam and any stop reason."""
    ctx = runtime.context
    if state.get("stop_reason"):  # set by `generate` (the budget ran out mid-step)
        return {"beam": beam_mod.beam_on_stop(state, ctx)}
    it = state["iteration"]
    records = state.get("records", {})
    jobs = [
        (cid, "train", i)
        for cid in state["beam"]
        for i in beam_mod.rows_to_score(state, ctx, cid)
        if "score" not in records.get(record_key(cid, "train", i), {"score": None})
    ]
    caller = _caller(state, runtime, config, phase="loop")
    scored, stop = score_outputs(caller, ctx, state, jobs, iteration=it)
    update = {**_node_update(caller, stop), "records": scored}
    merged: GradSumState = {**state, "records": {**records, **scored},
                            "usage": add_usage(state.get("usage"), caller.usage)}
    if stop:
        return {**update, "beam": beam_mod.beam_on_stop(merged, ctx)}
    decided, events = beam_mod.advance(merged, ctx)
    calls = total_calls(merged.get("usage"))
    for event in events:
        runtime.stream_writer({**event, "calls": calls})
    return {**update, **decided}


def gradient(state: GradSumState, runtime: Ctx, config: RunnableConfig) -> dict[str, Any]:
    """Critique each beam member once per output short of full marks (worst first).

    Each critique names the kind of mistake on its first line (``Kind: format``...).
    """
    ctx = runtime.context
    if reason := _halted(state, ctx):
        return {"stop_reason": reason}
    it = state["iteration"]
    records = state["records"]
    batch = beam_mod.current_batch(state, ctx)
    jobs = [(cid, i) for cid in state["beam"]
            for i in beam_mod.failed_rows(records, cid, batch)[: ctx.max_gradients_per_prompt]]
    caller = _caller(state, runtime, config, phase="loop")
    optimizer_model = role_models(ctx).optimizer
    prompts = ctx.meta_prompts

    def critique(job: tuple[str, int]) -> str:
        cid, i = job
        ex = state["train"][i]
        rec = records[record_key(cid, "train", i)]
        message = prompts.gradient.format(
            task_description=ctx.task_description or "(not given)",
            prompt=state["candidates"][cid]["template"],
            inputs=show_inputs(ex),
            output=show_output(rec),
            reference=show_reference(ex),
            score=f"{rec['score']:.2f}",
            feedback=show_feedback(rec),
        )
        return caller.text("gradient", optimizer_model, message, iteration=it,
                           candidate_id=cid, example=i)

    results = caller.map(critique, jobs)
    stop = check_failures(caller, results)
    gradients: dict[str, list[str]] = {}
    for (cid, _), res in zip(jobs, results, strict=True):
        if isinstance(res, str) and res.strip():
            gradients.setdefault(cid, []).append(res.strip())
    candidates = {
        cid: {**state["candidates"][cid],
              "gradients": {**state["candidates"][cid]["gradients"], str(it): grads}}
        for cid, grads in gradients.items()
    }
    return {**_node_update(caller, stop), "candidates": candidates}


def summarize(state: GradSumState, runtime: Ctx, config: RunnableConfig) -> dict[str, Any]:
    """Merge each candidate's gradients into one general paragraph (GRAD-SUM's addition)."""
    ctx = runtime.context
    if reason := _halted(state, ctx):
        return {"stop_reason": reason}
    if not ctx.summarize:
        return {}
    it = str(state["iteration"])
    todo = [cid for cid in state["beam"] if state["candidates"][cid]["gradients"].get(it)]
    caller = _caller(state, runtime, config, phase="loop")
    optimizer_model = role_models(ctx).optimizer

    def summary(cid: str) -> str:
        cand = state["candidates"][cid]
        grads = cand["gradients"][it]
        message = ctx.meta_prompts.summarize.format(
            task_description=ctx.task_description or "(not given)",
            prompt=cand["template"],
            gradients="\n".join(f"<critique>{g}</critique>" for g in grads),
            evidence=batch_evidence(state, ctx, cid) + f"\n- Kinds of mistake the critiques name: "
                     f"{kind_counts(grads)}.",
        )
        return caller.text("summarize", optimizer_model, message, iteration=state["iteration"],
                           candidate_id=cid)

    results = caller.map(summary, todo)
    stop = check_failures(caller, results)
    candidates = {
        cid: {**state["candidates"][cid],
              "summaries": {**state["candidates"][cid]["summaries"], it: res.strip()}}
        for cid, res in zip(todo, results, strict=True)
        if isinstance(res, str) and res.strip()
    }
    return {**_node_update(caller, stop), "candidates": candidates}


def edit(state: GradSumState, runtime: Ctx, config: RunnableConfig) -> dict[str, Any]:
    """Write `candidates_per_prompt` new prompts per beam member from its summary.

    A parent's first child adds one instruction to it (``instruction_edits``); the
    others are rewrites, each asked for differently (the edit variants). With
    ``summarize=False`` (the paper's ablation) each child comes from a single gradient.
    The editor sees the measured evidence and the earlier edits of this parent that did
    not help. Every new prompt passes the variable guard and the copied-example check
    and differs from every earlier prompt; one that does not is re-asked once, told
    why (``retry_unusable_edits``). Each child is then screened on the failures it was
    written for before it is scored on a whole batch (``screen_size``).
    """
    ctx = runtime.context
    if reason := _halted(state, ctx):
        return {"stop_reason": reason}
    it = state["iteration"]
    jobs = edit_jobs(state, ctx)
    caller = _caller(state, runtime, config, phase="loop")
    usable, stop = EditWriter(state, ctx, caller, runtime.stream_writer, jobs).write()
    children = new_children(state, ctx, jobs, usable)
    for child in children.values():
        runtime.stream_writer({"event": "candidate", "candidate": child["id"],
                               "parent": child["parent_id"], "iteration": it + 1,
                               "strategy": child["strategy"]})
    if stop:
        return {**_node_update(caller, stop), "candidates": children}
    runtime.stream_writer({"event": "iteration", "iteration": it + 1,
                           "beam": list(state["beam"]) + list(children)})
    return {
        **_node_update(caller, stop),
        "candidates": children,
        "beam": list(state["beam"]) + list(children),
        "iteration": it + 1,
        "batch": minibatch_indices(len(state["train"]), ctx.minibatch_size, ctx.seed, it + 1),
    }


def finalize(state: GradSumState, runtime: Ctx, config: RunnableConfig) -> dict[str, Any]:
    """Score the final beam and the initial prompt on validation; pick the best.

    Uses `val` when given, else every training row. The initial prompt always
    competes, so the result is never worse on that split than the start.
    """
    ctx = runtime.context
    split = "val" if state.get("val") else "train"
    n = len(rows_of(state, split))
    it = state.get("iteration", 0)
    # Ranked order (ties go to the higher-ranked); the initial prompt always competes.
    finalists = beam_mod.finalists(state.get("beam", []))
    runtime.stream_writer({"event": "finalize", "split": split, "finalists": finalists,
                           "stop_reason": state.get("stop_reason"),
                           "calls": total_calls(state.get("usage"))})
    caller = _caller(state, runtime, config, phase="final")
    records = dict(state.get("records", {}))
    # Spend on the initial prompt first: it is generated *and scored* before the others
    # start, so a reserve that retries ate into still validates it.
    generated: dict[str, Record] = {}
    scored: dict[str, Record] = {}
    stop1 = stop2 = None
    for group in (["c0"], [c for c in finalists if c != "c0"]):
        jobs = [(cid, split, i) for cid in group for i in range(n)
                if record_key(cid, split, i) not in records]
        new, stop = run_outputs(caller, ctx, state, jobs, iteration=it)
        records.update(new)
        generated.update(new)
        stop1 = stop1 or stop
        jobs = [(cid, split, i) for cid in group for i in range(n)
                if "score" not in records.get(record_key(cid, split, i), {"score": None})]
        new, stop = score_outputs(caller, ctx, {**state, "records": records}, jobs,
                                  iteration=it)
        records.update(new)
        scored.update(new)
        stop2 = stop2 or stop
        for cid in group:
            if (val := split_score(records, cid, split, n)) is not None:
                runtime.stream_writer({"event": "validated", "candidate": cid, "split": split,
                                       "score": val, "calls": _calls_now(state, caller)})
    candidates, best_id, best = rank_finalists(
        records, state["candidates"], finalists, split, n, prefer_short=ctx.prefer_short_outputs,
        replace_start_p=ctx.replace_start_p)
    runtime.stream_writer({"event": "best", "candidate": best_id,
                           "score": best if best >= 0 else None,
                           "calls": _calls_now(state, caller)})
    reason = state.get("stop_reason") or stop1 or stop2 or "done"
    return {**_node_update(caller, None), "records": {**generated, **scored},
            "candidates": candidates, "best_id": best_id, "stop_reason": reason}


# --- shared pieces ---------------------------------------------------------------------


def _halted(state: GradSumState, ctx: GradSumContext) -> str | None:
    """A stop already decided, or a graceful stop asked for (Ctrl-C, stop file)."""
    return state.get("stop_reason") or (ctx.should_stop() if ctx.should_stop else None)


def _caller(state: GradSumState, runtime: Ctx, config: RunnableConfig, *, phase: str) -> LLMCaller:
    """The node's caller, with the budget it may spend.

    Loop nodes may not touch the reserve kept for the final validation.
    """
    ctx = runtime.context
    limit = None
    if ctx.max_llm_calls is not None:
        reserve = beam_mod.final_reserve(state, ctx) if phase == "loop" else 0
        limit = max(0, ctx.max_llm_calls - total_calls(state.get("usage")) - reserve)
    return LLMCaller(CallBudget(limit), config, max_retries=ctx.max_retries,
                     max_parse_retries=ctx.max_parse_retries,
                     max_concurrency=ctx.max_concurrency,
                     backoff=ctx.retry_backoff, cache=ctx.cache,
                     paid=state.get("paid", ()) if ctx.cache is not None else ())


def _calls_now(state: GradSumState, caller: LLMCaller) -> int:
    """The run's calls so far: the state's and this node's."""
    return total_calls(state.get("usage")) + caller.budget.used


def _node_update(caller: LLMCaller, stop: str | None) -> dict[str, Any]:
    """What every node returns of its calls: usage, counters, paid cache keys, a stop."""
    out: dict[str, Any] = {"usage": caller.usage, "counters": caller.counters}
    if caller.paid_now:
        out["paid"] = caller.paid_now
    if stop:
        out["stop_reason"] = stop
    return out
