"""GradSumOptimizer end to end: the final pick, the ablation, counters, events and results."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from gradsum_fakes import GOOD, optimizer, qa_rows, scripted

from langchain_gradsum import OptimizationError, OptimizationResult, exact_match

PROMPT = "Q: {question}"


# --- the final pick ---------------------------------------------------------------------


def overfit_generate(text: str) -> str:
    """Edited prompts ace training rows ("q...") but fail validation rows ("v...")."""
    if GOOD in text:
        return "B" if text.endswith(tuple(f"q{i}" for i in range(10))) else "A"
    return "B" if text.split()[-1].startswith("v") else "A"


def test_the_initial_prompt_competes_on_val_and_wins_against_overfit_children() -> None:
    model = scripted(generate=overfit_generate)
    result = optimizer(model, max_iterations=2, beam_width=2).optimize(
        PROMPT, qa_rows(4), qa_rows(3, prefix="v"))

    children = [c for c in result.candidates.values() if c["parent_id"] is not None]
    assert children and all(c["scores"].get(str(c["iteration"])) == 1.0 for c in children)
    assert result.best_id == "c0" and result.best_prompt == PROMPT
    assert result.split == "val"
    assert result.initial_score == result.best_score == 1.0
    assert all(f"c0|val|{i}" in result.records for i in range(3))
    # the finalists that were validated all scored 0 there
    validated = {cid: c["val_score"] for cid, c in result.candidates.items()
                 if c["val_score"] is not None}
    assert validated["c0"] == 1.0 and len(validated) >= 2
    assert all(v == 0.0 for cid, v in validated.items() if cid != "c0")


def test_initial_and_best_scores_are_the_val_means() -> None:
    # c0 gets v0 right only; edited prompts get v0 and v1 right; nobody gets v2
    def gen(text: str) -> str:
        row = text.split()[-1]
        if row.startswith("q"):
            return "B" if GOOD in text else "A"
        right = {"v0", "v1"} if GOOD in text else {"v0"}
        return "B" if row in right else "A"

    result = optimizer(scripted(generate=gen)).optimize(PROMPT, qa_rows(2), qa_rows(3, "v"))
    assert result.split == "val"
    assert result.initial_score == pytest.approx(1 / 3)
    assert result.best_score == pytest.approx(2 / 3)
    assert result.best_id != "c0"
    assert result.candidates[result.best_id]["val_score"] == result.best_score
    assert result.candidates["c0"]["val_score"] == result.initial_score


def test_without_val_the_training_data_picks_the_winner() -> None:
    model = scripted()
    result = optimizer(model, minibatch_size=2).optimize(PROMPT, qa_rows(5))
    assert result.split == "train"
    assert result.initial_score == 0.0 and result.best_score == 1.0
    finalists = [cid for cid, c in result.candidates.items() if c["val_score"] is not None]
    assert "c0" in finalists and result.best_id in finalists
    for cid in finalists:  # scored on every training row, not just a minibatch
        assert all(f"{cid}|train|{i}" in result.records for i in range(5))
    assert not any("|val|" in key for key in result.records)


@pytest.mark.parametrize("seed", range(6))
def test_the_result_is_never_worse_on_val_than_the_initial_prompt(seed: int) -> None:
    import random

    rng = random.Random(seed)
    answers: dict[str, str] = {}

    def gen(text: str) -> str:  # a random but consistent answer per (prompt, row)
        return answers.setdefault(text, rng.choice("AB"))

    result = optimizer(scripted(generate=gen), max_iterations=3, minibatch_size=2,
                       beam_width=2, seed=seed).optimize(PROMPT, qa_rows(6), qa_rows(4, "v"))
    assert result.best_score is not None and result.initial_score is not None
    assert result.best_score >= result.initial_score
    assert result.best_score == max(c["val_score"] for c in result.candidates.values()
                                    if c["val_score"] is not None)


# --- the ablation switch ----------------------------------------------------------------


def test_summarize_false_edits_from_single_gradients() -> None:
    gradients = iter(f"GRAD-{i}" for i in range(100))
    model = scripted(gradient=lambda text: next(gradients))
    result = optimizer(model, summarize=False, candidates_per_prompt=2, minibatch_size=3,
                       max_iterations=2).optimize(PROMPT, qa_rows(3))

    roles = model.calls_by_role()
    assert "summarize" not in roles and "summarize" not in result.usage
    children = [c for c in result.candidates.values() if c["parent_id"] is not None]
    assert children
    for child in children:
        parent = result.candidates[child["parent_id"]]
        assert child["summary"] in parent["gradients"][str(child["iteration"] - 1)]
        assert child["summary"].startswith("GRAD-")
        assert parent["summaries"] == {}
    # each edit prompt carried exactly one critique as its feedback
    edits = [t for r, t, _ in model.calls if r == "edit"]
    assert all(t.count("GRAD-") == 1 for t in edits)
    assert len({c["summary"] for c in children}) == len(children)


def test_summarize_true_edits_from_one_summary_per_candidate() -> None:
    model = scripted()
    result = optimizer(model, candidates_per_prompt=3, minibatch_size=3,
                       max_iterations=1).optimize(PROMPT, qa_rows(3))
    roles = model.calls_by_role()
    assert roles["gradient"] == 3 and roles["summarize"] == 1 and roles["edit"] == 3
    children = [c for c in result.candidates.values() if c["parent_id"] == "c0"]
    assert len(children) == 3 and {c["summary"] for c in children} == {"Ask for B."}


# --- the variable guard, counted end to end ----------------------------------------------


def test_rejected_and_repaired_candidates_are_counted_in_the_result() -> None:
    replies = iter([
        "<prompt>Lost the variable.</prompt>",
        "<prompt>Still {question} with {invented}</prompt>",  # still fails: another round
        "<prompt>Lost again</prompt>",
        "<prompt>BETTER {question} } stray</prompt>",
    ] + [f"<prompt>BETTER {i} {{question}}</prompt>" for i in range(100)])
    model = scripted(edit=lambda text: next(replies))
    result = optimizer(model, candidates_per_prompt=2, max_concurrency=1, max_iterations=2,
                       beam_width=1, repair_missing_variables=False, instruction_edits=False
                       ).optimize(PROMPT, qa_rows(2))
    assert result.counters["rejected_candidates"] == 2
    assert result.counters["repaired_candidates"] == 2
    templates = {c["template"] for c in result.candidates.values()}
    assert "Still {question} with {{invented}}" in templates
    assert "BETTER {question} }} stray" in templates
    assert not any("Lost" in t for t in templates)


# --- results, events and other entry points ---------------------------------------------


def test_result_lineage_history_and_json(tmp_path: Path) -> None:
    # the first edit does not help (it fails its screen); the second, from c0 again, does
    model = scripted(generate=lambda text: "B" if "v2" in text else "A")
    result = optimizer(model, max_iterations=2, beam_width=1, candidates_per_prompt=1,
                       target_score=None).optimize(PROMPT, qa_rows(2))
    assert isinstance(result, OptimizationResult)
    chain = result.lineage()
    assert chain[0]["id"] == "c0" and chain[-1]["id"] == result.best_id
    assert all(b["parent_id"] == a["id"] for a, b in zip(chain, chain[1:], strict=False))
    assert [c["id"] for c in result.history[0]] == ["c0"]
    assert result.iterations == 2 and len(result.history) == 3
    assert result.total_calls == len(model.calls)
    assert result.total_tokens == sum(
        u["input_tokens"] + u["output_tokens"] for u in result.usage.values()) > 0
    saved = json.loads(result.save(tmp_path / "out" / "result.json").read_text())
    assert saved["best_id"] == result.best_id and saved["total_calls"] == result.total_calls
    assert set(saved["candidates"]) == set(result.candidates)


def test_on_event_sees_progress_in_order() -> None:
    events: list[dict[str, Any]] = []
    optimizer(scripted(), max_iterations=1).optimize(PROMPT, qa_rows(2), on_event=events.append)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "iteration" and kinds[-1] == "best"
    assert kinds.index("scored") < kinds.index("candidate") < kinds.index("finalize")
    assert all(isinstance(e["calls"], int) for e in events)


def test_target_score_stops_the_run_end_to_end() -> None:
    model = scripted(generate=lambda text: "B")
    result = optimizer(model, max_iterations=5, target_score=1.0).optimize(PROMPT, qa_rows(2))
    assert result.stop_reason == "target_score" and result.iterations == 0
    assert set(model.calls_by_role()) == {"generate"}


def test_patience_stops_the_run_end_to_end() -> None:
    model = scripted(generate=lambda text: "A")  # nothing ever improves
    result = optimizer(model, max_iterations=10, patience=2).optimize(PROMPT, qa_rows(2))
    assert result.stop_reason == "patience" and result.iterations == 2


def test_aoptimize_matches_optimize() -> None:
    sync = optimizer(scripted(), max_concurrency=1).optimize(PROMPT, qa_rows(2), qa_rows(2, "v"))
    async_ = asyncio.run(optimizer(scripted(), max_concurrency=1).aoptimize(
        PROMPT, qa_rows(2), qa_rows(2, "v")))
    assert (async_.best_template, async_.best_score, async_.stop_reason, async_.total_calls) == (
        sync.best_template, sync.best_score, sync.stop_reason, sync.total_calls)


def test_a_failing_run_raises_with_the_partial_result() -> None:
    def gen(text: str) -> Any:
        return ValueError("model broke") if GOOD in text else "A"

    with pytest.raises(OptimizationError, match="model broke") as info:
        optimizer(scripted(generate=gen), candidates_per_prompt=1, beam_width=1,
                  minibatch_size=1).optimize(PROMPT, qa_rows(1))
    partial = info.value.partial_result
    assert partial is not None and partial.split == "minibatch"
    assert partial.best_id == "c0" and partial.best_score == 0.0


def test_langsmith_style_examples_and_jsonl_are_accepted(tmp_path: Path) -> None:
    class Example:  # what langsmith.schemas.Example exposes
        def __init__(self, q: str) -> None:
            self.inputs, self.outputs = {"question": q}, {"answer": "B"}

    path = tmp_path / "val.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in qa_rows(2, "v")) + "\n", encoding="utf-8")
    result = optimizer(scripted(), evaluators=[exact_match]).optimize(
        PROMPT, [Example("q0"), Example("q1")], path)
    assert result.split == "val" and result.best_score == 1.0


class Busy(Exception):
    status_code = 503


def test_the_initial_prompt_is_validated_first_when_retries_eat_the_reserve() -> None:
    """The final reserve assumes no retries; when retries eat it, what is left must go
    to validating the initial prompt, not to outputs of the others that can never be
    scored."""
    seen: Counter[str] = Counter()

    def gen(text: str) -> Any:
        if text.startswith(GOOD) and text.endswith(("v0", "v1")):
            seen[text] += 1
            if seen[text] <= 3:
                return Busy("busy")  # the child's val outputs take 4 attempts each
        return "B" if text.startswith(GOOD) else "A"

    model = scripted(generate=gen, edit=lambda t: f"<prompt>{GOOD}: {{question}}</prompt>")
    # need = 2 (c0 on the minibatch) + 7 (one iteration) + 8 (2 prompts x 2 val rows x 2)
    result = optimizer(model, evaluators=[], criteria="Say B.", beam_width=1,
                       candidates_per_prompt=1, max_iterations=1, minibatch_size=1,
                       max_llm_calls=17, max_retries=3, max_concurrency=1, screen_size=0,
                       ).optimize(PROMPT, qa_rows(1), qa_rows(2, prefix="v"))

    assert len(model.calls) == result.total_calls == 17
    assert result.candidates["c0"]["val_score"] == 0.0
    assert result.initial_score == 0.0
    assert result.best_id == "c0" and result.best_score == 0.0  # c1 could not be validated
    assert result.candidates["c1"]["val_score"] is None


def test_max_concurrency_defaults_to_the_local_servers_slots(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_gradsum.optimizer import _default_concurrency

    monkeypatch.delenv("GRADSUM_LOCAL_BASE_URL", raising=False)
    monkeypatch.setenv("GRADSUM_LOCAL_SLOTS", "3")
    assert _default_concurrency("local", None, None) == 3
    assert _default_concurrency(scripted(), "local", None) == 3  # any role on the local model
    assert _default_concurrency(scripted(), None, None) == 4
    assert optimizer(scripted()).settings["max_concurrency"] == 4


def test_the_scripted_model_routes_by_tag_whatever_the_meta_prompts_say() -> None:
    """Overridden meta-prompts without any of the default wording: each call still
    reaches the script under its own role (the ``gradsum:<role>`` tag)."""
    from langchain_gradsum import MetaPrompts

    meta = MetaPrompts(
        judge="Rate {output} by {criteria}.",
        gradient="Why is {output} wrong for {prompt}?",
        summarize="Sum up {gradients} for {prompt}.",
        edit="Fix {prompt} given {feedback}; keep {variables}.",
        edit_instruction="Add a line to {prompt} given {feedback}.",
    )
    model = scripted()
    result = optimizer(model, meta_prompts=meta, criteria="right", max_iterations=1).optimize(
        "Q: {question}", qa_rows(4))
    roles = model.calls_by_role()
    assert set(roles) == {"generate", "judge", "gradient", "summarize", "edit"}
    assert all(text.startswith("Rate ") for role, text, _ in model.calls if role == "judge")
    assert GOOD in result.best_template
