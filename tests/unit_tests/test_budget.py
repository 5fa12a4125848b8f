"""The budget cap: `max_llm_calls` is never exceeded, whatever the settings and replies."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from gradsum_fakes import GOOD, optimizer, qa_rows, scripted

from langchain_gradsum import exact_match
from langchain_gradsum.beam import calls_needed_for_one_iteration


class Flaky(Exception):
    status_code = 503


def chaotic(rng: random.Random, flaky: bool) -> Any:
    """A seeded model that answers randomly, sometimes fails once (then recovers on the
    retry, if `flaky`), sometimes garbles the judge's reply, and sometimes loses the
    variable."""
    seen: Counter[str] = Counter()
    edits = iter(range(10**6))

    def respond(text: str, role: str) -> Any:
        seen[text] += 1
        if flaky and seen[text] == 1 and rng.random() < 0.15:
            return Flaky("try again")
        if role == "generate":
            return rng.choice(["A", "B", "B " + text[-2:]])
        if role == "judge":
            if rng.random() < 0.15:
                return {"reasoning": "forgot the score"}
            return {"reasoning": "r", "score": rng.choice([0.0, 0.5, 1.0])}
        if role == "edit":
            n = next(edits)
            return "<prompt>no variable</prompt>" if rng.random() < 0.2 else \
                f"<prompt>{GOOD} {n} {{question}}</prompt>"
        return f"{role} {rng.random():.3f}"

    return respond


def random_settings(rng: random.Random) -> dict[str, Any]:
    scoring = rng.choice(["evaluators", "judge", "both"])
    return dict(
        beam_width=rng.randint(1, 3),
        candidates_per_prompt=rng.randint(1, 3),
        max_iterations=rng.randint(0, 4),
        minibatch_size=rng.randint(1, 4),
        max_gradients_per_prompt=rng.choice([None, 1, 2]),
        summarize=rng.random() < 0.7,
        patience=rng.choice([None, None, 1, 2]),
        max_retries=rng.randint(0, 2),
        max_parse_retries=rng.randint(0, 1),
        max_concurrency=rng.randint(1, 4),
        seed=rng.randint(0, 100),
        evaluators=[exact_match] if scoring != "judge" else [],
        criteria="Say B." if scoring != "evaluators" else None,
    )


@pytest.mark.parametrize("seed", range(60))
def test_max_llm_calls_is_never_exceeded(seed: int) -> None:
    rng = random.Random(seed)
    settings = random_settings(rng)
    train, val = qa_rows(rng.randint(1, 6)), qa_rows(rng.randint(0, 3), prefix="v")
    need = calls_needed_for_one_iteration(
        len(train), len(val), optimizer(scripted(), **settings).context())
    budget = need + rng.randint(0, 60)
    model = scripted(chaotic(rng, flaky=settings["max_retries"] > 0))

    result = optimizer(model, max_llm_calls=budget, **settings).optimize(
        "Q: {question}", train, val or None)

    assert len(model.calls) <= budget
    assert len(model.calls) == result.total_calls
    by_role = model.calls_by_role()
    assert {r: u["calls"] for r, u in result.usage.items() if u["calls"]} == by_role
    assert result.stop_reason in {"budget", "max_iterations", "patience", "no_scored_candidates",
                                  "train_solved"}
    assert result.split == ("val" if val else "train")
    assert result.initial_score is not None and result.best_score is not None
    assert result.best_score >= result.initial_score


def test_a_generous_budget_changes_nothing() -> None:
    settings = dict(max_iterations=2, minibatch_size=2, beam_width=2)
    free = optimizer(scripted(), **settings).optimize("Q: {question}", qa_rows(4))
    capped = optimizer(scripted(), max_llm_calls=10_000, **settings).optimize(
        "Q: {question}", qa_rows(4))
    assert capped.total_calls == free.total_calls
    # the first edit solves every training row: nothing is left to learn from
    assert capped.stop_reason == free.stop_reason == "train_solved"
    assert sorted(capped.candidates) == sorted(free.candidates)


def test_the_budget_stops_the_search_and_still_validates() -> None:
    model = scripted(generate=lambda text: "A")  # never improves: the search would go on
    result = optimizer(model, max_iterations=50, minibatch_size=2, max_llm_calls=80).optimize(
        "Q: {question}", qa_rows(4), qa_rows(2, "v"))
    assert result.stop_reason == "budget"
    assert 0 < result.iterations < 50
    assert len(model.calls) == result.total_calls <= 80
    assert result.candidates["c0"]["val_score"] == 0.0 and result.split == "val"


def test_a_budget_stop_mid_iteration_keeps_the_last_scored_beam() -> None:
    """Retries are not in the per-iteration estimate, so the budget can run out inside an
    iteration, before its outputs are scored. The search's progress must survive: the
    last beam that was scored goes on to the final pick."""
    seen: Counter[str] = Counter()

    def gen(text: str) -> str:
        if "v1:" in text:  # the first edit gets half the rows right
            return "B" if text.endswith("q0") else "A"
        return "B" if GOOD in text else "A"

    def flaky(reply: str) -> Any:
        def respond(text: str) -> Any:
            seen[text] += 1
            if "v1:" in text and seen[text] <= 2:  # calls about c1 need 3 attempts
                return Flaky("busy")
            return reply
        return respond

    def edit(text: str) -> Any:
        if "v1:" not in text:
            return f"<prompt>{GOOD} v1: {{question}}</prompt>"
        return flaky(f"<prompt>{GOOD} v2: {{question}}</prompt>")(text)

    model = scripted(generate=gen, gradient=flaky("Ask for B."), summarize=flaky("Ask for B."),
                     edit=edit)
    # iteration 1 costs 8 (2 critiques, summary, edit, c1's 2-row screen); c0 on 2 rows,
    # 4 reserved for the final 2 prompts x 2 rows. Iteration 2 is planned at 10 but its
    # critique, summary and edit of c1 take 3 attempts each: the cap cuts in after c2's
    # screen, before c2 is scored on the batch.
    result = optimizer(model, beam_width=1, candidates_per_prompt=1, max_iterations=5,
                       minibatch_size=2, max_llm_calls=22).optimize("Q: {question}", qa_rows(2))

    assert result.stop_reason == "budget" and result.iterations == 2
    assert len(model.calls) == result.total_calls <= 22
    c1 = result.candidates["c1"]
    assert c1["template"].startswith("BETTER v1:") and c1["scores"] == {"1": 0.5}
    assert result.best_id == "c1"
    assert result.initial_score == 0.0
    assert result.best_id == "c1" and result.best_score == 0.5
