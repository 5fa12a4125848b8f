"""The search's new parts: added-instruction edits, screens, evidence for the editor,
mistake kinds, more rows for a solved batch, and the cost-aware final pick."""

from __future__ import annotations

from typing import Any

import pytest
from gradsum_fakes import GOOD, FakeRuntime, context, optimizer, qa_rows, scripted
from langchain_core.messages import AIMessage
from langchain_core.prompts import PromptTemplate

from langchain_gradsum._templates import example_words
from langchain_gradsum.evaluators import contains_answer, exact_match
from langchain_gradsum.feedback import (
    answer_shape,
    critique_kind,
    edit_history,
    evidence,
    in_form,
    kind_counts,
)
from langchain_gradsum.nodes import edit, finalize, new_candidate, summarize
from langchain_gradsum.testing import ScriptedChatModel

PROMPT = "Q: {question}"


def cand(cid: str, template: str = PROMPT, *, parent: str | None = None, it: int = 0,
         **fields: Any) -> dict[str, Any]:
    return {**new_candidate(cid, template, parent_id=parent, iteration=it, summary=None),
            **fields}


def failing_state(**extra: Any) -> dict[str, Any]:
    """c0 after iteration 0 on rows 0-2: rows 0 and 2 failed (row 2 worst), row 1 right."""
    records = {"c0|train|0": {"output": "The answer is yes, clearly.", "score": 0.5,
                              "feedback": "exact_match: 0 (the whole reply must be 'yes')"},
               "c0|train|1": {"output": "yes", "score": 1.0, "feedback": "ok"},
               "c0|train|2": {"output": "no idea", "score": 0.0, "feedback": "wrong"}}
    state: dict[str, Any] = {
        "prompt": PROMPT, "train": qa_rows(3, answer="yes"), "val": [], "iteration": 0,
        "batch": [0, 1, 2], "candidates": {"c0": cand("c0", summaries={"0": "SUMMARY"})},
        "beam": ["c0"], "records": records,
    }
    state.update(extra)
    return state


def edits_of(model: ScriptedChatModel) -> list[str]:
    return [text for role, text, _ in model.calls if role == "edit"]


# --- edits ----------------------------------------------------------------------------


def test_the_first_child_appends_one_instruction_the_others_are_rewrites() -> None:
    def reply(text: str) -> str:
        if "Write the one instruction" in text:
            return "Sure. <instruction>Reply with only yes or no, {like this}.</instruction>"
        return f"<prompt>{GOOD}: {{question}}</prompt>"

    model = scripted(edit=reply)
    rt = FakeRuntime(context(model, candidates_per_prompt=2, max_concurrency=1, screen_size=2))
    out = edit(failing_state(), rt, {})

    c1, c2 = out["candidates"]["c1"], out["candidates"]["c2"]
    # the instruction goes after the parent; its braces render literally
    assert c1["template"] == "Q: {question}\nReply with only yes or no, {{like this}}."
    assert c1["strategy"] == "instruction" and c2["strategy"] == "rewrite:0"
    assert c2["template"] == f"{GOOD}: {{question}}"
    # each child is screened on its parent's worst failures first
    assert c1["screen"] == {"rows": [2, 0], "parent_score": 0.25, "score": None,
                            "passed": None}
    # the editor saw the summary and the measured evidence
    ask = edits_of(model)[0]
    assert "SUMMARY" in ask and "2 of 3 replies fell short" in ask
    assert "contain the expected answer, yet fail" in ask
    assert out["batch"] and out["iteration"] == 1


def test_an_instruction_edit_that_is_a_whole_prompt_is_taken_as_such() -> None:
    model = scripted(edit=lambda text: "<prompt>Answer yes or no: {question}</prompt>")
    out = edit(failing_state(), FakeRuntime(context(model, candidates_per_prompt=1)), {})
    assert [c["template"] for c in out["candidates"].values()] == [
        "Answer yes or no: {question}"]


SYSTEM = "You are a geography expert."


def system_state() -> dict[str, Any]:
    return failing_state(prompt=SYSTEM, candidates={"c0": cand("c0", SYSTEM,
                                                               summaries={"0": "S"})})


def test_an_instruction_for_a_prompt_with_no_placeholder_is_appended_not_taken_whole() -> None:
    """A system message (of a chat template, or a graph's system prompt in an app) has no
    placeholder: an instruction must not replace it as if it were a whole prompt."""
    model = scripted(edit=lambda text: "<instruction>Reply with only the answer.</instruction>")
    out = edit(system_state(), FakeRuntime(context(model, candidates_per_prompt=1)), {})
    assert [c["template"] for c in out["candidates"].values()] == [
        f"{SYSTEM}\nReply with only the answer."]


def test_a_rewrite_of_a_prompt_with_no_placeholder_is_not_asked_to_keep_one() -> None:
    model = scripted(edit=lambda text: f"<prompt>{SYSTEM} Reply with the answer only.</prompt>")
    out = edit(system_state(), FakeRuntime(context(model, candidates_per_prompt=1,
                                                   instruction_edits=False)), {})
    assert [c["template"] for c in out["candidates"].values()] == [
        f"{SYSTEM} Reply with the answer only."]
    ask = edits_of(model)[0]
    assert "Keep the placeholder" not in ask and "Give instructions that work" in ask
    # with a placeholder, the rule is there
    model = scripted()
    edit(failing_state(), FakeRuntime(context(model, candidates_per_prompt=1,
                                              instruction_edits=False)), {})
    assert "Keep the placeholder {question} where the input goes" in edits_of(model)[0]


def test_a_rewrite_that_pastes_in_the_evidence_is_rejected() -> None:
    pasted = ("<prompt>Answer {question}. The evaluation measured on the examples: - 2 of 3 "
              "replies fell short of full marks.</prompt>")
    model = scripted(edit=lambda text: pasted)
    rt = FakeRuntime(context(model, candidates_per_prompt=1, instruction_edits=False,
                             retry_unusable_edits=False))
    out = edit(failing_state(), rt, {})
    assert out["candidates"] == {} and out["counters"]["rejected_candidates"] == 1
    assert "copies the evaluation's measurements" in rt.events[0]["why"]


@pytest.mark.parametrize(("instruction", "kept"), [
    ("End with the final number, and is 6 words long.", False),  # a comment's length
    ("Reply in at most 20 words.", True),  # a length nobody measured: an instruction
    ("Reply in 1 word.", True),  # the expected answers' length is a form to ask for
])
def test_an_edit_stating_a_measured_reply_length_is_rejected(instruction: str,
                                                             kept: bool) -> None:
    # the comment on row 0 measured its reply: "(6 words: ...)"; a svamp child pasted such
    # a length into its prompt ("... and is 126 words long")
    state = failing_state()
    state["records"]["c0|train|0"]["feedback"] = (
        "exact_match: 0 (the reply (6 words: 'The answer is yes, clearly.') is not 'yes')")
    model = scripted(edit=lambda text: f"<instruction>{instruction}</instruction>")
    rt = FakeRuntime(context(model, candidates_per_prompt=1, retry_unusable_edits=False))
    out = edit(state, rt, {})
    if kept:
        assert [c["template"] for c in out["candidates"].values()] == [
            f"{PROMPT}\n{instruction}"]
    else:
        assert out["candidates"] == {}
        assert "copies the evaluation's measurements" in rt.events[0]["why"]


MISADDRESSED = "speaks to the user or about prompts"


@pytest.mark.parametrize(("instruction", "why"), [
    ("Please provide the question and the sentence about sports.", MISADDRESSED),  # bbh_sports
    ("Use a different prompt that does not repeat any previous one.", MISADDRESSED),  # svamp
    ("The expected answer is <the expected answer>.", MISADDRESSED),  # rag_nq_open
    ("The current prompt does not specify this, which leads to wrong choices.",
     MISADDRESSED),  # hellaswag
    ("Please provide the context and choices, and I will help you choose.",
     MISADDRESSED),  # 38276ba
    ("If you have any questions, please let me know. Thank you for your cooperation.",
     MISADDRESSED),  # hellaswag seed 1, 3644d37
    # hellaswag seed 1 (3644d37) picked "The answer should be a single letter, such as A.",
    # and the task model answered A on 77 of 100 test rows (25 expected)
    ("Reply with one word, such as 'yes'.", "gives 'yes' as an example of the answer"),
])
def test_an_edit_that_misleads_the_model_that_answers_is_rejected_and_re_asked(
        instruction: str, why: str) -> None:
    replies = iter([f"<instruction>{instruction}</instruction>",
                    "<instruction>Reply with only yes or no.</instruction>"])
    model = scripted(edit=lambda text: next(replies))
    rt = FakeRuntime(context(model, candidates_per_prompt=1))
    out = edit(failing_state(), rt, {})
    assert [c["template"] for c in out["candidates"].values()] == [
        f"{PROMPT}\nReply with only yes or no."]
    assert why in rt.events[0]["why"]
    assert why in edits_of(model)[-1]


def test_an_edit_repeating_the_evidences_verdict_on_past_replies_is_rejected() -> None:
    """hellaswag, 38276ba: the evidence said "1 of the 2 failed replies contain the
    expected answer, yet fail: their form is the problem, not their content." and a
    child ended "The reply contains the expected answer, yet fails: its form is the
    problem, not its content."."""
    from langchain_gradsum._editing import pasted_verdict
    child = "{question}\nThe reply contains the answer, yet fails: its form is the problem."
    assert pasted_verdict(child, known="{question}")
    assert not pasted_verdict(child, known=child)  # the user's own words
    assert not pasted_verdict("{question}\nName the option's letter; the form matters.",
                              known="")
    why = rejected_then_fixed(qa_rows(3, answer="7"),
                              "End with the final number: the reply has the answer, yet fails.")
    assert "copies the evaluation's measurements" in why


def test_misaddressed_ignores_lines_the_parent_has_and_instructions_about_the_input() -> None:
    from langchain_gradsum._editing import misaddressed
    parent = "Please provide the answer to the question: {question}"
    # the start prompt's own wording is the user's, not the editor's
    assert misaddressed(parent + "\nBe brief.", known=parent) is None
    assert misaddressed("{question}\nUse the provided passage to answer.", known="") is None
    assert misaddressed("{question}\nProvide the final answer as a number.", known="") is None
    assert misaddressed("{question}\nProvide the answer for each question.", known="") is None
    assert misaddressed("{question}\nPlease provide the passage.", known="") == (
        "Please provide the passage")
    # a rewrite that keeps the user's own wording about "the prompt" is not the editor's
    user = "Read the prompt below and answer it.\n{question}"
    assert misaddressed("{question}\nRead the prompt below, then answer.", known=user) is None
    assert misaddressed("{question}\nThe prompt lacks a format.", known="") == "The prompt"


def test_an_instruction_the_prompt_already_has_is_a_duplicate_and_re_asked() -> None:
    replies = iter(["<instruction>Q:</instruction>", "<instruction>Be brief.</instruction>"])
    model = scripted(edit=lambda text: next(replies))
    out = edit(failing_state(), FakeRuntime(context(model, candidates_per_prompt=1)), {})
    assert [c["template"] for c in out["candidates"].values()] == ["Q: {question}\nBe brief."]
    retry = [t for t in edits_of(model)][-1]
    assert "the current prompt already says that" in retry
    assert out["counters"]["duplicate_candidates"] == 1


def rejected_then_fixed(rows: list[dict[str, Any]], instruction: str) -> str:
    """Edits `failing_state(train=rows)` with an editor that first adds `instruction`,
    then "End your reply with the final number."; checks that only the second became a
    child and returns the retry message (it says why the first was rejected)."""
    replies = iter([f"<instruction>{instruction}</instruction>",
                    "<instruction>End your reply with the final number.</instruction>"])
    model = scripted(edit=lambda text: next(replies))
    out = edit(failing_state(train=rows), FakeRuntime(context(model, candidates_per_prompt=1)),
               {})
    assert [c["template"] for c in out["candidates"].values()] == [
        "Q: {question}\nEnd your reply with the final number."]
    return edits_of(model)[-1]


def test_an_edit_with_the_rare_words_of_a_critiqued_example_is_rejected() -> None:
    """No 4 words in a row are copied ("children are on the bus" vs "children on the
    bus"), but "children" and "bus" come from that one question, not from the task."""
    rows = [{"inputs": {"question": "3 children are on the bus; 2 got off. How many now?"},
             "outputs": {"answer": "1"}}, *qa_rows(5)]
    why = rejected_then_fixed(rows, "End with the final count of children on the bus.")
    assert "mentions the details of an example" in why


def test_example_words_are_the_rare_words_a_seen_example_brings() -> None:
    corpus = ["How many apples does the boy have now?", "How many pens are in the box now?",
              "How many children are on the bus now?", "How many cakes are on the table now?"]
    seen = [corpus[2]]
    assert example_words("End with the number of children on the bus.", seen, corpus,
                         max_share=0.25) == ["bus", "children"]
    # words of many examples or of the prompt itself are not the example's
    assert example_words("Say how many there are now.", seen, corpus) == []
    assert example_words("Count the children.", seen, corpus, known="children") == []


def test_an_edit_naming_the_details_of_a_critiqued_example_is_rejected() -> None:
    rows = [{"inputs": {"question": "3 children on the bus got off. How many are left?"},
             "outputs": {"answer": "7"}}, *qa_rows(2)]
    why = rejected_then_fixed(rows, "End with the number of children on the bus.")
    assert "mentions the details of an example" in why


def test_an_edit_stating_the_answer_of_a_critiqued_example_is_rejected() -> None:
    """svamp, f552244: "Ensure the reply ends with the final number, which is 12 in this
    case." reached the final validation; 12 was one critiqued row's answer."""
    rows = [{"inputs": {"question": f"How many {w} are left?"}, "outputs": {"answer": a}}
            for w, a in (("pens", "12"), ("cakes", "5"), ("cups", "40"))]
    why = rejected_then_fixed(
        rows, "Ensure the reply ends with the final number, which is 12 in this case.")
    assert "states '12', the expected answer of an example" in why


def test_pasted_answer_is_a_shown_answer_no_instruction_about_the_form_would_state() -> None:
    from langchain_gradsum._editing import pasted_answer
    say = "Q: {question}\nAnswer in at most 3 lines; end with: Answer: 1,250."
    assert pasted_answer(say, ["1250", "3"], known="") is None  # one digit; 1,250 is not 1250
    assert pasted_answer(say, ["1,250"], known="") == "1,250"
    assert pasted_answer(say, ["1,250"], known="Answer: 1,250") is None  # the user's own
    assert pasted_answer("Q: {question}\nThe answer is 12.5 here.", ["12"], known="") is None
    assert pasted_answer("{context}\nThe film was shot in Los Angeles.",
                         ["Los Angeles"], known="") == "Los Angeles"
    # labels are forms an instruction names: yes/no, true/false, option letters
    for label in ("yes", "False", "(B)", "C"):
        assert pasted_answer(f"{{question}}\nReply with {label} or another label.", [label],
                             known="") is None


def test_example_label_is_one_label_given_as_the_example_of_a_reply() -> None:
    from langchain_gradsum._editing import example_label
    letters = ["A", "B", "C", "D"]
    assert example_label("{q}\nThe answer should be a single letter, such as A.", letters,
                         known="") == "A"
    assert example_label("{q}\nReply with the label, e.g. (B).", ["(A)", "(B)"],
                         known="") == "(B)"
    assert example_label("{q}\nReply with a label, e.g. B.", ["(A)", "(B)"], known="") == "(B)"
    assert example_label("{q}\nReply with only one letter, such as A, and no other text.",
                         letters, known="") == "A"  # mmlu gradsum_demos seed 0, c5
    # a series, a range, an article, another word, the user's own example: not one label
    for text in ("such as A, B, C or D", "such as A-D", "such as a short phrase",
                 "for example Alice", "like B or C"):
        assert example_label(f"{{q}}\nReply {text}.", letters[:3], known="") is None, text
    own = "{q}\nReply with a letter, such as A."
    assert example_label(own + "\nBe brief.", letters, known=own) is None


def test_without_instruction_edits_every_child_is_a_rewrite() -> None:
    model = scripted()
    out = edit(failing_state(), FakeRuntime(context(model, candidates_per_prompt=2,
                                                    instruction_edits=False)), {})
    assert {c["strategy"] for c in out["candidates"].values()} == {"rewrite:0", "rewrite:1"}
    assert all("Write an improved prompt" in t for t in edits_of(model))


HEADER = "Here is an example of a good reply."


def right_replies_state() -> dict[str, Any]:
    """`failing_state` with two more right replies: row 3 longer than row 1's, row 4
    shorter but cut off at the token cap; row 1's holds braces."""
    state = failing_state(train=qa_rows(5, answer="yes"))
    state["records"]["c0|train|1"] = {"output": "yes {x}", "score": 1.0, "output_tokens": 2}
    state["records"]["c0|train|3"] = {"output": "yes, it is", "score": 1.0, "output_tokens": 4}
    state["records"]["c0|train|4"] = {"output": "y", "score": 1.0, "output_tokens": 1,
                                      "truncated": True}
    return state


def test_a_demo_child_shows_the_parents_shortest_right_reply_in_front_of_it() -> None:
    """With `demo_edits` the last rewrite slot goes to a demonstration: composed, no
    editor call; the reply's braces are text; screened like any child."""
    model = scripted(edit=lambda text: "<instruction>Reply with only yes or no.</instruction>")
    ctx = context(model, candidates_per_prompt=2, demo_edits=True)
    out = edit(right_replies_state(), FakeRuntime(ctx), {})
    c1, c2 = out["candidates"]["c1"], out["candidates"]["c2"]
    assert c1["strategy"] == "instruction" and c2["strategy"] == "demo"
    assert c2["template"] == f"{HEADER}\n\nQuestion: q1\nReply: yes {{{{x}}}}\n\nQ: {{question}}"
    assert PromptTemplate.from_template(c2["template"]).format(question="q9").endswith(
        "Reply: yes {x}\n\nQ: q9")
    assert len(edits_of(model)) == 1 and out["counters"]["composed_edits"] == 1
    assert c2["screen"]["rows"] == [2, 0]


@pytest.mark.parametrize("case", ["knob off", "no right reply", "already shows one",
                                  "one child only"])
def test_no_demo_child_without_the_knob_a_right_reply_or_a_rewrite_slot(case: str) -> None:
    state = right_replies_state()
    settings: dict[str, Any] = {"candidates_per_prompt": 2, "demo_edits": case != "knob off"}
    if case == "no right reply":
        state = failing_state()
        del state["records"]["c0|train|1"]
    elif case == "already shows one":
        state["candidates"]["c0"]["template"] = f"{HEADER}\n\nQuestion: q3\nReply: yes\n\nQ: " \
                                                "{question}"
    elif case == "one child only":
        settings["candidates_per_prompt"] = 1
    model = scripted()
    out = edit(state, FakeRuntime(context(model, **settings)), {})
    assert "demo" not in {c["strategy"] for c in out["candidates"].values()}
    assert len(edits_of(model)) == settings["candidates_per_prompt"]


def test_a_child_of_a_demo_parent_is_not_taken_for_a_copy_of_its_example() -> None:
    """The example the parent shows is the parent's text: an instruction added to it
    keeps it, and the copied-example guard must not reject that."""
    long_q = "Is it plausible that the goalkeeper scored a touchdown in the final game?"
    state = failing_state(train=[{"inputs": {"question": long_q}, "outputs": {"answer": "no"}},
                                 *qa_rows(2, answer="yes")])
    parent = f"{HEADER}\n\nQuestion: {long_q}\nReply: no\n\nQ: {{question}}"
    state["candidates"]["c0"]["template"] = parent
    model = scripted(edit=lambda text: "<instruction>Reply with only yes or no.</instruction>")
    out = edit(state, FakeRuntime(context(model, candidates_per_prompt=1)), {})
    assert [c["template"] for c in out["candidates"].values()] == [
        parent + "\nReply with only yes or no."]
    # a rewrite that pastes the question into a prompt without it is still a copy
    state["candidates"]["c0"]["template"] = PROMPT
    out = edit(state, FakeRuntime(context(model, candidates_per_prompt=1,
                                          retry_unusable_edits=False)), {})
    assert [c["template"] for c in out["candidates"].values()] == [
        PROMPT + "\nReply with only yes or no."]


WORKED = [contains_answer]
"""A metric that takes working before the answer (``shorten`` edits are for such)."""


def cut_off_state() -> dict[str, Any]:
    """`failing_state` with both failed replies (rows 0 and 2) cut off at the token cap."""
    state = failing_state()
    for i in (0, 2):
        state["records"][f"c0|train|{i}"]["truncated"] = True
    return state


BRIEF = "Keep your working brief, a few short lines at most, and end your reply with"


def test_when_most_failed_replies_were_cut_off_the_added_instruction_asks_for_brevity(
) -> None:
    """The sentence is composed from the expected answers' measured form (here "yes"
    everywhere): the editor is asked only for the rewrite."""
    model = scripted(edit=lambda text: f"<prompt>{GOOD}: {{question}}</prompt>")
    ctx = context(model, candidates_per_prompt=2, evaluators=WORKED)
    out = edit(cut_off_state(), FakeRuntime(ctx), {})
    c1, c2 = out["candidates"]["c1"], out["candidates"]["c2"]
    assert c1["strategy"] == "shorten" and c2["strategy"] == "rewrite:0"
    assert c1["template"] == f"Q: {{question}}\n{BRIEF} the final answer (yes or no)."
    assert len(edits_of(model)) == 1 and "Write an improved prompt" in edits_of(model)[0]
    assert out["counters"]["composed_edits"] == 1


def test_for_number_answers_the_shorten_child_asks_for_a_reply_form() -> None:
    """Asked for brief working, the 1.5B model drops its working (svamp: 0.44 vs 0.61 on
    test); given a form with a line of reasoning, a calculation and the answer it keeps
    the reasoning and finishes inside the cap. The form goes under the parent after a
    blank line, and its "<the arithmetic>" is not taken for the editor talking to the
    user (that guard rejects "<the expected answer>" in an editor's reply)."""
    state = cut_off_state()
    for k, ex in enumerate(state["train"]):
        ex["outputs"] = {"answer": str(10 + k)}
    model = scripted()
    out = edit(state, FakeRuntime(context(model, candidates_per_prompt=1, evaluators=WORKED)), {})
    assert [c["template"] for c in out["candidates"].values()] == [
        "Q: {question}\n\nReply in exactly this form, in plain text:\n"
        "Reasoning: <one or two sentences saying which numbers to combine and how>\n"
        "Calculation: <the arithmetic> = <result>\nAnswer: <the final number>"]
    assert edits_of(model) == [] and out["counters"]["composed_edits"] == 1
    assert "rejected_candidates" not in out["counters"]


def test_an_editor_reply_with_the_same_angle_brackets_is_still_rejected() -> None:
    """Only the package's composed text skips the guard: an editor that writes
    "<the expected answer>" into an added instruction is re-asked."""
    model = scripted(edit=lambda text: "<instruction>End with <the expected answer>."
                                       "</instruction>")
    out = edit(failing_state(), FakeRuntime(context(model, candidates_per_prompt=1,
                                                    retry_unusable_edits=False)), {})
    assert out["candidates"] == {}
    assert out["counters"]["rejected_candidates"] == 1


def test_a_parent_whose_shorten_child_was_tried_gets_an_instruction_from_the_summary(
) -> None:
    """Re-asked for a shortening the composed sentence already made, the 1.5B editor
    wrote "Use a different prompt that does not repeat any previous one."; the slot goes
    to an instruction written from the summary instead."""
    state = cut_off_state()
    tried = new_candidate("c1", f"Q: {{question}}\n{BRIEF} the final answer (yes or no).",
                          parent_id="c0", iteration=1, summary="s")
    state["candidates"]["c1"] = tried
    model = scripted(edit=lambda text: "<instruction>Answer in one line.</instruction>")
    out = edit(state, FakeRuntime(context(model, candidates_per_prompt=1, evaluators=WORKED)), {})
    (child,) = out["candidates"].values()
    assert child["strategy"] == "instruction"
    assert child["template"] == "Q: {question}\nAnswer in one line."
    (ask,) = edits_of(model)
    assert "replies are too long" not in ask and "composed_edits" not in out["counters"]


def test_without_reference_answers_the_editor_writes_the_shorten_instruction() -> None:
    state = cut_off_state()
    state["train"] = [{"inputs": ex["inputs"], "outputs": {}} for ex in state["train"]]

    def reply(text: str) -> str:
        if "replies are too long" in text:
            return "<instruction>Keep your working to a few lines.</instruction>"
        return f"<prompt>{GOOD}: {{question}}</prompt>"

    model = scripted(edit=reply)
    out = edit(state, FakeRuntime(context(model, candidates_per_prompt=1, evaluators=WORKED)), {})
    assert [c["template"] for c in out["candidates"].values()] == [
        "Q: {question}\nKeep your working to a few lines."]
    ask = edits_of(model)[0]
    assert "cut off at the length limit" in ask and "SUMMARY" not in ask


def test_a_parent_that_already_asks_for_brevity_gets_the_editors_instruction() -> None:
    """The composed sentence would be a duplicate: the editor is asked, told why."""
    state = cut_off_state()
    state["candidates"]["c0"]["template"] = (
        f"Q: {{question}}\n{BRIEF} the final answer (yes or no).")
    model = scripted(edit=lambda text: "<instruction>Answer in one line.</instruction>")
    out = edit(state, FakeRuntime(context(model, candidates_per_prompt=1, evaluators=WORKED)), {})
    assert [c["template"].splitlines()[-1] for c in out["candidates"].values()] == [
        "Answer in one line."]
    assert "the current prompt already says that" in edits_of(model)[-1]


@pytest.mark.parametrize(("cut", "shorten_edits", "metric", "strategy"), [
    ((2,), True, contains_answer, "shorten"),        # 1 of 2 failures cut off: enough
    ((), True, contains_answer, "instruction"),      # none cut off
    ((1,), True, contains_answer, "instruction"),    # row 1 was right: it does not count
    ((0, 2), False, contains_answer, "instruction"),  # the knob off
    ((0, 2), True, exact_match, "instruction"),      # the whole reply must be the answer
])
def test_the_shorten_strategy_needs_half_the_failures_cut_off_and_the_knob(
        cut: tuple[int, ...], shorten_edits: bool, metric: Any, strategy: str) -> None:
    state = failing_state()
    for i in cut:
        state["records"][f"c0|train|{i}"]["truncated"] = True
    model = scripted()
    out = edit(state, FakeRuntime(context(model, candidates_per_prompt=1,
                                          shorten_edits=shorten_edits,
                                          evaluators=[metric])), {})
    assert [c["strategy"] for c in out["candidates"].values()] == [strategy]


def test_a_shorten_child_is_screened_first_on_the_cut_off_failures() -> None:
    state = failing_state()  # failures worst first: row 2 (0.0), then row 0 (0.5)
    state["records"]["c0|train|0"]["truncated"] = True
    model = scripted()
    out = edit(state, FakeRuntime(context(model, candidates_per_prompt=2, screen_size=1,
                                          evaluators=WORKED)), {})
    screens = {c["strategy"]: c["screen"]["rows"] for c in out["candidates"].values()}
    assert screens == {"shorten": [0], "rewrite:0": [2]}


@pytest.mark.parametrize(("short", "prefer_short", "passes"), [
    ("five", True, True),                  # 1 word to the parent's 12: progress
    ("five", False, False),                # the knob off: a tie is a fail
    ("it may be five, or it may not be five", True, False),  # 10: not a quarter shorter
])
def test_a_child_whose_replies_are_far_shorter_at_a_tie_goes_on(
        short: str, prefer_short: bool, passes: bool) -> None:
    """The start prompt rambles (12 words, never cut off) and is wrong everywhere; the
    child answers `short`: wrong on the two rows it is screened on (a tie at 0), right
    on the other two. Replies a quarter shorter or more pass the tie, and the child then
    wins on the batch; otherwise it is dropped at its screen."""
    answers = ["seven", "three", "five", "five"]
    rows = [{"inputs": {"question": f"q{i}"}, "outputs": {"answer": a}}
            for i, a in enumerate(answers)]
    val = [{"inputs": {"question": f"v{i}"}, "outputs": {"answer": "five"}} for i in range(4)]
    ramble = "I am not sure about this one, so I will guess six."
    model = scripted(generate=lambda text: short if GOOD in text else ramble)
    result = optimizer(model, minibatch_size=4, max_iterations=1, beam_width=2,
                       candidates_per_prompt=1, prefer_short_outputs=prefer_short,
                       evaluators=WORKED).optimize(PROMPT, rows, val)
    screen = result.candidates["c1"]["screen"]
    assert screen["rows"] == [0, 1] and screen["score"] == 0.0  # a tie on the screen
    assert screen["passed"] is passes
    if prefer_short:
        assert (screen["output_tokens"], screen["parent_output_tokens"]) == (
            len(short.split()), len(ramble.split()))
    else:
        assert "output_tokens" not in screen
    assert result.best_template != PROMPT if passes else result.best_template == PROMPT


@pytest.mark.parametrize("cut_off_progress", [True, False])
def test_a_child_whose_replies_are_no_longer_cut_off_goes_on(cut_off_progress: bool) -> None:
    """The start prompt's replies all stop at the token cap (0 everywhere); the child that
    asks for brief working answers "five" everywhere: wrong on the two rows it is
    screened on (a tie), right on the others. With `cut_off_progress` the tie passes on
    fewer cut-off replies and the child wins; without, it is dropped at its screen."""
    answers = ["seven", "three", "five", "five"]  # free text: no answer form to compare
    rows = [{"inputs": {"question": f"q{i}"}, "outputs": {"answer": a}}
            for i, a in enumerate(answers)]
    val = [{"inputs": {"question": f"v{i}"}, "outputs": {"answer": "five"}} for i in range(2)]

    def generate(text: str) -> Any:
        if BRIEF in text:
            return "five"
        return AIMessage(content="Let me work through this step by step. First",
                         response_metadata={"finish_reason": "length"})

    model = scripted(generate=generate)
    # (with `prefer_short_outputs` the child's far shorter replies pass its screen too)
    result = optimizer(model, minibatch_size=4, max_iterations=1, beam_width=2,
                       candidates_per_prompt=1, cut_off_progress=cut_off_progress,
                       prefer_short_outputs=cut_off_progress,
                       evaluators=WORKED).optimize(PROMPT, rows, val)
    screen = result.candidates["c1"]["screen"]
    assert result.candidates["c1"]["strategy"] == "shorten"
    assert screen["rows"] == [0, 1] and screen["score"] == 0.0  # a tie on the screen
    assert screen["passed"] is cut_off_progress
    if cut_off_progress:
        assert (screen["cut_off"], screen["parent_cut_off"]) == (0, 2)
        assert result.best_template == (
            f"Q: {{question}}\n{BRIEF} the final answer (a short phrase of about 1 word).")
        assert result.best_score == 1.0
    else:
        assert "cut_off" not in screen
        assert result.best_template == PROMPT and result.best_score == 0.0


def test_a_critique_is_told_that_its_reply_was_cut_off() -> None:
    from langchain_gradsum.nodes import gradient

    model = scripted(gradient=lambda text: "Kind: incomplete\nAsk for brevity.")
    gradient(cut_off_state(), FakeRuntime(context(model, max_gradients_per_prompt=2)), {})
    asks = [t for r, t, _ in model.calls if r == "gradient"]
    assert len(asks) == 2
    assert all("cut off at the length limit before it finished" in a for a in asks)
    assert all("…(cut off here)" in a for a in asks)
    model = scripted(gradient=lambda text: "Kind: format\nx")
    gradient(failing_state(), FakeRuntime(context(model)), {})
    assert not any("before it finished" in t or "(cut off here)" in t
                   for r, t, _ in model.calls if r == "gradient")


def test_without_screening_children_go_straight_to_the_batch() -> None:
    model = scripted()
    out = edit(failing_state(), FakeRuntime(context(model, screen_size=0)), {})
    assert all(c["screen"] is None for c in out["candidates"].values())


def test_the_editor_sees_the_earlier_edits_of_this_parent_that_did_not_help() -> None:
    failed = cand("c1", "Q: {question}\nBe brief.", parent="c0", it=1,
                  screen={"rows": [2], "parent_score": 0.0, "score": 0.0, "passed": False})
    worse = cand("c2", "Q: {question}\nThink.", parent="c0", it=1, scores={"1": 0.2})
    good = cand("c3", "Q: {question}\nGood.", parent="c0", it=1, scores={"1": 0.9})
    c0 = cand("c0", scores={"0": 0.5, "1": 0.5}, summaries={"0": "S"})
    cands = {"c0": c0, "c1": failed, "c2": worse, "c3": good}
    history = edit_history(cands, "c0")
    assert "Be brief." in history and "Think." in history and "Good." not in history
    assert "did not help" in history
    model = scripted()
    state = failing_state(candidates=cands)
    edit(state, FakeRuntime(context(model, candidates_per_prompt=1, evaluators=WORKED)), {})
    assert "Be brief." in edits_of(model)[0]


# --- critiques and summaries ------------------------------------------------------------


def test_critique_kinds_are_read_from_the_kind_line_and_counted() -> None:
    assert critique_kind("Kind: format\nThe reply adds words.") == "format"
    assert critique_kind("**Kind:** Reasoning. A step is wrong.") == "reasoning"
    assert critique_kind("The reply is wrong.") == "other"
    assert critique_kind("Kind: banana") == "other"
    assert kind_counts(["Kind: format", "kind - format", "Kind: misread"]) == (
        "format 2, misread 1")


def test_the_summary_sees_the_evidence_and_the_kinds() -> None:
    model = scripted(summarize=lambda text: "merged")
    c0 = cand("c0", gradients={"0": ["Kind: format\nAdd 'reply with only yes'.",
                                     "Kind: format\nToo long."]})
    summarize(failing_state(candidates={"c0": c0}), FakeRuntime(context(model)), {})
    ask = next(t for r, t, _ in model.calls if r == "summarize")
    assert "Kinds of mistake the critiques name: format 2." in ask
    assert "2 of 3 replies fell short" in ask


def test_evidence_reports_form_failures_truncation_and_answer_shapes() -> None:
    state = failing_state()
    state["records"]["c0|train|2"]["truncated"] = True
    text = evidence(state["records"], "c0", [0, 1, 2], state["train"])
    assert "2 of 3 replies fell short of full marks" in text
    assert "1 of the 2 failed replies contain the expected answer" in text
    assert "1 of the 2 failed replies were cut off at the length limit" in text
    assert text.splitlines()[1].startswith("- 1 of the 2 failed replies were cut off")
    assert "Expected answers are yes or no." in text
    # the evaluator's own comment, the one row's answer masked (the form stays)
    assert "the whole reply must be <the expected answer>)" in text


def test_answer_shape_names_the_form_without_the_answers() -> None:
    # a label set is illustrated by its series, never by one label the editor would copy
    assert answer_shape(["(E)", "(b)"]) == "an option label in parentheses ((A), (B), (C), ...)"
    assert answer_shape(["D", "A"]) == "a single option letter (A, B, C, ...)"
    assert answer_shape(["Yes", "no"]) == "yes or no"
    assert answer_shape(["12", "3.5", "-4"]) == "a number, such as 42"
    assert answer_shape(["Paris", "New York City"]) == "short phrases of about 2 words"
    assert answer_shape(["yes", "12"]).startswith("short phrases")  # no shared form


# --- the whole loop ---------------------------------------------------------------------


def test_a_format_fix_found_by_an_added_instruction_wins() -> None:
    """The task model answers in a sentence unless told to reply with only the answer;
    the editor's added instruction says so; the child passes its screen and wins."""

    def generate(text: str) -> str:
        return "B" if "only the letter" in text else "The answer is B."

    def edit_reply(text: str) -> str:
        if "Write the one instruction" in text:
            return "<instruction>Reply with only the letter.</instruction>"
        return "<prompt>Think hard about {question}</prompt>"

    model = scripted(generate=generate, edit=edit_reply)
    result = optimizer(model, minibatch_size=3, max_iterations=2, beam_width=2,
                       candidates_per_prompt=2).optimize(PROMPT, qa_rows(6), qa_rows(3, "v"))
    assert result.best_template == "Q: {question}\nReply with only the letter."
    assert result.initial_score == 0.0 and result.best_score == 1.0
    screens = {c: v["screen"]["passed"] for c, v in result.candidates.items() if v["screen"]}
    assert screens == {"c1": True, "c2": False}  # the rewrite fixed nothing: not scored on
    assert not any(k.startswith("c2|train|") and int(k.rsplit("|", 1)[1]) not in
                   result.candidates["c2"]["screen"]["rows"] for k in result.records)


def test_in_form_marks_replies_that_take_the_expected_answers_form() -> None:
    row = {"inputs": {"question": "q"}, "outputs": {"answer": "(D)"}}
    assert in_form(" (B).", row) is True  # the form, not the right answer
    assert in_form("The answer is (D).", row) is False
    assert in_form("yes", {"inputs": {}, "outputs": {"answer": "no"}}) is True
    assert in_form("12", {"inputs": {}, "outputs": {"answer": "Paris"}}) is None  # free text


@pytest.mark.parametrize("form_progress", [True, False])
def test_a_child_that_fixes_the_form_but_not_yet_the_answers_goes_on(
    form_progress: bool,
) -> None:
    """A 0/1 metric scores "(B)" and "Let me think... (D)" alike on a row expecting
    (D): 0. The start prompt fails every row by form; the child that asks for only the
    label answers "(B)" everywhere: a tie on the rows it is screened on, then right on
    the rows expecting (B). With `form_progress` the tie passes on form and the child
    wins; without, it is dropped at its screen and the start prompt stays."""
    answers = ["(A)", "(C)", "(B)", "(B)"]
    rows = [{"inputs": {"question": f"q{i}"}, "outputs": {"answer": a}}
            for i, a in enumerate(answers)]
    val = [{"inputs": {"question": f"v{i}"}, "outputs": {"answer": "(B)"}} for i in range(2)]

    def generate(text: str) -> str:
        return "(B)" if "only the option label" in text else "Let me think. So (B)."

    def edit_reply(text: str) -> str:
        return "<instruction>Reply with only the option label.</instruction>"

    model = scripted(generate=generate, edit=edit_reply)
    result = optimizer(model, minibatch_size=4, max_iterations=1, beam_width=2,
                       candidates_per_prompt=1, form_progress=form_progress,
                       prefer_short_outputs=form_progress,  # "(B)" is shorter, too
                       ).optimize(PROMPT, rows, val)
    screen = result.candidates["c1"]["screen"]
    assert screen["rows"] == [0, 1] and screen["score"] == 0.0  # a tie on the screen
    assert screen["passed"] is form_progress
    if form_progress:
        assert (screen["form"], screen["parent_form"]) == (1.0, 0.0)
        assert result.best_template == "Q: {question}\nReply with only the option label."
        assert result.best_score == 1.0
    else:
        assert result.best_template == PROMPT and result.best_score == 0.0


def test_a_solved_training_set_stops_with_train_solved() -> None:
    model = scripted(generate=lambda text: "B")
    result = optimizer(model, minibatch_size=2, max_iterations=5).optimize(PROMPT, qa_rows(5))
    assert result.stop_reason == "train_solved" and result.iterations == 0
    assert model.calls_by_role() == {"generate": 5}  # every row tried, nothing to learn


def test_at_equal_score_the_prompt_with_shorter_outputs_wins() -> None:
    def generate(text: str) -> str:  # the fake counts one output token per word
        return "B " + "because " * 89 if text.startswith("Long") else "B"

    def has_b(outputs: dict) -> float:
        return float(outputs["output"].startswith("B"))

    model = scripted(generate=generate)
    state = {"prompt": PROMPT, "train": qa_rows(2), "val": qa_rows(2, "v"), "iteration": 1,
             "candidates": {"c0": cand("c0"), "c1": cand("c1", "Long {question}", parent="c0"),
                            "c2": cand("c2", "Short {question}", parent="c0")},
             "beam": ["c1", "c2"], "records": {}}
    for prefer, best in ((True, "c2"), (False, "c1")):
        ctx = context(model, prefer_short_outputs=prefer, evaluators=(has_b,))
        out = finalize(state, FakeRuntime(ctx), {})
        assert out["best_id"] == best
    records = out["records"]
    assert records["c1|val|0"]["output_tokens"] == 90 and records["c2|val|0"]["output_tokens"] == 1


def test_the_result_reports_output_tokens_of_the_start_and_the_best_prompt() -> None:
    model = scripted()
    result = optimizer(model, max_iterations=1).optimize(PROMPT, qa_rows(3), qa_rows(2, "v"))
    assert result.mean_output_tokens("c0") == 1.0  # the fake counts one token per word
    assert result.to_dict()["mean_output_tokens"] == {
        "initial": 1.0, "best": result.mean_output_tokens()}


def test_a_best_prompt_that_gives_one_reply_everywhere_is_flagged(tmp_path: Any) -> None:
    """The bbh_sports case: a prompt that fixes the form can end on one label."""
    from langchain_gradsum.report import render_report

    rows = qa_rows(6, answer="no")
    val = [*qa_rows(4, "v", answer="no"), *qa_rows(2, "w", answer="yes")]
    model = scripted(generate=lambda text: "no" if "only" in text else "No, it is not.",
                     edit=lambda text: "<instruction>Reply with only yes or no.</instruction>")
    result = optimizer(model, minibatch_size=3, max_iterations=1,
                       candidates_per_prompt=1).optimize(PROMPT, rows, val)
    assert result.best_template.endswith("Reply with only yes or no.")
    assert result.best_score == pytest.approx(4 / 6)
    assert result.warnings == [
        "the best prompt gives the same reply, 'no', on 6 of 6 validation rows, and 4 of "
        "the 6 rows expect it: its score may be that of a fixed answer, not of the task "
        "learned",
        "the best prompt beat the initial prompt on 4 of 6 validation rows and lost on 0 "
        "(sign test p = 0.12): the lift may be noise; score both prompts on more rows "
        "before trusting it"]
    assert result.to_dict()["warnings"] == result.warnings
    assert "Warning: the best prompt gives the same reply, &#x27;no&#x27;, on 6 of 6" in \
        render_report(result.to_dict())


def test_a_best_prompt_whose_replies_hit_the_token_cap_is_flagged() -> None:
    """The svamp case: the replies stop at the cap; the warning points at max_tokens."""
    def generate(text: str) -> Any:
        if text.startswith("Q: v0"):  # 1 of 5 validation rows: at the share
            return AIMessage(content="Let me work through this. First",
                             response_metadata={"finish_reason": "length"})
        return "B"

    model = scripted(generate=generate)
    result = optimizer(model, minibatch_size=2, max_iterations=0).optimize(
        PROMPT, qa_rows(2), qa_rows(5, "v"))
    assert result.warnings == [
        "the best prompt's replies stopped at the model's token cap (max_tokens) on 1 of 5 "
        "validation rows: a larger cap may lift the score more than any prompt (a prompt "
        "that asks for shorter replies can cost accuracy)"]
    model = scripted(generate=lambda text: text[3:])  # none cut off (nor one reply)
    assert optimizer(model, minibatch_size=2, max_iterations=0).optimize(
        PROMPT, qa_rows(2), qa_rows(5, "v")).warnings == []


@pytest.mark.parametrize(("outputs", "flagged"), [
    (["no"] * 9 + ["yes"], True),                 # 9 of 10: at the share
    (["no"] * 8 + ["yes"] * 2, False),            # 8 of 10: below it
    (["No."] * 5, True),                          # case and a full stop do not count
    (["no"] * 4, False),                          # too few rows to tell
    (["The answer is no, and here is why: " + "x " * 20] * 6, False),  # not a short label
])
def test_one_reply_needs_a_short_reply_on_most_of_enough_rows(outputs: list[str],
                                                              flagged: bool) -> None:
    from langchain_gradsum.feedback import one_reply

    records = {f"c1|val|{i}": {"output": o, "score": 1.0} for i, o in enumerate(outputs)}
    val = qa_rows(len(outputs), answer="no")
    assert (one_reply(records, "c1", val) is not None) is flagged


@pytest.mark.parametrize("cap", [60, 100, 150])
def test_a_capped_run_spends_most_of_its_cap(cap: int) -> None:
    """Planned with the expected cost, narrowed to the beam members the rest can pay
    for, and with the final reserve cut to 2 prompts once that buys an iteration, a run
    that never stops for another reason uses at least 85 % of its cap, but for the part
    of the final reserve (beam_width + 1 prompts on val) that fewer finalists left
    unspent. (60 and 100 calls: 67 % and 79 % spent, as before the finalists cap; 150:
    93 %, 84 % before.)"""
    model = scripted(generate=lambda text: "A")  # nothing ever improves
    result = optimizer(model, minibatch_size=4, beam_width=2, candidates_per_prompt=2,
                       max_iterations=50, max_llm_calls=cap).optimize(
        PROMPT, qa_rows(24), qa_rows(8, "v"))
    assert result.stop_reason == "budget"
    validated = sum(1 for c in result.candidates.values() if c["val_score"] is not None)
    unneeded_reserve = (2 + 1 - validated) * 8
    assert 0.85 * cap <= result.total_calls + unneeded_reserve
    assert result.total_calls <= cap


def test_echoed_current_prompt_tags_are_stripped_so_the_echo_is_a_duplicate() -> None:
    from langchain_gradsum.nodes import extract_prompt

    assert extract_prompt("<prompt><current_prompt>\nQ: {question}\n</current_prompt></prompt>"
                          ) == "Q: {question}"


def test_an_editor_looping_on_one_line_keeps_it_once() -> None:
    from langchain_gradsum._editing import extract_prompt

    loop = "Reply with the letter.\n" + "If unsure, still reply with a letter.\n" * 4 + "If"
    reply = f"<prompt>Q: {{question}}\n\n{loop}</prompt>"
    assert extract_prompt(reply) == (
        "Q: {question}\n\nReply with the letter.\nIf unsure, still reply with a letter.\nIf")
    # the same loop within one line (a svamp rewrite of 2026-12-02), cut at the cap
    loop = "Be brief. " + "The answer must be a whole number. " * 5 + "The answer must be a"
    assert extract_prompt(f"<prompt>{loop}\n\n{{question}}</prompt>") == (
        "Be brief. The answer must be a whole number. The answer must be a\n\n{question}")


@pytest.mark.parametrize(("n_val", "noisy"), [(3, True), (8, False)])
def test_the_result_compares_the_best_prompt_with_the_initial_row_by_row(
        n_val: int, noisy: bool) -> None:
    """All n rows won: sign test p = 2 / 2**n (0.25 for 3 rows: noise; 0.008 for 8)."""
    model = scripted(generate=lambda text: "yes" if "only" in text else "I think yes.",
                     edit=lambda text: "<instruction>Reply with only yes or no.</instruction>")
    result = optimizer(model, minibatch_size=3, max_iterations=1,
                       candidates_per_prompt=1).optimize(PROMPT, qa_rows(3, answer="yes"),
                                                         qa_rows(n_val, "v", answer="yes"))
    assert result.best_id != "c0" and result.best_score == 1.0
    assert result.comparison == {"rows": n_val, "won": n_val, "lost": 0,
                                 "p": pytest.approx(2 / 2 ** n_val)}
    assert result.to_dict()["comparison"] == result.comparison
    assert any("the lift may be noise" in w for w in result.warnings) is noisy
    from langchain_gradsum.report import render_report

    assert (f"the best won {n_val} and lost 0 of {n_val} rows (sign test p = "
            f"{2 / 2 ** n_val:.2g})") in render_report(result.to_dict())


def test_a_tie_picked_for_shorter_replies_is_compared_and_flagged_not_called_a_lift(
) -> None:
    from langchain_gradsum.result import OptimizationResult

    c0, c1 = [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]  # 0.5 each, 2 rows won, 2 lost
    records = {f"{cid}|val|{i}": {"output": f"reply {cid} {i}", "score": score}
               for cid, scores in (("c0", c0), ("c1", c1)) for i, score in enumerate(scores)}
    cands = {"c0": cand("c0", val_score=0.5), "c1": cand("c1", "x {question}", val_score=0.5)}
    result = OptimizationResult.from_state(
        {"prompt": PROMPT, "train": qa_rows(3), "val": qa_rows(4, "v"), "candidates": cands,
         "best_id": "c1", "stop_reason": "done", "records": records})
    assert result.comparison == {"rows": 4, "won": 2, "lost": 2, "p": 1.0}
    # no lift to call noise; the warning says why the tie went to it (here no token counts)
    assert result.warnings == [
        "the best prompt scored what the initial prompt scored on 4 validation rows (2 "
        "won, 2 lost) and was picked for its rank in the beam: it is not shown to be more "
        "accurate; keep the initial prompt if accuracy is all that counts"]
    shorter = {key: {**r, "output_tokens": 5 if key.startswith("c1") else 40}
               for key, r in records.items()}
    result = OptimizationResult.from_state(
        {"prompt": PROMPT, "train": qa_rows(3), "val": qa_rows(4, "v"), "candidates": cands,
         "best_id": "c1", "stop_reason": "done", "records": shorter})
    assert result.warnings == [
        "the best prompt scored what the initial prompt scored on 4 validation rows (2 "
        "won, 2 lost) and was picked for its shorter replies (5 output tokens per reply "
        "against 40): it is not shown to be more accurate; keep the initial prompt if "
        "accuracy is all that counts"]


def test_a_result_that_keeps_the_initial_prompt_has_no_comparison() -> None:
    model = scripted(generate=lambda text: "yes",
                     edit=lambda text: "<prompt>Hm {question}</prompt>")
    result = optimizer(model, minibatch_size=3, max_iterations=1).optimize(
        PROMPT, qa_rows(3, answer="yes"), qa_rows(3, "v", answer="yes"))
    assert result.best_id == "c0" and result.comparison is None


def val_records(scores: dict[str, list[float]]) -> dict[str, Any]:
    return {f"{cid}|val|{i}": {"output": "x", "score": s}
            for cid, row in scores.items() for i, s in enumerate(row)}


@pytest.mark.parametrize(("c1", "replace_start_p", "best"), [
    ([1] * 4 + [0] + [1] * 10 + [0] * 5, 0.35, "c0"),  # 4 won, 1 lost: p = 0.38
    ([1] * 4 + [0] + [1] * 10 + [0] * 5, 1.0, "c1"),   # any lead
    ([1] * 3 + [1] + [1] * 10 + [0] * 6, 0.35, "c1"),  # 3 won, 0 lost: p = 0.25
])
def test_the_final_pick_replaces_the_start_only_on_a_lead_beyond_noise(
        c1: list[float], replace_start_p: float, best: str) -> None:
    from langchain_gradsum._scoring import rank_finalists

    c0 = [0, 0, 0, 1] + [1] * 10 + [0] * 6  # 0.55
    records = val_records({"c0": c0, "c1": c1})
    cands = {"c0": cand("c0"), "c1": cand("c1", "New {question}", parent="c0")}
    validated, best_id, score = rank_finalists(records, cands, ["c1", "c0"], "val", 20,
                                               prefer_short=True,
                                               replace_start_p=replace_start_p)
    assert best_id == best and score == sum(c1 if best == "c1" else c0) / 20
    assert validated["c1"]["lead"]["won"] - validated["c1"]["lead"]["lost"] == (
        sum(c1) - sum(c0))
    assert "lead" not in validated["c0"]


def test_a_finalist_ranked_lower_but_with_a_clear_lead_is_picked() -> None:
    from langchain_gradsum._scoring import rank_finalists

    c0 = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]  # 0.5
    c1 = [1, 1, 1, 1, 0, 0, 1, 1, 1, 1]  # 0.8: 4 won, 1 lost (p = 0.38)
    c2 = [1, 1, 1, 0, 0, 1, 1, 1, 1, 1]  # 0.8: 3 won, 0 lost (p = 0.25)
    records = val_records({"c0": c0, "c1": c1, "c2": c2})
    cands = {"c0": cand("c0"), "c1": cand("c1", "A {question}", parent="c0"),
             "c2": cand("c2", "B {question}", parent="c0")}
    for p, best in ((0.35, "c2"), (1.0, "c1")):  # c1 is first in the beam
        _, best_id, _ = rank_finalists(records, cands, ["c1", "c2", "c0"], "val", 10,
                                       prefer_short=False, replace_start_p=p)
        assert best_id == best


def test_a_start_kept_over_a_noisy_lead_says_so_in_the_result() -> None:
    """4 of 5 validation rows won and 1 lost (p = 0.38): with replace_start_p=0.35 the
    initial prompt stays, and the result says which prompt scored higher and how to take
    it anyway; by default the lead is taken and the result warns it may be noise."""
    val = [*qa_rows(4, "v", answer="yes"), *qa_rows(1, "w", answer="no")]

    def generate(text: str) -> str:
        return "yes" if "only" in text else "no" if "w0" in text else "I think yes."

    def run(**gate: float) -> Any:
        model = scripted(generate=generate, edit=lambda text: (
            "<instruction>Reply with only yes or no.</instruction>"))
        return optimizer(model, minibatch_size=3, max_iterations=1, candidates_per_prompt=1,
                         **gate).optimize(
            PROMPT, qa_rows(3, answer="yes"), val)

    result = run(replace_start_p=0.35)
    assert result.best_id == "c0" and result.best_score == 0.2
    assert result.candidates["c1"]["val_score"] == 0.8
    assert result.warnings == [
        "c1 scored 0.80 to the initial prompt's 0.20 on validation rows (4 won, 1 lost, "
        "sign test p = 0.38): a lead that may be noise, so the initial prompt is kept "
        "(replace_start_p); score both on more rows, or set replace_start_p=1.0 to take it"]
    taken = run()  # the default takes the best validation score, with a warning
    assert taken.best_id == "c1" and taken.best_score == 0.8
    assert any("the lift may be noise" in w for w in taken.warnings)
