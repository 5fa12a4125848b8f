"""The bundled demo tasks: data, start prompts and evaluators fit together."""

from __future__ import annotations

import pytest

from langchain_gradsum._templates import template_variables
from langchain_gradsum.demo import DEMOS, constant_baseline, demo_rows, main


@pytest.mark.parametrize("name", sorted(DEMOS))
def test_each_demo_task_has_rows_its_start_prompt_can_render(name: str) -> None:
    rows = demo_rows(name)
    demo = DEMOS[name]
    assert len(rows) >= 40
    for row in rows:
        assert set(template_variables(demo.start_prompt)) <= set(row["inputs"])
        assert demo.evaluator({"output": str(row["outputs"]["answer"])},
                              row["outputs"])["score"] == 1.0


def test_the_sarcasm_demo_starts_from_a_prompt_whose_replies_fail_exact_match() -> None:
    # what the 1.5B model replies to the start prompt: a sentence, not the label
    demo = DEMOS["sarcasm"]
    res = demo.evaluator({"output": "Yes, this tweet is sarcastic."}, {"answer": "Yes"})
    assert res["score"] == 0.0 and "adds other text" in res["comment"]


def test_the_default_demo_is_svamp_and_the_date_rows_are_balanced(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def stop_before_the_server(args: object) -> None:
        seen.append(args)
        raise KeyboardInterrupt

    monkeypatch.setattr("langchain_gradsum.demo.run", stop_before_the_server)
    with pytest.raises(KeyboardInterrupt):
        main([])
    with pytest.raises(KeyboardInterrupt):
        main(["--task", "date"])
    default, args = seen
    assert (default.task, default.max_tokens, default.iterations) == ("svamp", None, 2)
    assert args.task == "date"
    rows = demo_rows("date")
    train, val = rows[: args.train], rows[args.train : args.train + args.val]
    for split in (train, val):
        assert constant_baseline(split)[1] == pytest.approx(1 / 6)
    # the model's worked answer names the label but is not it: exact match fails
    res = DEMOS["date"].evaluator({"output": "Tomorrow is 12/25/1937, so the answer is (B)."},
                                  {"answer": "(B)"})
    assert res["score"] == 0.0


def test_constant_baseline_is_the_most_frequent_answers_share() -> None:
    rows = [{"outputs": {"answer": a}} for a in ["No", "Yes", "No", "No"]]
    assert constant_baseline(rows) == ("No", 0.75)


@pytest.mark.parametrize(("name", "iterations"), [("date", 3), ("svamp", 2)])
def test_the_demo_caps_pay_for_validation_and_the_iterations(
        name: str, iterations: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # the date demo validates 3 prompts on 24 rows: with a cap of 100 the planner stopped
    # it after one iteration (17 calls of search); its cap must leave room for three, and
    # the svamp demo's for its two
    from gradsum_fakes import context

    from langchain_gradsum.beam import iteration_cost

    seen = []
    monkeypatch.setattr("langchain_gradsum.demo.run", lambda a: seen.append(a) or exit_())
    with pytest.raises(KeyboardInterrupt):
        main(["--task", name])
    (a,) = seen
    assert a.max_calls == DEMOS[name].max_calls and a.iterations >= iterations
    ctx = context(None, beam_width=a.beam_width, candidates_per_prompt=a.candidates,
                  minibatch_size=a.minibatch, max_gradients_per_prompt=a.max_gradients,
                  max_llm_calls=a.max_calls)
    reserve = (a.beam_width + 1) * a.val
    search = a.max_calls - reserve - a.minibatch  # after scoring the start prompt
    planned = iteration_cost(1, a.train, ctx) + (iterations - 1) * iteration_cost(
        a.beam_width, a.train, ctx)
    assert planned <= search


def exit_() -> None:
    raise KeyboardInterrupt


def test_the_svamp_demo_rows_are_its_own_and_a_cut_off_reply_fails() -> None:
    """The rows come from outside the benchmark's seed-0 splits (see data/README.md);
    a worked answer cut off at the 128-token cap before its number scores 0."""
    rows = demo_rows("svamp")
    assert len({r["inputs"]["question"] for r in rows}) == len(rows) == 48
    cut = ("To find how many more campers went rowing in the afternoon, we need to follow "
           "these steps:\n\n1. Identify the number of campers in the morning: 52.\n2. Ide")
    res = DEMOS["svamp"].evaluator({"output": cut}, rows[0]["outputs"])
    # its last number is the next list item's
    assert res["score"] == 0.0 and "final number is 2, expected 9" in res["comment"]
