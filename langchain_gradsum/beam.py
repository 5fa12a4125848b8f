"""Beam search decisions: the `prune` edge, stop conditions and budget arithmetic.

Everything here is a pure function of the state and settings, so a resumed run
decides exactly as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Literal

from langgraph.runtime import Runtime
from langgraph.types import Send

from langchain_gradsum.state import GradSumContext, GradSumState

__all__ = ["calls_needed_for_one_iteration", "final_reserve", "prune", "select_beam",
           "stop_reason"]


def select_beam(state: GradSumState, beam_width: int) -> list[str]:
    """The best `beam_width` of parents plus children by this iteration's minibatch score.

    Candidates without a complete score are dropped. Ties keep the older candidate
    (it has survived more minibatches), then the lower id.
    """
    key = str(state["iteration"])
    cands = state["candidates"]
    scored = [cid for cid in state["beam"] if key in cands[cid]["scores"]]
    scored.sort(key=lambda cid: (-cands[cid]["scores"][key], cands[cid]["iteration"],
                                 int(cid[1:])))
    return scored[:beam_width]


def best_by_iteration(state: GradSumState) -> list[float]:
    """The best minibatch score seen in each iteration so far."""
    best: dict[int, float] = {}
    for cand in state["candidates"].values():
        for it, score in cand["scores"].items():
            best[int(it)] = max(best.get(int(it), 0.0), score)
    return [best[i] for i in sorted(best)]


def iterations_without_improvement(state: GradSumState) -> int:
    """How many of the latest iterations did not beat every earlier iteration's best."""
    bests = best_by_iteration(state)
    stale = 0
    record = None
    for score in bests:
        if record is None or score > record:
            record, stale = score, 0
        else:
            stale += 1
    return stale


def _calls_per_row(ctx: GradSumContext) -> int:
    return 1 + (1 if ctx.criteria else 0)


def final_reserve(state: GradSumState, ctx: GradSumContext) -> int:
    """Calls kept back for scoring the finalists (beam + initial) on validation."""
    rows = len(state.get("val") or state["train"])
    return (ctx.beam_width + 1) * rows * _calls_per_row(ctx)


def iteration_cost(beam_size: int, n_train: int, ctx: GradSumContext) -> int:
    """Upper bound on the calls of one more iteration from a beam of `beam_size`.

    Gradients, summaries and edits, then scoring parents and children on the
    next minibatch.
    """
    m = min(ctx.minibatch_size, n_train)
    grads = m if ctx.max_gradients_per_prompt is None else min(m, ctx.max_gradients_per_prompt)
    k = ctx.candidates_per_prompt if ctx.summarize else min(ctx.candidates_per_prompt, grads)
    per_parent = grads + (1 if ctx.summarize else 0) + k + (1 + k) * m * _calls_per_row(ctx)
    return beam_size * per_parent


def calls_needed_for_one_iteration(n_train: int, n_val: int, ctx: GradSumContext) -> int:
    """The smallest `max_llm_calls` that lets a run score the initial prompt, make one
    full iteration (when `max_iterations` > 0), and validate the finalists."""
    m = min(ctx.minibatch_size, n_train)
    first = m * _calls_per_row(ctx)
    loop = iteration_cost(1, n_train, ctx) if ctx.max_iterations > 0 else 0
    reserve = (ctx.beam_width + 1) * (n_val or n_train) * _calls_per_row(ctx)
    return first + loop + reserve


def stop_reason(state: GradSumState, ctx: GradSumContext, kept: list[str]) -> str | None:
    """Why the search should stop now, or `None` to go on."""
    if state.get("stop_reason"):
        return state["stop_reason"]
    if ctx.should_stop is not None:
        asked = ctx.should_stop()
        if asked:
            return asked
    if not kept:
        return "no_scored_candidates"
    if state["iteration"] >= ctx.max_iterations:
        return "max_iterations"
    best = state["candidates"][kept[0]]["scores"][str(state["iteration"])]
    if ctx.target_score is not None and best >= ctx.target_score:
        return "target_score"
    if ctx.patience is not None and iterations_without_improvement(state) >= ctx.patience:
        return "patience"
    if ctx.max_llm_calls is not None:
        spent = sum(u["calls"] for u in state.get("usage", {}).values())
        left = ctx.max_llm_calls - spent - final_reserve(state, ctx)
        if iteration_cost(len(kept), len(state["train"]), ctx) > left:
            return "budget"
    return None


def prune(
    state: GradSumState, runtime: Runtime[GradSumContext]
) -> Literal["finalize"] | list[Send]:
    """The conditional edge after `evaluate`: prune the beam, or stop.

    Keeps the best `beam_width` candidates and sends them on to `gradient`;
    when a stop condition holds, sends them to `finalize` instead.
    """
    ctx = runtime.context
    kept = select_beam(state, ctx.beam_width)
    reason = stop_reason(state, ctx, kept)
    if reason and state["iteration"] > 0 and len(kept) < ctx.beam_width:
        # A stop (the budget) cut this iteration short before every candidate was scored:
        # fill the beam from the last complete ranking so the search's progress survives.
        last = select_beam({**state, "iteration": state["iteration"] - 1}, ctx.beam_width)
        kept += [cid for cid in last if cid not in kept][: ctx.beam_width - len(kept)]
    pruned: dict[str, Any] = {**state, "beam": kept}
    if reason:
        return [Send("finalize", {**pruned, "stop_reason": reason})]
    return [Send("gradient", pruned)]
