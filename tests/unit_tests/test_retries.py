"""Transient errors are retried and counted; malformed judge replies are re-asked then
scored 0; every attempt counts against the budget."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from gradsum_fakes import optimizer, qa_rows, scripted

from langchain_gradsum._llm import BudgetExhausted, CallBudget, LLMCaller, is_transient
from langchain_gradsum.evaluators import JudgeVerdict

PROMPT = "Q: {question}"


class RateLimited(Exception):
    status_code = 429


class ServerError(Exception):
    def __init__(self) -> None:
        super().__init__("upstream 503")
        self.response = type("Response", (), {"status_code": 503})()


class APITimeoutError(Exception):
    """Named like the OpenAI client's error."""


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (RateLimited(), True),
        (ServerError(), True),
        (TimeoutError(), True),
        (ConnectionResetError(), True),
        (APITimeoutError(), True),
        (ValueError("bad request"), False),
        (type("BadRequest", (Exception,), {"status_code": 400})(), False),
        (BudgetExhausted("spent"), False),
    ],
)
def test_is_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def fail_first(times: int, error: BaseException, role: str = "generate") -> Any:
    """A responder whose first `times` calls of `role` per prompt raise `error`."""
    seen: Counter[str] = Counter()
    base = scripted().respond

    def respond(text: str, r: str) -> Any:
        if r == role:
            seen[text] += 1
            if seen[text] <= times:
                return error
        return base(text, r)

    return respond


@pytest.mark.parametrize("error", [RateLimited("slow down"), TimeoutError("timed out")])
def test_a_transient_error_is_retried_and_counted(error: BaseException) -> None:
    model = scripted(fail_first(1, error))
    result = optimizer(model, max_iterations=1).optimize(PROMPT, qa_rows(2))

    failed = [c for c in model.calls if isinstance(c[2], BaseException)]
    n_generate_prompts = len({t for r, t, _ in model.calls if r == "generate"})
    assert len(failed) == n_generate_prompts  # each prompt failed once, then succeeded
    assert result.counters["retries"] == len(failed)
    assert result.counters["transient_errors"] == len(failed)
    assert "failed_calls" not in result.counters
    assert not any("error" in rec for rec in result.records.values())
    assert result.usage["generate"]["calls"] == model.calls_by_role()["generate"]
    assert result.total_calls == len(model.calls)
    assert result.best_score == 1.0


def test_retries_give_up_after_max_retries_and_record_the_error() -> None:
    def respond(text: str, role: str) -> Any:
        if role == "generate" and text.endswith("q1"):
            return RateLimited("still limited")
        return scripted().respond(text, role)

    model = scripted(respond)
    result = optimizer(model, max_retries=2, max_iterations=0).optimize(PROMPT, qa_rows(2))
    assert sum(t.endswith("q1") for _, t, _ in model.calls) == 3  # 1 try + 2 retries
    assert result.counters["retries"] == 2 and result.counters["transient_errors"] == 3
    assert result.counters["failed_calls"] == 1
    assert result.records["c0|train|1"]["error"] == "RateLimited: still limited"
    assert result.records["c0|train|1"]["score"] == 0.0
    assert result.total_calls == len(model.calls) == 4


def test_a_non_transient_error_is_not_retried() -> None:
    def respond(text: str, role: str) -> Any:
        if role == "generate" and text.endswith("q1"):
            return ValueError("bad request")
        return scripted().respond(text, role)

    model = scripted(respond)
    result = optimizer(model, max_iterations=0).optimize(PROMPT, qa_rows(2))
    assert len(model.calls) == 2  # one call per row, no retry
    assert "retries" not in result.counters
    assert result.counters["generate_errors"] == 1 and result.counters["failed_calls"] == 1
    assert result.records["c0|train|1"]["error"] == "ValueError: bad request"


def test_a_malformed_judge_reply_is_re_asked_then_scored_zero() -> None:
    def judge(text: str) -> Any:
        return {"reasoning": "I forgot the score"}  # missing field

    model = scripted(judge=judge)
    result = optimizer(model, evaluators=[], criteria="Say B.", max_parse_retries=1,
                       max_iterations=0).optimize(PROMPT, qa_rows(2))

    assert model.calls_by_role() == {"generate": 2, "judge": 4}  # asked twice per output
    assert result.counters["judge_failures"] == 2
    assert result.counters["judge_parse_failures"] == 4
    assert result.usage["judge"]["calls"] == 4
    rec = result.records["c0|train|0"]
    assert rec["score"] == 0.0 and "could not be parsed" in rec["feedback"]


def test_a_judge_that_recovers_on_the_re_ask_is_used() -> None:
    asked: Counter[str] = Counter()

    def judge(text: str) -> Any:
        asked[text] += 1
        return {"score": 1.0} if asked[text] == 1 else {"reasoning": "ok", "score": 1.0}

    result = optimizer(scripted(judge=judge), evaluators=[], criteria="Say B.",
                       max_iterations=0).optimize(PROMPT, qa_rows(2))
    assert "judge_failures" not in result.counters
    assert result.counters["judge_parse_failures"] == 2
    assert result.initial_score == 1.0


def test_a_judge_score_out_of_range_is_clamped() -> None:
    result = optimizer(scripted(judge=lambda t: {"reasoning": "great", "score": 7}),
                       evaluators=[], criteria="Say B.", max_iterations=0
                       ).optimize(PROMPT, qa_rows(1))
    assert result.initial_score == 1.0


# --- retries and the budget -------------------------------------------------------------


def test_every_attempt_takes_one_call_from_the_budget() -> None:
    model = scripted(lambda text, role: TimeoutError("down"))
    caller = LLMCaller(CallBudget(3), None, max_retries=10, backoff=0)
    with pytest.raises(BudgetExhausted):
        caller.text("generate", model, "hello")
    assert len(model.calls) == 3 and caller.budget.used == 3
    assert caller.usage["generate"]["calls"] == 3
    assert caller.counters == {"transient_errors": 3, "retries": 3}


def test_parse_retries_take_budget_too() -> None:
    model = scripted(lambda text, role: {"reasoning": "no score"})
    caller = LLMCaller(CallBudget(None), None, max_parse_retries=2, backoff=0)
    assert caller.structured("judge", model, "grade this", JudgeVerdict) is None
    assert len(model.calls) == 3 and caller.budget.used == 3
    assert caller.counters == {"judge_parse_failures": 3, "judge_failures": 1}


def test_retries_count_against_max_llm_calls_end_to_end() -> None:
    # screening off: every child is scored on the batch; a row no prompt solves keeps the
    # search going to the cap
    settings = dict(max_iterations=5, minibatch_size=2, beam_width=1, candidates_per_prompt=1,
                    screen_size=0)
    rows = qa_rows(4) + qa_rows(1, "hard", answer="C")
    calm, flaky = scripted(), scripted(fail_first(1, RateLimited()))
    budget = 30
    r_calm = optimizer(calm, max_llm_calls=budget, **settings).optimize(PROMPT, rows)
    r_flaky = optimizer(flaky, max_llm_calls=budget, **settings).optimize(PROMPT, rows)
    for model, result in ((calm, r_calm), (flaky, r_flaky)):
        assert len(model.calls) == result.total_calls <= budget
    assert r_flaky.counters["retries"] > 0
    # the calls spent on retries leave less for the search
    assert len(r_flaky.candidates) < len(r_calm.candidates) or \
        r_flaky.iterations < r_calm.iterations


def test_a_provider_error_from_the_judge_is_counted_not_fatal() -> None:
    """A judge call failing with a ValueError (e.g. a content filter) scores that output 0
    and is counted; only a broken programmatic evaluator stops the run."""
    base = scripted().respond

    def respond(text: str, role: str) -> Any:
        if role == "judge" and ("q0" in text or "q1" in text):
            return ValueError("content filter")
        return base(text, role)

    result = optimizer(scripted(respond), criteria="is it B?", max_iterations=0,
                       minibatch_size=4).optimize(PROMPT, qa_rows(4))
    assert result.counters["judge_errors"] == 2
    assert result.counters["failed_calls"] == 2
    judged = [r for r in result.records.values() if "the judge call failed" in r["feedback"]]
    assert len(judged) == 2 and all(r["score"] == 0.0 for r in judged)


def test_a_broken_evaluator_stops_the_run_with_its_name() -> None:
    from langchain_gradsum import OptimizationError

    calls = {"n": 0}

    def flaky_metric(outputs: dict) -> float:
        calls["n"] += 1
        if calls["n"] > 1:  # passes the dry run, then breaks
            raise KeyError("answer")
        return 1.0

    opt = optimizer(scripted(), evaluators=[flaky_metric], max_iterations=0)
    with pytest.raises(OptimizationError, match="flaky_metric"):
        opt.optimize(PROMPT, qa_rows(2))


# --- counters count calls ---------------------------------------------------------------


def test_judge_failures_count_failed_calls_not_rows() -> None:
    """Rows whose judge messages are identical share one judge call; when it fails,
    that is one failure, however many rows it scored 0."""
    rows = [{"inputs": {"question": "same"}, "outputs": {"answer": "B"}}] * 2
    model = scripted(judge=lambda text: {"reasoning": "no score field"})
    result = optimizer(model, evaluators=[], criteria="Say B.", max_parse_retries=1,
                       max_iterations=0).optimize(PROMPT, rows)
    assert model.calls_by_role()["judge"] == 2  # one call, asked twice
    assert result.counters["judge_failures"] == 1
    assert result.counters["judge_parse_failures"] == 2
    assert result.counters["judge_calls_saved"] == 1
    assert all(r["judge_failed"] and r["score"] == 0.0 for r in result.records.values())


def test_a_failed_judge_call_shared_by_rows_is_one_failed_call() -> None:
    rows = [{"inputs": {"question": q}, "outputs": {"answer": "B"}}
            for q in ("same", "same", "other")]
    base = scripted().respond

    def respond(text: str, role: str) -> Any:
        if role == "judge" and "same" in text:
            return ValueError("content filter")
        return base(text, role)

    model = scripted(respond)
    result = optimizer(model, evaluators=[], criteria="Say B.", max_iterations=0,
                       minibatch_size=3).optimize(PROMPT, rows)
    assert model.calls_by_role()["judge"] == 2
    assert result.counters["failed_calls"] == 1
    assert result.counters["judge_failures"] == 1 and result.counters["judge_errors"] == 1
    failed = [r for r in result.records.values() if r.get("judge_failed")]
    assert len(failed) == 2
