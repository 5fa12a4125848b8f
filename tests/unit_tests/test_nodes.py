"""Each GRAD-SUM node, called directly with a stand-in runtime, and driven through the graph."""

from __future__ import annotations

from typing import Any

import pytest
from gradsum_fakes import FakeRuntime, context, output_in, qa_rows, scripted

from langchain_gradsum import create_gradsum_graph
from langchain_gradsum.beam import route
from langchain_gradsum.data import minibatch_indices
from langchain_gradsum.nodes import (
    edit,
    evaluate,
    extract_prompt,
    finalize,
    generate,
    gradient,
    new_candidate,
    summarize,
)

PROMPT = "Q: {question}"


def cand(cid: str, template: str = PROMPT, *, parent: str | None = None, it: int = 0,
         **fields: Any) -> dict[str, Any]:
    return {**new_candidate(cid, template, parent_id=parent, iteration=it, summary=None),
            **fields}


def loop_state(n_train: int = 2, **extra: Any) -> dict[str, Any]:
    """The state as the loop sees it after the first `generate` set it up."""
    state: dict[str, Any] = {
        "prompt": PROMPT, "train": qa_rows(n_train), "val": [], "iteration": 0,
        "candidates": {"c0": cand("c0")}, "beam": ["c0"], "records": {},
    }
    state.update(extra)
    return state


def calls_of(model: Any, role: str) -> list[str]:
    return [text for r, text, _ in model.calls if r == role]


# --- generate ---------------------------------------------------------------------------


def test_generate_makes_c0_and_runs_it_on_this_iterations_minibatch() -> None:
    model = scripted()
    rt = FakeRuntime(context(model, minibatch_size=2, seed=3))
    state = {"prompt": PROMPT, "train": qa_rows(5), "val": []}

    out = generate(state, rt, {})

    batch = minibatch_indices(5, 2, 3, 0)
    assert len(batch) == 2
    assert out["beam"] == ["c0"] and out["iteration"] == 0
    c0 = out["candidates"]["c0"]
    assert (c0["id"], c0["template"], c0["parent_id"], c0["iteration"]) == ("c0", PROMPT, None, 0)
    assert out["batch"] == batch
    # each output with the tokens it cost and whether it hit the token cap
    assert out["records"] == {f"c0|train|{i}": {"output": "A", "output_tokens": 1,
                                               "truncated": False} for i in batch}
    assert sorted(calls_of(model, "generate")) == sorted(f"Q: q{i}" for i in batch)
    assert out["usage"]["generate"]["calls"] == 2
    assert [(e["event"], e["iteration"], e["beam"]) for e in rt.events] == [
        ("iteration", 0, ["c0"])]


def test_generate_skips_outputs_it_already_has() -> None:
    model = scripted()
    rt = FakeRuntime(context(model, minibatch_size=2))
    state = loop_state(
        candidates={"c0": cand("c0"), "c1": cand("c1", "BETTER {question}", parent="c0", it=1)},
        beam=["c0", "c1"],
        records={"c0|train|0": {"output": "A", "score": 0.0},
                 "c0|train|1": {"output": "A", "score": 0.0}},
    )

    out = generate(state, rt, {})

    assert sorted(calls_of(model, "generate")) == ["BETTER q0", "BETTER q1"]
    assert set(out["records"]) == {"c1|train|0", "c1|train|1"}


def test_generate_records_a_failed_call_as_an_error_and_counts_it() -> None:
    def gen(text: str) -> Any:
        return ValueError("bad request") if text.endswith("q1") else "A"

    model = scripted(generate=gen)
    out = generate(loop_state(), FakeRuntime(context(model, max_concurrency=1)), {})

    assert out["records"]["c0|train|0"]["output"] == "A"
    assert out["records"]["c0|train|1"]["error"] == "ValueError: bad request"
    assert out["counters"]["failed_calls"] == 1
    assert out["counters"]["generate_errors"] == 1


def test_generate_raises_when_every_call_fails() -> None:
    model = scripted(generate=lambda text: ValueError("model gone"))
    with pytest.raises(ValueError, match="model gone"):
        generate(loop_state(), FakeRuntime(context(model)), {})


def test_generate_does_nothing_once_a_stop_reason_is_set() -> None:
    model = scripted()
    out = generate(loop_state(stop_reason="budget"), FakeRuntime(context(model)), {})
    assert out == {}
    assert model.calls == []


# --- evaluate ---------------------------------------------------------------------------


def test_evaluate_scores_each_output_and_sets_the_minibatch_mean() -> None:
    model = scripted()
    rt = FakeRuntime(context(model))
    state = loop_state(records={"c0|train|0": {"output": "B"}, "c0|train|1": {"output": "A"}})

    out = evaluate(state, rt, {})

    assert model.calls == []  # programmatic evaluator only
    assert out["records"]["c0|train|0"]["score"] == 1.0
    assert out["records"]["c0|train|1"]["score"] == 0.0
    assert out["records"]["c0|train|1"]["output"] == "A"
    assert out["records"]["c0|train|1"]["feedback"].startswith("exact_match: 0")
    assert out["candidates"]["c0"]["scores"] == {"0": 0.5}
    assert rt.events[-1]["event"] == "scored"
    assert rt.events[-1]["candidate"] == "c0" and rt.events[-1]["score"] == 0.5


def test_evaluate_averages_the_judge_with_the_evaluators() -> None:
    model = scripted(judge=lambda text: {"reasoning": "half right", "score": 0.5})
    rt = FakeRuntime(context(model, criteria="Answer with the letter B."))
    state = loop_state(records={"c0|train|0": {"output": "B"}, "c0|train|1": {"output": "A"}})

    out = evaluate(state, rt, {})

    judged = calls_of(model, "judge")
    assert len(judged) == 2
    assert all("Answer with the letter B." in t for t in judged)
    assert sorted(output_in(t) for t in judged) == ["A", "B"]
    rec = out["records"]["c0|train|0"]
    assert rec["score"] == pytest.approx(0.75)
    assert "exact_match: 1" in rec["feedback"] and "judge: 0.5 (half right)" in rec["feedback"]
    assert out["candidates"]["c0"]["scores"] == {"0": pytest.approx(0.5)}  # (0.75 + 0.25) / 2
    assert out["usage"]["judge"]["calls"] == 2


def test_evaluate_gives_a_failed_call_zero_without_asking_the_judge() -> None:
    model = scripted()
    rt = FakeRuntime(context(model, criteria="Say B."))
    state = loop_state(records={"c0|train|0": {"error": "TimeoutError: slow"},
                                "c0|train|1": {"output": "B"}})

    out = evaluate(state, rt, {})

    assert len(calls_of(model, "judge")) == 1
    assert out["records"]["c0|train|0"]["score"] == 0.0
    assert "TimeoutError: slow" in out["records"]["c0|train|0"]["feedback"]
    assert out["candidates"]["c0"]["scores"] == {"0": 0.5}


def test_evaluate_leaves_the_decision_open_while_outputs_are_missing() -> None:
    model = scripted()
    state = loop_state(
        candidates={"c0": cand("c0"), "c1": cand("c1", "X {question}", parent="c0", it=1)},
        beam=["c0", "c1"],
        records={"c0|train|0": {"output": "B"}, "c0|train|1": {"output": "B"},
                 "c1|train|0": {"output": "B"}},  # c1 row 1 not generated yet
    )
    rt = FakeRuntime(context(model))
    out = evaluate(state, rt, {})
    assert out["records"]["c1|train|0"]["score"] == 1.0
    assert not out["candidates"] and out["beam"] == ["c0", "c1"]  # no score, no pruning yet
    merged = {**state, **out, "records": {**state["records"], **out["records"]},
              "candidates": {**state["candidates"], **out["candidates"]}}
    assert route(merged, rt) == "more"


def test_evaluate_judges_the_same_output_on_the_same_row_once() -> None:
    model = scripted(judge=lambda text: {"reasoning": "fine", "score": 0.5})
    rt = FakeRuntime(context(model, criteria="Say B.", max_concurrency=4))
    state = loop_state(
        candidates={"c0": cand("c0"), "c1": cand("c1", "X {question}", parent="c0", it=1),
                    "c2": cand("c2", "Y {question}", parent="c0", it=1)},
        beam=["c1", "c2"],
        records={  # c0's records are from an earlier step, already scored
            "c0|train|0": {"output": "B", "score": 0.75, "feedback": "earlier"},
            "c0|train|1": {"output": "A", "score": 0.0, "feedback": "bad",
                           "judge_failed": True},
            "c1|train|0": {"output": "B"}, "c1|train|1": {"output": "A"},
            "c2|train|0": {"output": "C"}, "c2|train|1": {"output": "A"},
        },
    )

    out = evaluate(state, rt, {})

    # row 0 "B" reuses c0's score; row 1 "A" is judged once for c1 and c2 (c0's failed
    # verdict is not reused); row 0 "C" is new
    assert sorted(output_in(t) for t in calls_of(model, "judge")) == ["A", "C"]
    recs = out["records"]
    assert recs["c1|train|0"]["score"] == 0.75 and recs["c1|train|0"]["feedback"] == "earlier"
    assert recs["c1|train|1"]["score"] == recs["c2|train|1"]["score"] == pytest.approx(0.25)
    assert recs["c1|train|1"]["feedback"] == recs["c2|train|1"]["feedback"]
    assert out["counters"] == {"judge_calls_saved": 2}


def test_evaluate_marks_a_failed_judge_verdict() -> None:
    model = scripted(judge=lambda text: "not json at all")
    rt = FakeRuntime(context(model, criteria="Say B.", max_parse_retries=0))
    state = loop_state(records={"c0|train|0": {"output": "B"}, "c0|train|1": {"output": "A"}})

    out = evaluate(state, rt, {})

    assert all(out["records"][f"c0|train|{i}"]["judge_failed"] for i in (0, 1))
    assert out["counters"]["judge_failures"] == 2


def test_evaluate_raises_a_broken_evaluator() -> None:
    def broken(outputs: dict) -> float:
        return 7.0

    model = scripted()
    state = loop_state(records={"c0|train|0": {"output": "B"}, "c0|train|1": {"output": "A"}})
    with pytest.raises(ValueError, match="scores must be in 0..1"):
        evaluate(state, FakeRuntime(context(model, evaluators=(broken,))), {})


# --- gradient ---------------------------------------------------------------------------


def scored_state(scores: list[float], outputs: list[str] | None = None) -> dict[str, Any]:
    outputs = outputs or [f"out{i}" for i in range(len(scores))]
    return loop_state(
        train=qa_rows(len(scores), answer="REF-ANSWER"),
        records={f"c0|train|{i}": {"output": o, "score": s, "feedback": f"fb{i}"}
                 for i, (o, s) in enumerate(zip(outputs, scores, strict=True))},
    )


def echo_gradient(text: str) -> str:
    return f"fix for {output_in(text)}"


def test_gradient_critiques_only_failing_outputs_worst_first() -> None:
    model = scripted(gradient=echo_gradient)
    rt = FakeRuntime(context(model, minibatch_size=3, max_concurrency=1))

    out = gradient(scored_state([1.0, 0.0, 0.5]), rt, {})

    assert len(calls_of(model, "gradient")) == 2
    assert out["candidates"]["c0"]["gradients"] == {"0": ["fix for out1", "fix for out2"]}
    assert "beam" not in out  # `evaluate` pruned it already
    first = calls_of(model, "gradient")[0]
    # the critic sees the prompt, the input, the output, the reference, score and feedback
    for shown in (PROMPT, "q1", "out1", "REF-ANSWER", "0.00", "fb1"):
        assert shown in first


def test_gradient_respects_max_gradients_per_prompt() -> None:
    model = scripted(gradient=echo_gradient)
    rt = FakeRuntime(context(model, minibatch_size=3, max_gradients_per_prompt=1))
    out = gradient(scored_state([0.5, 0.0, 0.2]), rt, {})
    assert out["candidates"]["c0"]["gradients"] == {"0": ["fix for out1"]}


def test_gradient_makes_no_call_for_a_perfect_candidate() -> None:
    model = scripted()
    out = gradient(scored_state([1.0, 1.0]), FakeRuntime(context(model)), {})
    assert model.calls == []
    assert out["candidates"] == {}


def test_gradient_writes_one_list_per_candidate() -> None:
    model = scripted(gradient=echo_gradient)
    state = loop_state(
        candidates={"c0": cand("c0"), "c1": cand("c1", "X {question}", parent="c0", it=1)},
        beam=["c0", "c1"],
        records={"c0|train|0": {"output": "a0", "score": 0.0},
                 "c0|train|1": {"output": "a1", "score": 1.0},
                 "c1|train|0": {"output": "b0", "score": 0.0},
                 "c1|train|1": {"output": "b1", "score": 0.0}},
    )
    out = gradient(state, FakeRuntime(context(model, max_concurrency=1)), {})
    assert out["candidates"]["c0"]["gradients"] == {"0": ["fix for a0"]}
    assert out["candidates"]["c1"]["gradients"] == {"0": ["fix for b0", "fix for b1"]}
    # the child's critiques were written about the child's own template
    assert sum("X {question}" in t for t in calls_of(model, "gradient")) == 2


# --- summarize --------------------------------------------------------------------------


def test_summarize_writes_one_summary_per_candidate_with_gradients() -> None:
    model = scripted(summarize=lambda text: f"summary of {text.count('<critique>')}")
    state = loop_state(
        candidates={"c0": cand("c0", gradients={"0": ["g1", "g2"]}),
                    "c1": cand("c1", "X {question}", parent="c0", it=1,
                               gradients={"0": ["h1"]}),
                    "c2": cand("c2", "Y {question}", parent="c0", it=1)},
        beam=["c0", "c1", "c2"],
    )

    out = summarize(state, FakeRuntime(context(model)), {})

    assert len(model.calls) == 2
    assert out["candidates"]["c0"]["summaries"] == {"0": "summary of 2"}
    assert out["candidates"]["c1"]["summaries"] == {"0": "summary of 1"}
    assert "c2" not in out["candidates"]
    c0_prompt = next(t for t in calls_of(model, "summarize") if PROMPT in t)
    assert "<critique>g1</critique>\n<critique>g2</critique>" in c0_prompt


def test_summarize_is_skipped_in_the_ablation() -> None:
    model = scripted()
    state = loop_state(candidates={"c0": cand("c0", gradients={"0": ["g1"]})})
    assert summarize(state, FakeRuntime(context(model, summarize=False)), {}) == {}
    assert model.calls == []


# --- edit -------------------------------------------------------------------------------


def test_edit_writes_candidates_per_prompt_children_of_each_parent() -> None:
    model = scripted()
    state = loop_state(
        candidates={"c0": cand("c0", summaries={"0": "S0"}),
                    "c1": cand("c1", "X {question}", parent="c0", it=0,
                               summaries={"0": "S1"})},
        beam=["c0", "c1"],
    )
    rt = FakeRuntime(context(model, candidates_per_prompt=3,
                             instruction_edits=False))

    out = edit(state, rt, {})

    edits = calls_of(model, "edit")
    assert len(edits) == 6
    for k in (1, 2, 3):
        assert sum(f"version {k} of 3" in t for t in edits) == 2
    # each version asks for something different (a deterministic editor gives distinct children)
    from langchain_gradsum.prompts import EDIT_VARIANTS

    for ask in EDIT_VARIANTS:
        assert sum(ask in t for t in edits) == 2
    assert all("{question}" in t for t in edits)
    children = out["candidates"]
    assert sorted(children) == ["c2", "c3", "c4", "c5", "c6", "c7"]
    assert sorted(c["parent_id"] for c in children.values()) == ["c0"] * 3 + ["c1"] * 3
    for child in children.values():
        assert child["iteration"] == 1
        assert child["summary"] == {"c0": "S0", "c1": "S1"}[child["parent_id"]]
        assert child["template"].startswith("BETTER v") and child["scores"] == {}
    assert out["beam"] == ["c0", "c1", *children]
    assert out["iteration"] == 1
    assert [e["event"] for e in rt.events] == ["candidate"] * 6 + ["iteration"]


def test_edit_uses_overridden_variants() -> None:
    from langchain_gradsum import MetaPrompts

    model = scripted()
    state = loop_state(candidates={"c0": cand("c0", summaries={"0": "S"})})
    ctx = context(model, candidates_per_prompt=3, max_concurrency=1, instruction_edits=False,
                  meta_prompts=MetaPrompts(edit_variants=["ASK-ONE", "ASK-TWO"]))
    edit(state, FakeRuntime(ctx), {})
    edits = calls_of(model, "edit")
    assert ["ASK-ONE" in t for t in edits] == [True, False, True]
    assert ["ASK-TWO" in t for t in edits] == [False, True, False]


def test_edit_applies_the_variable_guard() -> None:
    replies = iter([
        "Sure!\n<prompt>Think, then answer {question} in {format}.</prompt>",  # invented var
        "<prompt>Just answer.</prompt>",  # lost {question}
        "<prompt>Q:   {question}</prompt>",  # same as c0 up to spaces
        "```\nAnswer {question} briefly.\n```",  # no tags, fenced: fine
    ])
    model = scripted(edit=lambda text: next(replies))
    state = loop_state(candidates={"c0": cand("c0", summaries={"0": "S"})})
    rt = FakeRuntime(context(model, candidates_per_prompt=4, max_concurrency=1,
                             instruction_edits=False, repair_missing_variables=False,
                             retry_unusable_edits=False))

    out = edit(state, rt, {})

    templates = sorted(c["template"] for c in out["candidates"].values())
    assert templates == ["Answer {question} briefly.",
                         "Think, then answer {question} in {{format}}."]
    assert out["counters"] == {"repaired_candidates": 1, "rejected_candidates": 1,
                               "duplicate_candidates": 1}
    rejected = [e for e in rt.events if e["event"] == "rejected"]
    assert [(e["parent"], e["why"]) for e in rejected] == [("c0", "rejected: lost {question}")]
    # the repaired child renders the invented placeholder literally
    from langchain_gradsum._templates import PromptSlot

    child = next(c for c in out["candidates"].values() if "format" in c["template"])
    msg = PromptSlot("str").render(child["template"], {"question": "2+2"})[0]
    assert msg.content == "Think, then answer 2+2 in {format}."


def test_edit_repairs_a_lost_variable_by_appending_it_by_default() -> None:
    replies = iter(["<prompt>Solve it step by step.</prompt>", "<prompt>Fine: {question}</prompt>"])
    model = scripted(edit=lambda text: next(replies))
    state = loop_state(candidates={"c0": cand("c0", summaries={"0": "S"})})
    rt = FakeRuntime(context(model, candidates_per_prompt=2, max_concurrency=1,
                             instruction_edits=False))

    out = edit(state, rt, {})

    templates = sorted(c["template"] for c in out["candidates"].values())
    assert templates == ["Fine: {question}", "Solve it step by step.\n\n{question}"]
    assert out["counters"] == {"repaired_candidates": 1}
    assert not [e for e in rt.events if e["event"] == "rejected"]


def test_edit_re_asks_an_unusable_edit_once_saying_why() -> None:
    replies = iter([
        "<prompt>Q:   {question}</prompt>",  # same as c0: duplicate
        "<prompt>Just answer.</prompt>",  # lost {question}
        "<prompt>Answer {question} with a number.</prompt>",  # fine
        # the two retries, in job order
        "<prompt>Q: {question}</prompt>",  # a duplicate again: dropped for good
        "<prompt>Answer {question} in one word.</prompt>",
    ])
    model = scripted(edit=lambda text: next(replies))
    state = loop_state(candidates={"c0": cand("c0", summaries={"0": "S"})})
    rt = FakeRuntime(context(model, candidates_per_prompt=3, max_concurrency=1,
                             repair_missing_variables=False))

    out = edit(state, rt, {})

    children = [(cid, c["template"]) for cid, c in out["candidates"].items()]
    # the retried second job keeps its place, before the third job's child
    assert children == [("c1", "Answer {question} in one word."),
                        ("c2", "Answer {question} with a number.")]
    assert out["counters"] == {"duplicate_candidates": 2, "rejected_candidates": 1,
                               "edit_retries": 2}
    assert out["usage"]["edit"]["calls"] == 5
    first, second = calls_of(model, "edit")[3:]
    # a retry shows the editor its own reply and the reason
    assert "<prompt>Q:   {question}</prompt>" in first and "duplicate" in first
    assert "Just answer." in second and "rejected: lost {question}" in second


def test_edit_retries_only_within_the_budget_and_can_be_switched_off() -> None:
    def run(**settings: Any) -> tuple[dict[str, Any], Any]:
        model = scripted(edit=lambda text: "<prompt>Q: {question}</prompt>")  # always c0
        state = loop_state(candidates={"c0": cand("c0", summaries={"0": "S"})})
        return edit(state, FakeRuntime(context(model, candidates_per_prompt=2,
                                                max_concurrency=1, **settings)), {}), model

    out, model = run(retry_unusable_edits=False)
    assert len(calls_of(model, "edit")) == 2 and "edit_retries" not in out["counters"]
    # 2 edits + the final reserve (2 train rows x (c0 + 3 beam)) + 1 call: one retry fits
    out, model = run(max_llm_calls=2 + 8 + 1, beam_width=3)
    assert len(calls_of(model, "edit")) == 3 and out["counters"]["edit_retries"] == 1
    assert out["candidates"] == {} and "stop_reason" not in out


QUESTION = "Natalia sold clips to 48 of her friends in April, and then half as many in May."


@pytest.mark.parametrize("allow", [False, True])
def test_edit_rejects_a_prompt_that_pastes_in_a_training_question(allow: bool) -> None:
    replies = iter([
        f"<prompt>Solve it like this example. Example: {QUESTION.upper()} Now: {{question}}"
        "</prompt>",
        "<prompt>Solve the word problem step by step: {question}</prompt>",
    ])
    model = scripted(edit=lambda text: next(replies))
    train = [{"inputs": {"question": QUESTION}, "outputs": {"answer": "72"}}, *qa_rows(1)]
    state = loop_state(train=train, candidates={"c0": cand("c0", summaries={"0": "S"})})
    rt = FakeRuntime(context(model, candidates_per_prompt=2, max_concurrency=1,
                             reject_copied_examples=not allow, retry_unusable_edits=False))

    out = edit(state, rt, {})

    templates = [c["template"] for c in out["candidates"].values()]
    rejected = [e["why"] for e in rt.events if e["event"] == "rejected"]
    if allow:
        assert len(templates) == 2 and not rejected
    else:
        assert templates == ["Solve the word problem step by step: {question}"]
        assert out["counters"] == {"rejected_candidates": 1}
        assert rejected == ["rejected: copies example 0 of the data"]


def test_edit_in_the_ablation_uses_one_gradient_per_child() -> None:
    model = scripted()
    state = loop_state(candidates={"c0": cand("c0", gradients={"0": ["g1", "g2", "g3"]})})
    out = edit(state, FakeRuntime(context(model, summarize=False, candidates_per_prompt=2,
                                          max_concurrency=1)), {})
    edits = calls_of(model, "edit")
    assert len(edits) == 2
    assert "g1" in edits[0] and "g2" not in edits[0]
    assert "g2" in edits[1] and "g1" not in edits[1]
    assert not any("This is version" in t for t in edits)
    assert sorted(c["summary"] for c in out["candidates"].values()) == ["g1", "g2"]


def test_edit_makes_no_child_without_feedback() -> None:
    model = scripted()
    out = edit(loop_state(), FakeRuntime(context(model)), {})
    assert model.calls == []
    assert out["candidates"] == {} and out["beam"] == ["c0"] and out["iteration"] == 1


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("<prompt>\nA {x}\n</prompt>", "A {x}"),
        ("draft <prompt>one {x}</prompt> final <prompt>two {x}</prompt>", "two {x}"),
        ("<PROMPT>unclosed {x}", "unclosed {x}"),
        ("```text\nfenced {x}\n```", "fenced {x}"),
        ("plain {x}", "plain {x}"),
        # an editor looping to its cap: blank-line runs become one, the cut-off
        # restart of an earlier sentence goes (hellaswag, 5a58f22)
        ("Pick {x}.\n\nYou must choose the letter (A-D) of the best option.\n\n\n\n\n"
         "You must choose the letter (A-D) of the",
         "Pick {x}.\n\nYou must choose the letter (A-D) of the best option."),
        # a last line that merely starts like an earlier one is kept if it is finished
        ("Q: {x}\nAnswer: give the number in digits.\nAnswer:",
         "Q: {x}\nAnswer: give the number in digits.\nAnswer:"),
        ("Use {x}. Reply with the final answer on its own line.\nReply with the final answer",
         "Use {x}. Reply with the final answer on its own line."),
    ],
)
def test_extract_prompt(reply: str, expected: str) -> None:
    assert extract_prompt(reply) == expected


# --- finalize ---------------------------------------------------------------------------


def final_state(**extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = dict(
        val=qa_rows(2, prefix="v"),
        iteration=2,
        candidates={"c0": cand("c0"), "c1": cand("c1", "BETTER {question}", parent="c0", it=1),
                    "c2": cand("c2", "Other {question}", parent="c0", it=1)},
        beam=["c1", "c2"],
    )
    return loop_state(**{**fields, **extra})


def test_finalize_scores_the_beam_and_the_initial_prompt_on_val() -> None:
    model = scripted()
    rt = FakeRuntime(context(model, max_concurrency=1))

    out = finalize(final_state(), rt, {})

    prompts = calls_of(model, "generate")
    assert prompts[:2] == ["Q: v0", "Q: v1"]  # the initial prompt is paid for first
    assert sorted(prompts[2:]) == ["BETTER v0", "BETTER v1", "Other v0", "Other v1"]
    assert out["best_id"] == "c1"
    assert {c: v["val_score"] for c, v in out["candidates"].items()} == {
        "c0": 0.0, "c1": 1.0, "c2": 0.0}
    assert out["stop_reason"] == "done"
    assert set(out["records"]) == {f"{c}|val|{i}" for c in ("c0", "c1", "c2") for i in (0, 1)}
    assert rt.events[0]["event"] == "finalize" and rt.events[0]["split"] == "val"
    assert rt.events[0]["finalists"] == ["c1", "c2", "c0"]
    best = rt.events[-1]
    assert (best["event"], best["candidate"], best["score"]) == ("best", "c1", 1.0)


def test_finalize_keeps_the_stop_reason_and_breaks_ties_by_rank() -> None:
    model = scripted(generate=lambda text: "B")  # everyone is right
    out = finalize(final_state(stop_reason="patience"), FakeRuntime(context(model)), {})
    assert out["stop_reason"] == "patience"
    assert out["best_id"] == "c1"  # first in the ranked beam


def test_finalize_without_val_reuses_training_scores() -> None:
    model = scripted()
    state = final_state(
        val=[],
        records={f"c{c}|train|{i}": {"output": "B" if c == 1 else "A",
                                     "score": 1.0 if c == 1 else 0.0}
                 for c in (0, 1) for i in (0, 1)},
        beam=["c1"],
    )
    rt = FakeRuntime(context(model))
    out = finalize(state, rt, {})
    assert model.calls == []  # every training output was already scored
    assert out["best_id"] == "c1"
    assert out["candidates"]["c0"]["val_score"] == 0.0
    assert rt.events[0]["split"] == "train"


# --- through the compiled graph -----------------------------------------------------------


def test_one_iteration_through_the_graph() -> None:
    model = scripted()
    ctx = context(model, max_iterations=1, candidates_per_prompt=2, beam_width=2,
                  minibatch_size=2)
    graph = create_gradsum_graph()
    events: list[dict[str, Any]] = []
    final: dict[str, Any] = {}
    for mode, chunk in graph.stream({"prompt": PROMPT, "train": qa_rows(3),
                                     "val": qa_rows(2, prefix="v")},
                                    context=ctx, stream_mode=["custom", "values"]):
        if mode == "custom":
            events.append(chunk)
        else:
            final = chunk

    kinds = [e["event"] for e in events]
    assert kinds[0] == "iteration"
    assert kinds[-5:] == ["finalize", "validated", "validated", "validated", "best"]
    assert kinds.count("candidate") == 2 and kinds.count("iteration") == 2
    cands = final["candidates"]
    assert sorted(cands) == ["c0", "c1", "c2"]
    assert cands["c1"]["parent_id"] == cands["c2"]["parent_id"] == "c0"
    assert cands["c1"]["summary"] == "Ask for B."
    assert final["iteration"] == 1 and final["stop_reason"] == "max_iterations"
    assert final["best_id"] in ("c1", "c2")
    assert cands[final["best_id"]]["val_score"] == 1.0 and cands["c0"]["val_score"] == 0.0
    validated = [(e["candidate"], e["split"], e["score"]) for e in events
                 if e["event"] == "validated"]
    assert validated[0] == ("c0", "val", 0.0)  # the initial prompt is validated first
    assert sorted(validated) == sorted((c, "val", cands[c]["val_score"]) for c in cands)
    # iteration 0: c0 on 2 rows; iteration 1: each child screened on c0's 2 failures, then
    # (both pass) the children and c0 on the rows of the new minibatch they have not
    # seen; finalize: 3 finalists on 2 val rows
    b0, b1 = minibatch_indices(3, 2, 0, 0), minibatch_indices(3, 2, 0, 1)
    n_generate = 2 + 2 * 2 + 3 * len(set(b1) - set(b0)) + 3 * 2
    assert kinds.count("screened") == 2
    assert model.calls_by_role() == {"generate": n_generate, "gradient": 2,
                                     "summarize": 1, "edit": 2}
    assert final["usage"]["generate"]["calls"] == n_generate


def test_should_stop_ends_the_graph_gracefully_with_its_reason() -> None:
    model = scripted()
    asked: list[int] = []

    def should_stop() -> str | None:
        asked.append(1)
        return "user_stop"

    ctx = context(model, max_iterations=5, should_stop=should_stop)
    final = create_gradsum_graph().invoke({"prompt": PROMPT, "train": qa_rows(2)}, context=ctx)
    assert asked
    assert final["stop_reason"] == "user_stop" and final["iteration"] == 0
    assert final["best_id"] == "c0" and final["candidates"]["c0"]["val_score"] == 0.0
    assert model.calls_by_role() == {"generate": 2}  # no gradient, summary or edit
