"""Beam search decisions: screening, pruning, stop conditions and budget arithmetic.

Everything here is a pure function of the state and settings, so a resumed run
decides exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from langgraph.runtime import Runtime

from langchain_gradsum.data import minibatch_indices
from langchain_gradsum.feedback import in_form
from langchain_gradsum.state import (
    FULL_MARKS,
    Candidate,
    GradSumContext,
    GradSumState,
    Record,
    best_by_iteration,
    record_key,
    total_calls,
)

__all__ = ["advance", "affordable", "batch_difficulty", "beam_on_stop",
           "calls_needed_for_one_iteration", "current_batch", "failed_rows", "field_score",
           "final_reserve", "finalists", "fit_finalists", "iteration_cost",
           "narrowed_finalists", "pooled_score", "ranking", "route", "rows_to_score",
           "select_beam", "shrunk_scores", "stop_reason"]


def select_beam(state: GradSumState, beam_width: int, *,
                form_rows: Sequence[int] | None = None,
                short_rows: Sequence[int] | None = None,
                pooled: bool = False, prior: float = 0.0, by_batch: bool = False
                ) -> list[str]:
    """The best `beam_width` of parents plus children that were scored on this
    iteration's minibatch: by that score, or with `pooled` by their mean score over
    every minibatch they were scored on (this one included), shrunk towards the run's
    mean by `prior` batches and, with `by_batch`, corrected for each batch's difficulty
    (:func:`shrunk_scores`).

    Candidates without a complete score are dropped. Ties go to the candidate whose
    replies take the expected answers' form on more of `form_rows` (if given), then to
    the one with fewer output tokens per reply on `short_rows` (if given), then to the
    older candidate (it has survived more minibatches), then the lower id.
    """
    key = str(state["iteration"])
    cands = state["candidates"]
    scored = [cid for cid in state["beam"] if key in cands[cid]["scores"]]
    shrunk = shrunk_scores(cands, scored, prior, by_batch=by_batch) if pooled else {}
    def rank(cid: str) -> tuple[float, float, float, int, int]:
        shaped = form_rate(state, cid, form_rows) if form_rows else None
        tokens = output_tokens(state, cid, short_rows) if short_rows else None
        return (-(shrunk[cid] if pooled else cands[cid]["scores"][key]),
                -(shaped or 0.0), tokens or 0.0, cands[cid]["iteration"], int(cid[1:]))

    scored.sort(key=rank)
    return scored[:beam_width]


def ranking(ctx: GradSumContext) -> dict[str, Any]:
    """The ranking knobs of `ctx` as keyword arguments of :func:`select_beam`."""
    return {"pooled": ctx.pooled_ranking, "prior": ctx.pooled_prior,
            "by_batch": ctx.batch_difficulty}


def pooled_score(cand: Candidate) -> float:
    """`cand`'s mean score over the minibatches it was scored on (one per iteration).

    One 4-row minibatch of a 0/1 metric is mostly noise: on hellaswag (`5a58f22`) the
    start prompt, 0.44 over four batches, left the beam after one batch it failed
    (0.0) for a child at 0.25 that scored 0.10 on validation to its 0.60."""
    scores = list(cand["scores"].values())
    return round(sum(scores) / len(scores), 9) if scores else 0.0


def shrunk_scores(candidates: Mapping[str, Candidate], ids: Sequence[str], prior: float,
                  *, by_batch: bool = False) -> dict[str, float]:
    """The pooled score of each of `ids` that ranks the beam, by id: the mean over the
    minibatches it was scored on, with `prior` extra minibatches at the run's mean
    (:func:`field_score`; 0 `prior`: the plain mean).

    The plain mean ranks one lucky batch level with the same score over several: on
    svamp (seed 1, `bcedf83`) a child at 0.75 on its one batch displaced the calculation
    child at 0.75 on each of three (the start prompt 0.58 on the same batches), which
    was never validated.

    With `by_batch`, each score is first corrected for how hard its minibatch was: a fit
    of score = run mean + candidate + batch over every candidate scored in the run
    (:func:`batch_difficulty`), the candidate part shrunk by `prior` batches. Means over
    different batches are not comparable: on svamp (seed 0, `8ef70e1`) a rewrite at 0.75
    on its one batch took the last finalist place from its parent, 0.64 over seven, by
    0.626 to 0.625, yet on that batch the parent had scored 1.0; the rewrite then scored
    0.45 on validation to the start prompt's 0.65. Corrected, they rank 0.45 and 0.59.
    """
    scored = {cid: c["scores"] for cid, c in candidates.items() if c["scores"]}
    field = field_score(candidates) or 0.0
    hard = batch_difficulty(scored, field, prior) if by_batch else {}

    def shrunk(scores: Mapping[str, float]) -> float:
        return field + sum(s - field - hard.get(b, 0.0) for b, s in scores.items()) / (
            len(scores) + prior) if scores else field

    return {cid: round(shrunk(candidates[cid]["scores"]), 9) for cid in ids}


def batch_difficulty(scores: Mapping[str, Mapping[str, float]], field: float, prior: float,
                     *, rounds: int = 500) -> dict[str, float]:
    """How much easier than the run's mean (`field`) each minibatch was, by batch key:
    the batch part of a fit score = `field` + candidate + batch to `scores` (candidate ->
    batch -> score), with each candidate part shrunk by `prior` batches (alternating
    means, to a change below 1e-12 or `rounds`). A batch only one candidate was scored on
    says nothing about its difficulty and stays at 0."""
    batches: dict[str, list[tuple[str, float]]] = {}  # batch -> (candidate, score)
    for cid, by in scores.items():
        for b, s in by.items():
            batches.setdefault(b, []).append((cid, s))
    hard = dict.fromkeys(batches, 0.0)
    for _ in range(rounds):
        own = {cid: sum(s - field - hard[b] for b, s in by.items()) / (len(by) + prior)
               for cid, by in scores.items()}
        new = {b: sum(s - field - own[cid] for cid, s in seen) / len(seen)
               if len(seen) > 1 else 0.0 for b, seen in batches.items()}
        change = max((abs(new[b] - hard[b]) for b in batches), default=0.0)
        hard = new
        if change < 1e-12:
            break
    return hard


def field_score(candidates: Mapping[str, Candidate]) -> float | None:
    """The mean pooled score of every candidate scored so far: what `shrunk_scores`
    shrinks towards when it ranks the beam.

    Not the mean of the candidates being ranked: once a budget cut leaves one parent,
    the beam is that parent and its children, often level, and shrinking towards their
    own mean moves nothing. On svamp (`f552244`, `gradsum_demos`, seed 0) c7 scored 0.75
    on each of four batches, its child c9 0.75 on its one; level, the child went ahead
    on fewer output tokens and took the one finalist place beside the start prompt, and
    c7 was never validated. Shrunk by one batch towards the run's 0.58, they rank 0.72
    and 0.66."""
    pooled = [pooled_score(c) for c in candidates.values() if c["scores"]]
    return sum(pooled) / len(pooled) if pooled else None


def form_rate(state: GradSumState, cid: str, rows: Sequence[int]) -> float | None:
    """The share of `rows` on which `cid`'s reply takes the expected answer's form
    (:func:`feedback.in_form`); ``None`` when no row's answer has a known form."""
    records = state.get("records", {})
    marks = [in_form(r.get("output") or "", state["train"][i]) for i in rows
             if (r := records.get(record_key(cid, "train", i))) is not None and "score" in r]
    known = [m for m in marks if m is not None]
    return sum(known) / len(known) if known else None


def output_tokens(state: GradSumState, cid: str, rows: Sequence[int]) -> float | None:
    """`cid`'s mean output tokens per reply on `rows` (``None`` without token counts)."""
    records = state.get("records", {})
    counts = [r["output_tokens"] for i in rows
              if "output_tokens" in (r := records.get(record_key(cid, "train", i)) or {})]
    return sum(counts) / len(counts) if counts else None


def cut_off_count(state: GradSumState, cid: str, rows: Sequence[int]) -> int:
    """On how many of `rows` `cid`'s reply stopped at the token cap."""
    records = state.get("records", {})
    return sum(1 for i in rows if (records.get(record_key(cid, "train", i)) or {}).get("truncated"))


def iterations_without_improvement(state: GradSumState) -> int:
    """How many of the latest iterations did not beat every earlier iteration's best."""
    bests = [score for score, _ in best_by_iteration(state["candidates"]).values()]
    stale = 0
    record = None
    for score in bests:
        if record is None or score > record:
            record, stale = score, 0
        else:
            stale += 1
    return stale


def _calls_per_row(ctx: GradSumContext) -> int:
    task = 1 if ctx.app is None else ctx.app.calls_per_run  # an app may call several models
    return task + (1 if ctx.criteria else 0)


def finalists(beam: Sequence[str]) -> list[str]:
    """The prompts the final validation scores: `beam` (ranked) and the initial prompt,
    which always competes."""
    return list(beam) + ([] if "c0" in beam else ["c0"])


def final_reserve(state: GradSumState, ctx: GradSumContext) -> int:
    """Calls kept back for scoring the finalists on validation: the beam and the
    initial prompt, or only `finalists_cap` prompts once the search is narrowed."""
    rows = len(state.get("val") or state["train"])
    prompts = state.get("finalists_cap") or ctx.beam_width + 1
    return prompts * rows * _calls_per_row(ctx)


def narrowed_finalists(state: GradSumState, ctx: GradSumContext, kept: list[str]
                       ) -> int | None:
    """A cap on the finalists that lets the budget left pay for one more iteration.

    The final reserve plans for the worst case, `beam_width` + 1 prompts (the initial
    prompt may leave the beam). When that leaves too little for another iteration but
    the prompts validated if the search stopped now (`kept` and the initial prompt,
    and at least one place beside it, so a new child can still win) leave enough, the
    search goes on with its finalists capped at that number (:func:`fit_finalists`):
    the unused part of the reserve buys the iteration.
    """
    if ctx.max_llm_calls is None or state.get("finalists_cap") or not kept:
        return None
    cap = max(len(finalists(kept)), 2)
    if cap > ctx.beam_width or affordable(state, ctx, kept):
        return None
    return cap if affordable({**state, "finalists_cap": cap}, ctx, kept) else None


def fit_finalists(state: GradSumState, ranked: list[str]) -> list[str]:
    """`ranked` (best first) without the members that would take the finalists (these
    and the initial prompt) past the state's `finalists_cap`."""
    cap = state.get("finalists_cap")
    if not cap:
        return ranked
    kept: list[str] = []
    for cid in ranked:
        if len(finalists([*kept, cid])) <= cap:
            kept.append(cid)
    return kept


def screen_pass_rate(state: GradSumState) -> float:
    """The share of screened children that passed so far (prior: 1 of 2)."""
    screens = [s for c in state.get("candidates", {}).values()
               if (s := c.get("screen")) and s.get("passed") is not None]
    return (sum(1 for s in screens if s["passed"]) + 1) / (len(screens) + 2)


def iteration_cost(beam_size: int, n_train: int, ctx: GradSumContext,
                   pass_rate: float = 0.5) -> int:
    """Expected calls of one more iteration from a beam of `beam_size`.

    Per parent: gradients, a summary and the edits; then each child's screen, the
    parent's scoring on the next batch, and the batch scoring of the children expected
    to pass their screen (`pass_rate`; every child when screening is off). The hard
    cap is enforced call by call, so planning with the expected cost lets a capped run
    use its cap; an iteration the cap cuts short still ends in a validated result.
    """
    m = min(ctx.minibatch_size, n_train)
    grads = m if ctx.max_gradients_per_prompt is None else min(m, ctx.max_gradients_per_prompt)
    k = ctx.candidates_per_prompt if ctx.summarize else min(ctx.candidates_per_prompt, grads)
    screen = min(ctx.screen_size, grads)
    promoted = k * pass_rate if screen else k
    scoring = (k * screen + m + promoted * m) * _calls_per_row(ctx)
    return math.ceil(beam_size * (grads + (1 if ctx.summarize else 0) + k + scoring))


def calls_needed_for_one_iteration(n_train: int, n_val: int, ctx: GradSumContext) -> int:
    """The smallest `max_llm_calls` that lets a run score the initial prompt, make one
    iteration of the expected cost (when `max_iterations` > 0), and validate the
    finalists."""
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
    if ctx.max_llm_calls is not None and affordable(state, ctx, kept) == 0:
        return "budget"
    return None


def affordable(state: GradSumState, ctx: GradSumContext, kept: list[str]) -> int:
    """How many of the `kept` candidates (best first) the budget left can take through
    one more iteration at its expected cost: all of them without a cap."""
    if ctx.max_llm_calls is None:
        return len(kept)
    spent = total_calls(state.get("usage"))
    left = ctx.max_llm_calls - spent - final_reserve(state, ctx)
    rate = screen_pass_rate(state)
    n = len(kept)
    while n and iteration_cost(n, len(state["train"]), ctx, rate) > left:
        n -= 1
    return n


# --- which rows each candidate is scored on ---------------------------------------------


def current_batch(state: GradSumState, ctx: GradSumContext) -> list[int]:
    """This iteration's training rows (its seeded minibatch, plus any rows drawn since)."""
    return list(state.get("batch") or minibatch_indices(
        len(state["train"]), ctx.minibatch_size, ctx.seed, state.get("iteration", 0)))


def rows_to_score(state: GradSumState, ctx: GradSumContext, cid: str) -> list[int]:
    """The rows `cid` must be scored on now: its screen rows while it is being screened,
    else this iteration's batch."""
    screen = state["candidates"][cid].get("screen")
    if screen and screen.get("passed") is None:
        return list(screen["rows"])
    return current_batch(state, ctx)


def _missing(state: GradSumState, ctx: GradSumContext, cid: str) -> bool:
    records = state.get("records", {})
    return any("score" not in records.get(record_key(cid, "train", i), {})
               for i in rows_to_score(state, ctx, cid))


def mean_score(records: Mapping[str, Record], cid: str, rows: Sequence[int]) -> float | None:
    """Mean score of `cid` on training `rows`, or None if any is unscored."""
    scores = [records.get(record_key(cid, "train", i), {}).get("score") for i in rows]
    if not scores or any(s is None for s in scores):
        return None
    return sum(scores) / len(scores)  # type: ignore[arg-type]


def failed_rows(records: Mapping[str, Record], cid: str, rows: Sequence[int]) -> list[int]:
    """The rows of `rows` where `cid` fell short of full marks, worst first."""
    scored = [(records[record_key(cid, "train", i)]["score"], i) for i in rows
              if "score" in records.get(record_key(cid, "train", i), {})]
    return [i for s, i in sorted(scored) if s < FULL_MARKS]


def more_rows(state: GradSumState, ctx: GradSumContext, batch: Sequence[int]) -> list[int]:
    """Up to `minibatch_size` further training rows (seeded), to find failures to learn from."""
    order = list(range(len(state["train"])))
    random.Random(f"gradsum-{ctx.seed}-{state['iteration']}-more").shuffle(order)
    taken = set(batch)
    return [i for i in order if i not in taken][: ctx.minibatch_size]


# --- the decision after each scoring step ---------------------------------------------


def advance(state: GradSumState, ctx: GradSumContext) -> tuple[dict[str, Any], list[dict]]:
    """Decide what follows a scoring step; returns the state update and progress events.

    1. Screens: a child whose screen rows are scored passes if it beats its parent
       there; one that does not leaves the beam (kept in the history).
    2. If a candidate still lacks scores on its rows, nothing more is decided (the
       router sends the run back to `generate`).
    3. Otherwise every beam member has a score on the whole batch: keep the best
       `beam_width`. If none of them failed a single row, draw more training rows
       (back to `generate`), or stop with ``train_solved`` when none are left.
    """
    it = state["iteration"]
    records = state.get("records", {})
    screened, beam, events = _judge_screens(state, ctx)
    cands = {**state["candidates"], **screened}
    probe: GradSumState = {**state, "candidates": cands, "beam": beam}
    if any(_missing(probe, ctx, cid) for cid in beam):
        return {"candidates": screened, "beam": beam}, events
    batch = current_batch(state, ctx)
    scored: dict[str, Candidate] = {
        cid: {**cands[cid], "scores": {**cands[cid]["scores"],
                                       str(it): mean_score(records, cid, batch)}}  # type: ignore[dict-item]
        for cid in beam}
    probe = {**probe, "candidates": {**cands, **scored}}
    kept = fit_finalists(probe, select_beam(
        probe, ctx.beam_width, form_rows=batch if ctx.form_progress else None,
        short_rows=batch if ctx.prefer_short_outputs else None, **ranking(ctx)))
    narrowed: dict[str, Any] = {}
    if (cap := narrowed_finalists(probe, ctx, kept)) is not None:
        narrowed = {"finalists_cap": cap}
        probe = {**probe, **narrowed}  # type: ignore[typeddict-item]
        events.append({"event": "finalists_cap", "iteration": it, "finalists": cap,
                       "why": "the budget left pays for one more iteration if at most "
                              f"{cap} prompts are validated at the end"})
    reason = stop_reason(probe, ctx, kept)
    if reason is None and not any(failed_rows(records, cid, batch) for cid in kept):
        extra = more_rows(state, ctx, batch)
        if extra:
            events.append({"event": "more_rows", "iteration": it, "rows": len(extra),
                           "why": "the beam solved every row of the batch"})
            # Only the kept candidates go on: score them on the new rows.
            return {"candidates": screened, "beam": kept, "batch": batch + extra,
                    **narrowed}, events
        reason = "train_solved"
    events += [{"event": "scored", "iteration": it, "candidate": cid,
                "score": scored[cid]["scores"][str(it)]} for cid in beam]
    update: dict[str, Any] = {"candidates": {**screened, **scored}, **narrowed}
    if reason is None and (n := affordable(probe, ctx, kept)) < len(kept):
        # the budget left pays for an iteration from the best `n` only: go on with them
        # (the others rest on the bench and still compete for the final validation)
        events.append({"event": "beam_cut", "iteration": it, "kept": n,
                       "why": "the budget left pays for one more iteration from these"})
        update["benched"] = [*state.get("benched", []), *kept[n:]]
        kept = kept[:n]
    if reason:
        update["stop_reason"] = reason
        kept = with_benched(probe, ctx, kept)
    update["beam"] = kept
    return update, events


def with_benched(state: GradSumState, ctx: GradSumContext, kept: list[str]) -> list[str]:
    """The beam to validate at a stop: `kept` and the members a budget cut benched, the
    best `beam_width` by pooled score (`pooled_ranking`; without it, `kept`).

    A benched member has no score on the later batches, so the last ranking never saw
    it: on svamp (`ef4e780`, seed 0) the reply-form child, 0.75, 0.5 and 0.75 on three
    batches (the start prompt the same), was benched when the budget paid for one more
    iteration from one parent, and a child of the start prompt with one batch at 0.5
    was validated in its place (seed 1 of `bcedf83` lost its calculation child alike).
    Ties keep `kept`'s order first."""
    benched = [cid for cid in state.get("benched", []) if cid not in kept]
    if not benched or not ctx.pooled_ranking:
        return kept
    pool = [*kept, *benched]
    shrunk = shrunk_scores(state["candidates"], pool, ctx.pooled_prior,
                           by_batch=ctx.batch_difficulty)
    ranked = sorted(pool, key=lambda cid: -shrunk[cid])  # stable: `kept` first at a tie
    return fit_finalists(state, ranked[: ctx.beam_width])


def _judge_screens(state: GradSumState, ctx: GradSumContext
                   ) -> tuple[dict[str, Candidate], list[str], list[dict[str, Any]]]:
    """The children whose screen is now scored, with its outcome; the beam without the
    ones that failed it; and a ``screened`` event each."""
    records = state.get("records", {})
    cands = state["candidates"]
    beam = list(state["beam"])
    screened: dict[str, Candidate] = {}
    events: list[dict[str, Any]] = []
    for cid in list(beam):
        screen = cands[cid].get("screen")
        if not screen or screen.get("passed") is not None:
            continue
        score = mean_score(records, cid, screen["rows"])
        if score is None:
            continue
        passed = score > screen["parent_score"] + 1e-9
        progress: dict[str, float] = {}
        if not passed and score >= screen["parent_score"] - 1e-9:
            passed, progress = _progress_at_a_tie(state, ctx, cid, screen["rows"])
        screened[cid] = {**cands[cid], "screen": {
            **screen, "score": score, "passed": passed, **progress}}  # type: ignore[typeddict-item]
        events.append({"event": "screened", "candidate": cid, "score": score,
                       "parent_score": screen["parent_score"], "passed": passed, **progress})
        if not passed:
            beam.remove(cid)
    return screened, beam, events


SHORTER = 0.75
"""At a tie in a screen, replies this share of the parent's length or less are progress."""


def _progress_at_a_tie(state: GradSumState, ctx: GradSumContext, cid: str,
                       rows: Sequence[int]) -> tuple[bool, dict[str, float]]:
    """Whether a child that tied its parent on its screen rows still made progress there,
    and the measures: more replies in the expected form (``form_progress``) or fewer cut
    off at the token cap (``cut_off_progress``). On a 0/1 metric a reply in the right
    form but wrong, or a short wrong reply in place of a cut-off one, scores what its
    parent's did, yet it is the step a later edit builds on. With
    ``prefer_short_outputs``, replies at least a quarter shorter than the parent's
    (`SHORTER`) are progress too: the same score for less output is what the final pick
    prefers, and a 1-row screen both fail says nothing about the score (the svamp run of
    `1a0e8d0` dropped "Show only the calculation in one or two lines, ..." that way; on 60
    other rows it scored 0.75 to the start's 0.67 in a third of the tokens)."""
    parent = state["candidates"][cid]["parent_id"] or "c0"
    passed, progress = False, dict[str, float]()
    if ctx.form_progress:
        mine, theirs = form_rate(state, cid, rows), form_rate(state, parent, rows)
        if mine is not None and theirs is not None:
            progress.update(form=mine, parent_form=theirs)
            passed = mine > theirs + 1e-9
    if ctx.cut_off_progress:
        mine_cut, their_cut = cut_off_count(state, cid, rows), cut_off_count(state, parent, rows)
        if their_cut:
            progress.update(cut_off=mine_cut, parent_cut_off=their_cut)
            passed = passed or mine_cut < their_cut
    if ctx.prefer_short_outputs:
        mine_tok, their_tok = output_tokens(state, cid, rows), output_tokens(state, parent, rows)
        if mine_tok is not None and their_tok:
            progress.update(output_tokens=mine_tok, parent_output_tokens=their_tok)
            passed = passed or mine_tok <= SHORTER * their_tok
    return passed, progress


def beam_on_stop(state: GradSumState, ctx: GradSumContext) -> list[str]:
    """The beam to validate when a stop (the budget, Ctrl-C) cut an iteration short.

    The candidates ranked in this iteration, filled up from the last complete ranking,
    so the search's progress survives.
    """
    kept = select_beam(state, ctx.beam_width, **ranking(ctx))
    if state.get("iteration", 0) > 0 and len(kept) < ctx.beam_width:
        last = select_beam({**state, "iteration": state["iteration"] - 1}, ctx.beam_width,
                           **ranking(ctx))
        kept += [cid for cid in last if cid not in kept][: ctx.beam_width - len(kept)]
    kept = with_benched(state, ctx, fit_finalists(state, kept))
    return kept or [cid for cid in state.get("beam", []) if cid == "c0"]


def route(state: GradSumState, runtime: Runtime[GradSumContext]
          ) -> Literal["prune", "more", "stop"]:
    """The conditional edge after `evaluate`: it only reads what `evaluate` decided.

    ``stop`` (to `finalize`) once a stop reason is set; ``more`` (back to `generate`)
    while a candidate still needs outputs: a child that passed its screen, or rows
    drawn because the beam solved the batch; else ``prune``: on to `gradient` with
    the pruned beam.
    """
    if state.get("stop_reason"):
        return "stop"
    ctx = runtime.context
    if any(_missing(state, ctx, cid) for cid in state["beam"]):
        return "more"
    return "prune"
