"""Built-in evaluators and LangSmith-shaped custom evaluators."""

from __future__ import annotations

from typing import Any

import pytest
from gradsum_fakes import optimizer, qa_rows, scripted

from langchain_gradsum.evaluators import (
    EvalResult,
    choice_match,
    contains_answer,
    exact_match,
    normalize_result,
    numeric_match,
    run_evaluator,
)


def out(text: str) -> dict[str, str]:
    return {"output": text}


# --- built-ins --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "answer", "score"),
    [
        ("So the total is 42.", "42", 1.0),
        ("First 3 apples, then 5, so 8", "8", 1.0),
        ("The answer is 1,234.", "1234", 1.0),
        ("It is -2.50", "-2.5", 1.0),
        ("about 41", "42", 0.0),
        ("42 is not it, 43 is", "42", 0.0),  # the last number counts
        ("no idea", "42", 0.0),
        ("#### 18", "Janet makes 18 dollars.\n#### 18", 1.0),
    ],
)
def test_numeric_match(output: str, answer: str, score: float) -> None:
    res = numeric_match(out(output), {"answer": answer})
    assert res["key"] == "numeric_match" and res["score"] == score


def test_numeric_match_explains_itself() -> None:
    assert numeric_match(out("none"), {"answer": "1"})["comment"] == (
        "the reply (1 word) contains no number; expected 1. The reply must end with the "
        "final number.")
    assert numeric_match(out("7"), {"answer": "1"})["comment"] == (
        "the reply's final number is 7, expected 1")
    # the right number, but not last: a form problem, said so
    assert "1 does appear earlier in the reply" in numeric_match(
        out("1 apple, so 2 boxes"), {"answer": "1"})["comment"]


@pytest.mark.parametrize("reference", [{"answer": "four"}, {"answer": None}, {"answer": ""}])
def test_numeric_match_scores_an_odd_reference_0_with_a_comment(reference: dict) -> None:
    res = numeric_match(out("The answer is 4"), reference)
    assert res["score"] == 0.0 and "contains no number" in res["comment"]


def test_exact_match_says_when_the_answer_is_wrapped_in_other_text() -> None:
    res = exact_match(out("Yes, the sentence is plausible."), {"answer": "yes"})
    assert res["score"] == 0.0
    assert "must be exactly 'yes'" in res["comment"]
    assert "contains 'yes' but adds other text" in res["comment"]
    assert "adds other text" not in exact_match(out("no"), {"answer": "yes"})["comment"]


@pytest.mark.parametrize(
    ("output", "ref", "score"),
    [
        ("Paris", {"answer": "paris"}, 1.0),
        ("  Paris. ", {"answer": "Paris"}, 1.0),
        ("Paris, France", {"answer": "Paris"}, 0.0),
        ("yes", {"output": "Yes"}, 1.0),
        ("yes", {"label": "yes"}, 1.0),  # a single reference key of any name
    ],
)
def test_exact_match(output: str, ref: dict, score: float) -> None:
    assert exact_match(out(output), ref)["score"] == score


def test_exact_match_needs_a_reference() -> None:
    with pytest.raises(ValueError, match="no reference answer"):
        exact_match(out("x"), {"a": 1, "b": 2})


@pytest.mark.parametrize(
    ("output", "ref", "score"),
    [
        ("The capital is Paris!", {"answer": "paris"}, 1.0),
        ("It's New-York city", {"answer": "new york"}, 1.0),
        ("London", {"answer": "Paris"}, 0.0),
        ("I'd say Lyon", {"answers": ["Paris", "Lyon"]}, 1.0),
        ("anything", {"answer": "?!"}, 0.0),  # an empty normalized answer never matches
    ],
)
def test_contains_answer(output: str, ref: dict, score: float) -> None:
    assert contains_answer(out(output), ref)["score"] == score


@pytest.mark.parametrize(
    ("output", "answer", "score"),
    [
        ("(B)", "B", 1.0),
        ("The answer is C", "(C)", 1.0),
        ("Answer: d", "D", 1.0),
        ("A looks tempting, but B is right. Answer: (B)", "B", 1.0),
        ("Options A and C are wrong; I pick D", "D", 1.0),  # last standalone letter
        ("A", "B", 0.0),
        ("none of them", "B", 0.0),
        ("C. Because I said so", "C", 1.0),  # not the word "I"
        ("B) 42\nI hope this helps", "B", 1.0),
        ("I'd say (C), since A is too small", "C", 1.0),  # a marked letter wins
        ("A dog can't fly, so D", "D", 1.0),  # not the article "A"
        ("It must be B, I think", "B", 1.0),
    ],
)
def test_choice_match(output: str, answer: str, score: float) -> None:
    assert choice_match(out(output), {"answer": answer})["score"] == score


def test_choice_match_without_a_letter_says_so() -> None:
    assert choice_match(out("no idea"), {"answer": "A"})["comment"].startswith(
        "no option letter found in the reply (2 words: 'no idea'); expected A")


# --- custom evaluators in LangSmith's shape ----------------------------------------------

INPUTS = {"question": "2+2"}
REF = {"answer": "4"}


def test_evaluator_taking_only_outputs() -> None:
    seen: list[Any] = []

    def ev(outputs: dict) -> bool:
        seen.append(outputs)
        return outputs["output"] == "4"

    assert run_evaluator(ev, INPUTS, "4", REF) == EvalResult(key="ev", score=1.0)
    assert seen == [{"output": "4"}]


def test_evaluator_taking_all_three_in_any_order() -> None:
    seen: dict[str, Any] = {}

    def ev(reference_outputs: dict, inputs: dict, outputs: dict) -> float:
        seen.update(inputs=inputs, outputs=outputs, reference_outputs=reference_outputs)
        return 0.25

    assert run_evaluator(ev, INPUTS, "5", REF).score == 0.25
    assert seen == {"inputs": INPUTS, "outputs": {"output": "5"}, "reference_outputs": REF}


def test_evaluator_taking_inputs_and_reference_only() -> None:
    def ev(inputs: dict, reference_outputs: dict) -> int:
        return int(inputs["question"] == "2+2" and reference_outputs["answer"] == "4")

    assert run_evaluator(ev, INPUTS, "whatever", REF).score == 1.0


def test_evaluator_taking_kwargs_gets_everything() -> None:
    def ev(**kwargs: Any) -> float:
        assert set(kwargs) == {"inputs", "outputs", "reference_outputs"}
        return 1

    assert run_evaluator(ev, INPUTS, "4", REF).score == 1.0


def test_callable_object_evaluator_is_named_by_its_class() -> None:
    class Judge:
        def __call__(self, outputs: dict) -> dict:
            return {"score": 0.5, "comment": "meh"}

    assert run_evaluator(Judge(), INPUTS, "4", REF) == EvalResult(
        key="Judge", score=0.5, comment="meh")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (True, EvalResult(key="ev", score=1.0)),
        (False, EvalResult(key="ev", score=0.0)),
        (0, EvalResult(key="ev", score=0.0)),
        (0.7, EvalResult(key="ev", score=0.7)),
        ({"score": 1}, EvalResult(key="ev", score=1.0)),
        ({"key": "correct", "score": False, "comment": "no"},
         EvalResult(key="correct", score=0.0, comment="no")),
        ({"key": "", "score": 0.5, "comment": None}, EvalResult(key="ev", score=0.5)),
    ],
)
def test_result_shapes(raw: Any, expected: EvalResult) -> None:
    assert normalize_result(raw, "ev") == expected


def test_result_objects_with_a_score_attribute() -> None:
    class LSResult:  # like langsmith.evaluation.EvaluationResult
        key, score, comment = "ls", 0.9, "fine"

    assert normalize_result(LSResult(), "ev") == EvalResult(key="ls", score=0.9, comment="fine")


@pytest.mark.parametrize("score", [1.01, -0.1, 5, {"score": 2}])
def test_out_of_range_score_is_an_error(score: Any) -> None:
    with pytest.raises(ValueError, match="scores must be in 0..1"):
        normalize_result(score, "ev")


@pytest.mark.parametrize("raw", ["1", None, [1], {"comment": "no score"}])
def test_non_score_results_are_errors(raw: Any) -> None:
    with pytest.raises(ValueError, match="evaluator 'ev' returned"):
        normalize_result(raw, "ev")


def test_custom_evaluators_drive_a_run_and_are_averaged() -> None:
    def starts_with_b(outputs: dict) -> bool:
        return outputs["output"].startswith("B")

    def half(inputs: dict, reference_outputs: dict) -> dict:
        return {"key": "half", "score": 0.5, "comment": "constant"}

    model = scripted()
    result = optimizer(model, evaluators=[starts_with_b, half]).optimize(
        "Q: {question}", qa_rows(2))
    assert result.initial_score == pytest.approx(0.25)  # (0 + 0.5) / 2
    assert result.best_score == pytest.approx(0.75)  # (1 + 0.5) / 2
    feedback = result.records["c0|train|0"]["feedback"]
    assert feedback == "starts_with_b: 0\nhalf: 0.5 (constant)"
    assert "judge" not in model.calls_by_role()
