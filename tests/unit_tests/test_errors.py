"""Every bad input fails with a clear error before any LLM call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gradsum_fakes import optimizer, qa_rows, scripted
from langchain_core.prompts import PromptTemplate

from langchain_gradsum import GradSumOptimizer, MetaPrompts, exact_match
from langchain_gradsum.beam import calls_needed_for_one_iteration

PROMPT = "Q: {question}"


@pytest.fixture
def model() -> Any:
    m = scripted()
    yield m
    assert m.calls == [], "a bad input must fail before any LLM call"


def optimize(model: Any, prompt: Any = PROMPT, train: Any = None, val: Any = None,
             **settings: Any) -> Any:
    return optimizer(model, **settings).optimize(
        prompt, qa_rows(3) if train is None else train, val)


# --- data -------------------------------------------------------------------------------


@pytest.mark.parametrize("train", [[], (), iter([])])
def test_empty_train(model: Any, train: Any) -> None:
    with pytest.raises(ValueError, match="train is empty"):
        optimize(model, train=train)


def test_empty_val(model: Any) -> None:
    with pytest.raises(ValueError, match="val is empty"):
        optimize(model, val=[])


def test_row_missing_a_prompt_variable(model: Any) -> None:
    train = qa_rows(3)
    train[2] = {"inputs": {"q": "x"}, "outputs": {"answer": "B"}}
    with pytest.raises(ValueError, match=r"train row 2 has no 'question'.*\['q'\]"):
        optimize(model, train=train)


def test_val_row_missing_a_prompt_variable(model: Any) -> None:
    with pytest.raises(ValueError, match="val row 0 has no 'question'"):
        optimize(model, val=[{"inputs": {}, "outputs": {}}])


@pytest.mark.parametrize(
    ("train", "match"),
    [
        (["just a string"], "train row 0 is a str"),
        ([qa_rows(1)[0], 42], "train row 1 is a int"),
        ([{"question": "q"}], "train row 0 has no 'inputs' key"),
        ([{"inputs": "q0"}], "'inputs' must be a dict"),
    ],
)
def test_rows_of_the_wrong_shape(model: Any, train: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        optimize(model, train=train)


def test_a_single_dict_instead_of_a_list(model: Any) -> None:
    with pytest.raises(TypeError, match="wrap a single row in a list"):
        optimize(model, train=qa_rows(1)[0])


def test_data_that_is_not_iterable(model: Any) -> None:
    with pytest.raises(TypeError, match="got int"):
        optimize(model, train=5)


def test_jsonl_path_that_does_not_exist(model: Any, tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ValueError, match="no such file .*nope.jsonl"):
        optimize(model, train=str(missing))
    with pytest.raises(ValueError, match="val: no such file"):
        optimize(model, val=missing)


def test_jsonl_with_a_bad_line(model: Any, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(qa_rows(1)[0]) + "\n\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"train.jsonl:3 is not valid JSON"):
        optimize(model, train=path)


# --- prompt -----------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["No variables here.", "Only {{escaped}} braces",
                                    PromptTemplate.from_template("constant")])
def test_prompt_with_no_variables(model: Any, prompt: Any) -> None:
    with pytest.raises(ValueError, match="no {variables}"):
        optimize(model, prompt=prompt)


@pytest.mark.parametrize("prompt", ["Q: {question", "Q: {0}"])
def test_prompt_that_is_not_a_valid_template(model: Any, prompt: str) -> None:
    with pytest.raises(ValueError, match="literal braces"):
        optimize(model, prompt=prompt)


def test_prompt_of_the_wrong_type(model: Any) -> None:
    with pytest.raises(TypeError, match="prompt must be a str"):
        optimize(model, prompt=["Q: {question}"])


# --- models -----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["nosuchprovider:foo", "not-a-known-model-xyz"])
def test_unknown_model_string(spec: str) -> None:
    with pytest.raises(ValueError, match=rf"model='{spec}' could not be loaded"):
        GradSumOptimizer(spec, evaluators=[exact_match])


@pytest.mark.parametrize("role", ["judge_model", "optimizer_model"])
def test_unknown_judge_or_optimizer_model(model: Any, role: str) -> None:
    with pytest.raises(ValueError, match=rf"{role}='nosuchprovider:foo' could not be loaded"):
        GradSumOptimizer(model, evaluators=[exact_match], **{role: "nosuchprovider:foo"})


@pytest.mark.parametrize("bad", ["", 3])
def test_model_that_is_not_a_model(bad: Any) -> None:
    with pytest.raises(TypeError, match="model must be a BaseChatModel"):
        GradSumOptimizer(bad, evaluators=[exact_match])


def test_no_model_is_an_error_for_a_bare_prompt() -> None:
    # model= may be left out only for a prompt inside an app (test_apps.py)
    with pytest.raises(ValueError, match="model= is required"):
        GradSumOptimizer(None, evaluators=[exact_match]).optimize("Q: {question}", qa_rows(2))


# --- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "error", "match"),
    [
        (dict(beam_width=0), ValueError, "beam_width must be >= 1"),
        (dict(beam_width=2.0), TypeError, "beam_width must be an int"),
        (dict(beam_width=True), TypeError, "beam_width must be an int"),
        (dict(candidates_per_prompt=0), ValueError, "candidates_per_prompt must be >= 1"),
        (dict(max_iterations=-1), ValueError, "max_iterations must be >= 0"),
        (dict(minibatch_size=0), ValueError, "minibatch_size must be >= 1"),
        (dict(max_llm_calls=0), ValueError, "max_llm_calls must be >= 1"),
        (dict(max_llm_calls="100"), TypeError, "max_llm_calls must be an int"),
        (dict(max_gradients_per_prompt=0), ValueError, "max_gradients_per_prompt must be >= 1"),
        (dict(patience=0), ValueError, "patience must be >= 1"),
        (dict(max_concurrency=0), ValueError, "max_concurrency must be >= 1"),
        (dict(max_retries=-1), ValueError, "max_retries must be >= 0"),
        (dict(target_score=0), ValueError, r"target_score must be in \(0, 1\]"),
        (dict(target_score=1.5), ValueError, r"target_score must be in \(0, 1\]"),
        (dict(retry_backoff=-1), ValueError, r"retry_backoff must be in \[0, 60\]"),
        (dict(retry_backoff=float("inf")), ValueError, r"retry_backoff must be in \[0, 60\]"),
        (dict(retry_backoff=float("nan")), ValueError, "retry_backoff must be in"),
        (dict(retry_backoff=1e9), ValueError, "retry_backoff must be in"),
        (dict(retry_backoff="1"), TypeError, "retry_backoff must be a number, got '1'"),
        (dict(retry_backoff=True), TypeError, "retry_backoff must be a number"),
        (dict(retry_backoff=None), TypeError, "retry_backoff must be a number"),
        (dict(target_score=True), TypeError, "target_score must be a number"),
        (dict(target_score="0.9"), TypeError, "target_score must be a number"),
        (dict(target_score=float("nan")), ValueError, r"target_score must be in \(0, 1\]"),
        (dict(max_parse_retries=-1), ValueError, "max_parse_retries must be >= 0"),
        (dict(max_parse_retries=1.5), TypeError, "max_parse_retries must be an int"),
        (dict(max_retries="2"), TypeError, "max_retries must be an int"),
        (dict(seed=1.0), TypeError, "seed must be an int"),
        (dict(summarize="no"), TypeError, "summarize must be True or False"),
        (dict(repair_missing_variables=0), TypeError, "repair_missing_variables must be True"),
        (dict(reject_copied_examples=None), TypeError, "reject_copied_examples must be True"),
        (dict(retry_unusable_edits="yes"), TypeError, "retry_unusable_edits must be True"),
        (dict(task_description=None), TypeError, "task_description must be a str"),
        (dict(meta_prompts={"judge": "x"}), TypeError, "meta_prompts must be a MetaPrompts"),
        (dict(evaluators=exact_match), TypeError, "evaluators must be a list of callables"),
        (dict(evaluators=[], criteria=None), ValueError, "give `criteria`"),
        (dict(evaluators=[], criteria=""), ValueError, "give `criteria`"),
        (dict(evaluators=["exact_match"]), TypeError, "evaluators must be callables"),
        (dict(criteria=3), TypeError, "criteria must be a str"),
    ],
)
def test_settings_out_of_range(model: Any, settings: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        optimizer(model, **settings)


def test_meta_prompt_override_with_the_wrong_fields() -> None:
    with pytest.raises(ValueError, match=r"unknown fields \['foo'\]"):
        MetaPrompts(edit="{prompt} {feedback} {variables} {foo}")
    with pytest.raises(ValueError, match=r"must contain the fields \['feedback'\]"):
        MetaPrompts(edit="{prompt} {variables}")
    with pytest.raises(ValueError, match="not a valid str.format template"):
        MetaPrompts(judge="{criteria} {output} {")
    for bad in ((), ("ok", ""), "a string", ("ok", 3)):
        with pytest.raises(TypeError, match="edit_variants must be a non-empty tuple"):
            MetaPrompts(edit_variants=bad)  # type: ignore[arg-type]


def test_budget_too_small_for_one_iteration_states_the_need(model: Any) -> None:
    settings = dict(minibatch_size=2, beam_width=3, candidates_per_prompt=2, max_iterations=3)
    # first minibatch 2 + one iteration of the expected cost (2 gradients, 1 summary,
    # 2 edits, 2 children screened on 2 rows, the parent on the next 2 rows, and the half
    # of the children expected to pass on 2 rows) + final validation of 4 prompts x 3 rows
    need = 2 + (2 + 1 + 2 + 2 * 2 + 2 + 1 * 2) + 12
    ctx = optimizer(model, **settings).context()
    assert calls_needed_for_one_iteration(5, 3, ctx) == need
    with pytest.raises(ValueError, match=rf"max_llm_calls={need - 1} .* at least {need} "):
        optimize(model, train=qa_rows(5), val=qa_rows(3, "v"), max_llm_calls=need - 1,
                 **settings)


def test_budget_of_exactly_the_need_makes_one_full_iteration() -> None:
    model = scripted()
    settings = dict(minibatch_size=2, beam_width=3, candidates_per_prompt=2, max_iterations=3)
    need = 2 + (2 + 1 + 2 + 2 * 2 + 2 + 1 * 2) + 12
    result = optimize(model, train=qa_rows(5), val=qa_rows(3, "v"), max_llm_calls=need,
                      **settings)
    assert result.iterations == 1 and result.stop_reason == "budget"
    assert len(result.candidates) == 3
    assert len(model.calls) == result.total_calls <= need


# --- evaluators -------------------------------------------------------------------------


def test_broken_evaluator_fails_the_dry_run(model: Any) -> None:
    def crashes(outputs: dict, reference_outputs: dict) -> float:
        return reference_outputs["label"]  # KeyError: the rows say "answer"

    with pytest.raises(ValueError, match=r"evaluator 'crashes' failed a dry run.*KeyError"):
        optimize(model, evaluators=[crashes])


@pytest.mark.parametrize(
    ("returns", "match"),
    [(5, "scores must be in 0..1"), ("good", "return a number in 0..1"),
     ({"comment": "x"}, "without 'score'")],
)
def test_evaluator_with_a_bad_result_fails_the_dry_run(model: Any, returns: Any,
                                                       match: str) -> None:
    def bad(outputs: dict) -> Any:
        return returns

    with pytest.raises(ValueError, match=match):
        optimize(model, evaluators=[bad])


def test_evaluator_without_known_parameters_fails_the_dry_run(model: Any) -> None:
    def wrong_params(prediction: str, answer: str) -> float:
        return 1.0

    with pytest.raises(ValueError, match="must take some of the parameters"):
        optimize(model, evaluators=[wrong_params])


@pytest.mark.parametrize("backoff", [0, 0.5, 2, 60])
def test_retry_backoff_in_range_is_accepted(backoff: float) -> None:
    assert optimizer(scripted(), retry_backoff=backoff).settings["retry_backoff"] == backoff
