"""Outputs and scores: the work behind the nodes `generate`, `evaluate` and `finalize`.

A job is ``(candidate id, split, row)``. `run_outputs` runs the candidates' prompts (or
the user's app) on their rows; `score_outputs` scores each output with the evaluators
and/or the LLM judge. The same output on the same row is scored once: earlier scores
are reused, and identical judge messages within a step are judged once (`SharedCalls`).
`rank_finalists` picks the best of the validated finalists.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from langchain_gradsum._llm import (
    BudgetExhausted,
    LLMCaller,
    SharedCalls,
    check_failures,
    role_models,
)
from langchain_gradsum._templates import PromptSlot
from langchain_gradsum.evaluators import EvalResult, EvaluatorError, JudgeVerdict, run_evaluator
from langchain_gradsum.feedback import clip_shown, show_inputs, show_reference
from langchain_gradsum.state import (
    Candidate,
    Example,
    GradSumContext,
    GradSumState,
    Record,
    mean_output_tokens,
    parse_record_key,
    record_key,
)

Job = tuple[str, str, int]
"""(candidate id, split, row)."""


def rows_of(state: GradSumState, split: str) -> list[Example]:
    """The rows of `split` (``"val"`` or ``"train"``)."""
    return state["val"] if split == "val" else state["train"]


def error_text(e: BaseException) -> str:
    """How a failed call is written into its record."""
    return f"{type(e).__name__}: {e}"[:500]


# --- outputs ---------------------------------------------------------------------------


def run_outputs(caller: LLMCaller, ctx: GradSumContext, state: GradSumState,
                jobs: list[Job], *, iteration: int) -> tuple[dict[str, Record], str | None]:
    """Task-model outputs for the jobs, by `record_key`, and a stop reason if any."""
    task_model = role_models(ctx).task
    slot: PromptSlot = ctx.prompt_slot or PromptSlot("str")

    def run(job: Job) -> Record:
        cid, split, i = job
        ex = rows_of(state, split)[i]
        if ctx.app is not None:  # a prompt inside a user's app: run the whole app (apps.py)
            return ctx.app.run(caller, state["candidates"][cid]["template"],
                               ex["inputs"], record_key(cid, split, i), iteration=iteration,
                               candidate_id=cid, split=split, example=i)
        messages = slot.render(state["candidates"][cid]["template"], ex["inputs"])
        info: dict[str, Any] = {}
        text = caller.text("generate", task_model, messages, info, iteration=iteration,
                           candidate_id=cid, split=split, example=i)
        return {"output": text, **info}  # type: ignore[typeddict-item]

    results = caller.map(run, jobs)
    stop = check_failures(caller, results)
    records: dict[str, Record] = {}
    for (cid, split, i), res in zip(jobs, results, strict=True):
        if isinstance(res, BudgetExhausted):
            continue
        key = record_key(cid, split, i)
        records[key] = res if isinstance(res, dict) else {"error": error_text(res)}
    return records, stop


# --- scores ----------------------------------------------------------------------------


def score_outputs(caller: LLMCaller, ctx: GradSumContext, state: GradSumState,
                  jobs: list[Job], *, iteration: int) -> tuple[dict[str, Record], str | None]:
    """The jobs' records with a score in 0..1 and feedback, and a stop reason if any."""
    scorer = _Scorer(caller, ctx, state, iteration)
    results = caller.map(scorer.score, jobs)
    stop = check_failures(caller, results) if ctx.criteria else None
    return scorer.collect(jobs, results), stop


class _Scorer:
    """Scores the outputs of one step (their records are in ``state["records"]``)."""

    def __init__(self, caller: LLMCaller, ctx: GradSumContext, state: GradSumState,
                 iteration: int) -> None:
        self.caller, self.ctx, self.state, self.iteration = caller, ctx, state, iteration
        self.judge_model = role_models(ctx).judge
        self.records = state["records"]
        # The same output on the same row (from another candidate, or another iteration:
        # common with short answers) is scored once.
        self.scored_before: dict[tuple[str, int, str], Record] = {}
        for key, rec in self.records.items():
            parsed = parse_record_key(key)
            if parsed and "score" in rec and "output" in rec and not rec.get("judge_failed"):
                self.scored_before[(parsed[1], parsed[2], rec["output"])] = rec
        self.verdicts = SharedCalls()  # by judge message
        # (names of built-in evaluators were resolved when the context was made)
        self.evaluators = cast("Sequence[Callable[..., Any]]", ctx.evaluators)

    def score(self, job: Job) -> Record:
        """The job's record, scored."""
        cid, split, i = job
        ex = rows_of(self.state, split)[i]
        key = record_key(cid, split, i)
        rec = self.records[key]
        if "output" not in rec:
            return {**rec, "score": 0.0, "feedback": f"the model call failed: {rec.get('error')}"}
        if (same := self.scored_before.get((split, i, rec["output"]))) is not None:
            if self.ctx.criteria:
                self.caller.count("judge_calls_saved")
            return {**rec, "score": same["score"], "feedback": same["feedback"]}
        # An app's output goes to evaluators as the object it returned (apps.py).
        output = rec["output"] if self.ctx.app is None else self.ctx.app.value(rec, key)
        results: list[EvalResult] = [
            run_evaluator(fn, ex["inputs"], output, ex["outputs"]) for fn in self.evaluators
        ]
        failed = False
        if self.ctx.criteria:
            verdict = self.judge(ex, rec["output"], job)
            if isinstance(verdict, JudgeVerdict):
                results.append(EvalResult(key="judge", score=min(1.0, max(0.0, verdict.score)),
                                          comment=verdict.reasoning))
            else:  # counted once per failed call by the caller, not per row
                failed = True
                results.append(EvalResult(key="judge", score=0.0,
                                          comment="the judge's reply could not be parsed"))
        mean = sum(r.score for r in results) / len(results)
        feedback = "\n".join(f"{r.key}: {r.score:g}" + (f" ({r.comment})" if r.comment else "")
                             for r in results)
        out: Record = {**rec, "score": mean, "feedback": feedback}
        if failed:
            out["judge_failed"] = True
        return out

    def judge(self, ex: Example, output: str, job: Job) -> Any:
        """The judge's verdict on `output` (``None`` if its reply did not parse); an
        identical judge message is judged once, the other jobs wait for its verdict."""
        cid, split, i = job
        ctx = self.ctx
        message = ctx.meta_prompts.judge.format(
            task_description=ctx.task_description or "(not given)",
            criteria=ctx.criteria,
            inputs=show_inputs(ex),
            reference=show_reference(ex),
            output=clip_shown(output),
        )

        def call() -> Any:
            return self.caller.structured("judge", self.judge_model, message, JudgeVerdict,
                                          iteration=self.iteration, candidate_id=cid,
                                          split=split, example=i)

        return self.verdicts.call(
            message, call, on_shared=lambda: self.caller.count("judge_calls_saved"))

    def collect(self, jobs: Sequence[Job], results: Sequence[Record | BaseException]
                ) -> dict[str, Record]:
        """The scored records by key; a failed judge call scores its rows 0."""
        scored: dict[str, Record] = {}
        for (cid, split, i), res in zip(jobs, results, strict=True):
            if isinstance(res, BudgetExhausted):
                continue
            key = record_key(cid, split, i)
            if isinstance(res, BaseException):
                if not self.ctx.criteria or isinstance(res, EvaluatorError):
                    raise res  # a broken evaluator is a bug to fix, not a fault to count
                scored[key] = {**self.records[key], "score": 0.0, "judge_failed": True,
                               "feedback": f"the judge call failed: {error_text(res)}"}
                continue
            scored[key] = res
        return scored


# --- the final pick --------------------------------------------------------------------


def split_score(records: Mapping[str, Record], cid: str, split: str, n: int) -> float | None:
    """Mean score of `cid` on every row of `split`, or None if any row is unscored."""
    scores = [records.get(record_key(cid, split, i), {}).get("score") for i in range(n)]
    if any(s is None for s in scores):
        return None
    return sum(scores) / n  # type: ignore[arg-type]


def paired_comparison(records: Mapping[str, Record], base: str, other: str, split: str,
                      n: int) -> dict[str, Any] | None:
    """`other` against `base` row by row on `split`: on how many rows it scored higher
    (`won`), lower (`lost`), and the exact two-sided sign-test p of that split (McNemar's
    exact test when scores are 0/1). ``None`` if a row is unscored for either.

    On 20 validation rows a lift of one or two rows is noise: the svamp winner of
    `5ed61af` beat its start prompt 0.70 to 0.65 on validation and tied it on 100 test
    rows (10 won, 10 lost)."""
    won = lost = 0
    for i in range(n):
        a = records.get(record_key(base, split, i), {}).get("score")
        b = records.get(record_key(other, split, i), {}).get("score")
        if a is None or b is None:
            return None
        won, lost = won + (b > a), lost + (b < a)
    return {"rows": n, "won": won, "lost": lost, "p": sign_test_p(won, lost)}


def sign_test_p(won: int, lost: int) -> float:
    """Exact two-sided sign-test p of `won` against `lost` rows (McNemar's exact test
    on the discordant pairs): 2 x P(X <= min) for X ~ Binomial(won + lost, 1/2), capped
    at 1 (1.0 when no row differs)."""
    m = won + lost
    if m == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(m, i) for i in range(min(won, lost) + 1)) / 2 ** m)


def rank_finalists(records: Mapping[str, Record], candidates: Mapping[str, Candidate],
                   finalists: Sequence[str], split: str, n: int, *, prefer_short: bool,
                   replace_start_p: float = 1.0
                   ) -> tuple[dict[str, Candidate], str, float]:
    """The finalists with their `val_score` (and `lead` over the initial prompt), the
    best id and its score (-1.0: none).

    Best score; at equal score the shorter outputs (`prefer_short`); then the beam's
    rank. A finalist not scored on every row (the budget ran out) cannot be compared
    fairly and is left out. With `replace_start_p` below 1.0 (the default) one ranked
    above the initial prompt replaces it only on a lead unlikely to be noise: more rows
    won than lost with sign-test p at most `replace_start_p`. 20 validation rows cannot tell
    such leads apart: the svamp pick of `1a0e8d0` (4 rows won to 1, p = 0.38) lost 56
    to 61 on 100 test rows, while the mmlu finalist that 0.35 held back on `7543775`
    (5 to 3, p = 0.73) scored 41 to the start prompt's 28 (p = 0.029).
    """
    validated: dict[str, Candidate] = {}
    ranked: list[tuple[float, float, int, str]] = []  # (-score, output tokens, rank, id)
    for rank, cid in enumerate(finalists):
        val = split_score(records, cid, split, n)
        if val is None:
            continue
        lead = paired_comparison(records, "c0", cid, split, n) if cid != "c0" else None
        validated[cid] = {**candidates[cid], "val_score": val}
        if lead is not None:
            validated[cid]["lead"] = lead
        cost = mean_output_tokens(records, cid, split) if prefer_short else 0.0
        ranked.append((-round(val, 9), cost or 0.0, rank, cid))

    def may_replace_start(cid: str) -> bool:
        lead = validated[cid].get("lead")
        return cid == "c0" or "c0" not in validated or replace_start_p >= 1 or (
            lead is not None and lead["won"] > lead["lost"] and lead["p"] <= replace_start_p)

    ranked = sorted(r for r in ranked if may_replace_start(r[3]))
    best_id, best = "c0", -1.0
    if ranked:
        best_id, best = ranked[0][3], -ranked[0][0]
    return validated, best_id, best
