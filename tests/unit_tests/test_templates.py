"""The variable guard, template parsing, and str/PromptTemplate/ChatPromptTemplate in and out."""

from __future__ import annotations

from typing import Any

import pytest
from gradsum_fakes import GOOD, optimizer, qa_rows, scripted
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder, PromptTemplate

from langchain_gradsum._templates import (
    PromptSlot,
    copied_example,
    heal_template,
    sentences,
    template_variables,
)

# --- heal_template ----------------------------------------------------------------------


def test_heal_keeps_a_clean_template() -> None:
    assert heal_template("Solve {question} for {name}.", ["question", "name"]) == (
        "Solve {question} for {name}.", "ok")


def test_heal_keeps_escaped_braces_and_repeated_variables() -> None:
    text = "Return {{\"answer\": ...}} for {question}; restate {question}."
    assert heal_template(text, ["question"]) == (text, "ok")


def test_heal_escapes_invented_variables() -> None:
    healed, status = heal_template("Answer {question} as {style} in {lang}.", ["question"])
    assert status == "repaired"
    assert healed == "Answer {question} as {{style}} in {{lang}}."
    rendered = PromptTemplate.from_template(healed).format(question="Q")
    assert rendered == "Answer Q as {style} in {lang}."


def test_heal_drops_a_sentence_that_asks_for_an_invented_value() -> None:
    """mmlu, 5a58f22: "The correct answer is {expected_answer}." nobody fills in."""
    text = ("Answer about {subject}.\n\n{question}\n\nThe correct answer is "
            "{expected_answer}.\n\nReply with A, B, C or D. Use {style} here. Thanks.")
    healed, status = heal_template(text, ["subject", "question"])
    assert status == "repaired"
    assert healed == "Answer about {subject}.\n\n{question}\n\nReply with A, B, C or D. Thanks."
    # in a sentence with a required variable it is escaped instead
    assert heal_template("Answer {question} as {style}. Be brief.", ["question"]) == (
        "Answer {question} as {{style}}. Be brief.", "repaired")


def test_heal_escapes_an_invented_value_it_cannot_drop() -> None:
    assert heal_template("The answer is {expected}.", []) == (
        "The answer is {{expected}}.", "repaired")


@pytest.mark.parametrize(
    ("text", "healed"),
    [
        ("Use JSON like {\"a\": 1} for {question}", "Use JSON like {{\"a\": 1}} for {question}"),
        ("{question} } stray", "{question} }} stray"),
        ("stray { {question}", "stray {{ {question}"),
        ("{question} {0} {}", "{question} {{0}} {{}}"),
        ("{question} {a.b}", "{question} {{a.b}}"),
    ],
)
def test_heal_escapes_stray_braces(text: str, healed: str) -> None:
    out, status = heal_template(text, ["question"])
    assert (out, status) == (healed, "repaired")
    assert template_variables(out) == ["question"]  # now a valid template


def test_heal_rejects_a_lost_variable() -> None:
    assert heal_template("Answer the question.", ["question"]) == (
        None, "rejected: lost {question}")
    assert heal_template("Answer {{question}} for {name}", ["question", "name"]) == (
        None, "rejected: lost {question}")
    out, status = heal_template("nothing", ["a", "b"])
    assert out is None and status == "rejected: lost {a}, {b}"


def test_heal_with_no_required_variables_escapes_everything() -> None:
    assert heal_template("Be {nice}.", []) == ("Be {{nice}}.", "repaired")


# --- template_variables -----------------------------------------------------------------


def test_template_variables_in_order_of_first_use() -> None:
    assert template_variables("{b} {a} {b} {{c}}") == ["b", "a"]


@pytest.mark.parametrize("text", ["{unclosed", "bad } brace", "{0}", "{a.b}", "{a[0]}", "{}"])
def test_template_variables_rejects_bad_templates(text: str) -> None:
    with pytest.raises(ValueError, match="literal braces as"):
        template_variables(text)


# --- PromptSlot -------------------------------------------------------------------------


def test_slot_of_a_chat_prompt_with_a_system_message() -> None:
    chat = ChatPromptTemplate.from_messages(
        [("system", "You are {persona}."), ("human", "{question}"), ("ai", "ok")])
    slot, text = PromptSlot.from_prompt(chat)
    assert (slot.kind, slot.index, text) == ("chat", 0, "You are {persona}.")
    assert slot.all_variables(text) == ["persona", "question"]
    msgs = slot.render("Be {persona}!", {"persona": "terse", "question": "2+2?"})
    assert [type(m) for m in msgs] == [SystemMessage, HumanMessage, AIMessage]
    assert [m.content for m in msgs] == ["Be terse!", "2+2?", "ok"]


def test_slot_of_a_chat_prompt_without_system_picks_the_last_human_message() -> None:
    chat = ChatPromptTemplate.from_messages(
        [("human", "Context: {context}"), ("ai", "Got it."), ("human", "Q: {question}")])
    slot, text = PromptSlot.from_prompt(chat)
    assert (slot.index, text) == (2, "Q: {question}")
    assert slot.all_variables(text) == ["question", "context"]


def test_slot_of_a_literal_system_message_escapes_its_braces() -> None:
    chat = ChatPromptTemplate.from_messages(
        [SystemMessage("Reply as {json}."), ("human", "{question}")])
    slot, text = PromptSlot.from_prompt(chat)
    assert text == "Reply as {{json}}."
    assert slot.render(text, {"question": "q"})[0] == SystemMessage("Reply as {json}.")


def test_slot_rejects_what_it_cannot_optimize() -> None:
    with pytest.raises(ValueError, match="f-string"):
        PromptSlot.from_prompt(PromptTemplate.from_template("{{ q }}", template_format="mustache"))
    with pytest.raises(ValueError, match="partial_variables"):
        PromptSlot.from_prompt(PromptTemplate.from_template("{a} {b}", partial_variables={"b": 1}))
    with pytest.raises(ValueError, match="no system or human"):
        PromptSlot.from_prompt(ChatPromptTemplate.from_messages(
            [MessagesPlaceholder("history"), ("ai", "{x}")]))
    with pytest.raises(TypeError, match="got int"):
        PromptSlot.from_prompt(42)


# --- end to end: what goes in comes out -------------------------------------------------


def run(prompt: Any, model: Any = None, **extra_inputs: Any) -> Any:
    model = model or scripted()
    train, val = qa_rows(2), qa_rows(2, prefix="v")
    for row in train + val:
        row["inputs"].update(extra_inputs)
    return optimizer(model).optimize(prompt, train, val), model


def test_chat_prompt_with_system_message_optimizes_the_system_message() -> None:
    chat = ChatPromptTemplate.from_messages([
        ("system", "You answer in the voice of a {persona}."),
        ("human", "Question: {question}"),
    ])
    result, model = run(chat, scripted(
        edit=lambda text: f"<prompt>{GOOD}: answer as a {{persona}}.</prompt>"), persona="cat")

    best = result.best_prompt
    assert isinstance(best, ChatPromptTemplate)
    assert sorted(best.input_variables) == sorted(chat.input_variables) == ["persona", "question"]
    assert result.best_template == f"{GOOD}: answer as a {{persona}}."
    msgs = best.format_messages(persona="pirate", question="2+2?")
    assert [type(m) for m in msgs] == [SystemMessage, HumanMessage]
    assert msgs[0].content == f"{GOOD}: answer as a pirate."
    assert msgs[1].content == "Question: 2+2?"
    # the edit was asked to keep the slot's variable, and the model saw the full chat
    edits = [t for r, t, _ in model.calls if r == "edit"]
    edit_prompt = next(t for t in edits if "Write an improved prompt" in t)  # a rewrite
    assert all("You answer in the voice of a {persona}." in t for t in edits)
    assert edit_prompt.count("{persona}") >= 2  # in the prompt and in the list to keep
    assert "{question}" not in edit_prompt  # the human message is not being optimized
    assert any(t.startswith("You answer in the voice of a ") and "Question: q0" in t
               for r, t, _ in model.calls if r == "generate")


def test_chat_prompt_without_system_message_optimizes_the_last_human_message() -> None:
    chat = ChatPromptTemplate.from_messages([
        ("human", "Hi"), ("ai", "Hello!"), ("human", "Q: {question}")])
    result, _ = run(chat)

    best = result.best_prompt
    assert isinstance(best, ChatPromptTemplate)
    assert best.input_variables == ["question"]
    assert result.best_id != "c0" and result.best_template.startswith(GOOD)
    msgs = best.format_messages(question="x")
    assert [m.type for m in msgs] == ["human", "ai", "human"]
    assert [m.content for m in msgs[:2]] == ["Hi", "Hello!"]
    assert msgs[2].content.startswith(GOOD) and msgs[2].content.endswith("x")


def test_prompt_template_in_prompt_template_out() -> None:
    result, _ = run(PromptTemplate.from_template("Q: {question}"))
    assert isinstance(result.best_prompt, PromptTemplate)
    assert result.best_prompt.input_variables == ["question"]
    assert result.best_prompt.template == result.best_template
    assert result.best_template.startswith(GOOD)


def test_str_in_str_out() -> None:
    result, _ = run("Q: {question}")
    assert isinstance(result.best_prompt, str)
    assert result.best_prompt == result.best_template and result.best_prompt.startswith(GOOD)


def test_initial_prompt_is_returned_in_its_own_type_when_nothing_beats_it() -> None:
    chat = ChatPromptTemplate.from_messages([("system", "Sys {persona}"), ("human", "{question}")])
    result, _ = run(chat, scripted(generate=lambda text: "B"), persona="p")  # already perfect
    assert result.best_id == "c0"
    assert isinstance(result.best_prompt, ChatPromptTemplate)
    assert result.best_prompt.format_messages(persona="p", question="q") == \
        chat.format_messages(persona="p", question="q")


def test_heal_can_append_a_lost_variable() -> None:
    assert heal_template("Solve it.", ["question"], append_missing=True) == (
        "Solve it.\n\n{question}", "repaired")
    assert heal_template("Use {a}.", ["a", "b"], append_missing=True) == (
        "Use {a}.\n\nb: {b}", "repaired")
    # nothing to attach the variable to: still rejected
    assert heal_template("   ", ["question"], append_missing=True) == (
        None, "rejected: lost {question}")


def test_copied_example_finds_a_pasted_input_but_not_shared_instructions() -> None:
    examples = ["What is 2 + 2?", "Tom has 3 apples and buys 5 more apples at the shop. How many?"]
    pasted = "Solve it. E.g. tom has 3 apples, and buys 5 more apples at the shop! {question}"
    assert copied_example(pasted, examples) == 1
    # shorter than min_words: a shared phrase, not a copy
    assert copied_example("Say how many apples at the shop: {question}", examples) is None
    # words the original prompt already had are not a copy
    original = "Tom has 3 apples and buys 5 more apples at the shop. {question}"
    assert copied_example(original + " Think first.", examples, original=original) is None
    assert copied_example(pasted, examples, min_words=20) is None


@pytest.mark.parametrize(("line", "pieces"), [
    ("Say x. Say y!", ["Say x.", " Say y!"]),
    ("The answer is 3.5 apples. Done", ["The answer is 3.5 apples.", " Done"]),
    ("Options (A)...(D)? Pick one.", ["Options (A)...(D)?", " Pick one."]),
    ("", []),
])
def test_sentences_cut_after_a_word_ending_stop_and_join_back(line: str, pieces: list[str]
                                                              ) -> None:
    assert sentences(line) == pieces and "".join(pieces) == line


def test_a_sentence_repeated_with_a_decimal_in_it_is_dropped_once() -> None:
    from langchain_gradsum._editing import _without_repeats

    looped = "Round to 0.5 units. Round to 0.5 units. Then stop."
    assert _without_repeats(looped) == "Round to 0.5 units. Then stop."


def test_numbered_items_with_no_text_are_dropped() -> None:
    from langchain_gradsum._editing import extract_prompt

    looped = "Steps:\n1. Read the passage.\n2. Answer briefly.\n3.\n4.\n 5. \n\nQ: {question}"
    assert extract_prompt(f"<prompt>{looped}</prompt>") == (
        "Steps:\n1. Read the passage.\n2. Answer briefly.\n\nQ: {question}")
