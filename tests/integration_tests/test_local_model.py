"""A tiny real optimization on the embedded Qwen2.5-Coder-1.5B model (1-3 minutes)."""

from __future__ import annotations

import pytest
from langchain_core.prompts import PromptTemplate

from langchain_gradsum import GradSumOptimizer, numeric_match
from langchain_gradsum.demo import START_PROMPT, TASK, demo_rows
from langchain_gradsum.local_llm import local_chat_model

pytestmark = pytest.mark.integration


def test_one_iteration_returns_a_valid_prompt(local_base_url: str) -> None:
    model = local_chat_model(local_base_url, max_tokens=256)
    rows = demo_rows()[:3]
    optimizer = GradSumOptimizer(
        model,
        task_description=TASK,
        evaluators=[numeric_match],
        beam_width=1,
        candidates_per_prompt=1,
        max_iterations=1,
        minibatch_size=2,
        max_gradients_per_prompt=1,
        max_concurrency=1,
        max_llm_calls=20,
    )
    result = optimizer.optimize(PromptTemplate.from_template(START_PROMPT), rows)

    assert isinstance(result.best_prompt, PromptTemplate)
    assert result.best_prompt.input_variables == ["question"]
    assert result.best_prompt.format(question="2+2?")  # renders
    assert result.total_calls <= 20
    assert result.stop_reason in {"max_iterations", "budget", "train_solved"}
    assert result.best_score is not None and result.initial_score is not None
    assert result.best_score >= result.initial_score
    assert result.usage["generate"]["input_tokens"] > 0
    if result.stop_reason == "train_solved":  # the start prompt solved all 3 rows
        assert "edit" not in result.usage and len(result.candidates) == 1
        return
    # The one child was written, by the editor or (a "shorten" child when most failed
    # replies were cut off) composed without a call, and every version went through the
    # variable guard: each made a new candidate or was rejected/deduplicated. An unusable
    # first version is re-asked once (retry_unusable_edits).
    made = len(result.candidates) - 1
    guarded = result.counters.get("rejected_candidates", 0) + result.counters.get(
        "duplicate_candidates", 0
    )
    composed = result.counters.get("composed_edits", 0)
    retries = result.counters.get("edit_retries", 0)
    edit_calls = result.usage.get("edit", {}).get("calls", 0)
    assert composed in {0, 1}
    assert edit_calls == 1 - composed + retries
    assert retries in {0, 1}
    assert made + guarded == edit_calls + composed
    assert made <= 1


def test_llm_judge_with_structured_output(local_base_url: str) -> None:
    model = local_chat_model(local_base_url, max_tokens=200)
    rows = demo_rows()[:2]
    optimizer = GradSumOptimizer(
        model,
        task_description=TASK,
        criteria="1 if the final number in the output equals the expected answer, else 0.",
        max_iterations=0,
        minibatch_size=2,
        max_concurrency=1,
    )
    result = optimizer.optimize("Solve step by step, then give the final number: {question}", rows)

    assert result.usage["judge"]["calls"] >= 2
    assert result.counters.get("judge_failures", 0) == 0
    for key, record in result.records.items():
        assert 0.0 <= record["score"] <= 1.0, key
        assert record["feedback"].startswith("judge:"), record["feedback"]
