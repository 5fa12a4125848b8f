"""Every knob is defined once, in `GradSumContext`; everything else is derived or checked."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from gradsum_fakes import scripted

from langchain_gradsum import GradSumContext, GradSumOptimizer, exact_match
from langchain_gradsum._knobs import check_knob, knobs
from langchain_gradsum.state import RunContext

KNOBS = [f.name for f in dataclasses.fields(GradSumContext)]


def test_every_knob_has_a_description() -> None:
    assert KNOBS == list(knobs())
    for f in dataclasses.fields(GradSumContext):
        description = f.metadata.get("description")
        assert isinstance(description, str) and description.strip(), f.name
        assert "\n" not in description, f"{f.name}: one line"


def test_internals_are_not_knobs() -> None:
    internals = {"prompt_slot", "app", "cache", "should_stop"}
    assert not internals & set(KNOBS)
    ctx = GradSumContext(model="openai:gpt-4o-mini", evaluators=(exact_match,))
    assert all(getattr(ctx, name) is None for name in internals)
    run = RunContext(model="openai:gpt-4o-mini", cache="c", should_stop=lambda: None)
    assert run.cache == "c" and callable(run.should_stop)


def test_the_optimizer_takes_exactly_the_knobs() -> None:
    params = inspect.signature(GradSumOptimizer).parameters
    assert list(params) == KNOBS
    assert params["model"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    for name in KNOBS[1:]:
        knob = knobs()[name]
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        if name not in ("max_concurrency", "meta_prompts"):  # None: resolved by the optimizer
            assert params[name].default == knob.default, name
    with pytest.raises(TypeError, match="unexpected keyword argument 'beam_widht'"):
        GradSumOptimizer("openai:gpt-4o-mini", evaluators=[exact_match], beam_widht=2)


def test_the_optimizer_docstring_lists_exactly_the_knobs() -> None:
    doc = GradSumOptimizer.__doc__ or ""
    args = doc.split("Args:\n", 1)[1]
    listed = [line.split(":")[0].strip() for line in args.splitlines()
              if line.startswith(" " * 8) and not line.startswith(" " * 9)]
    assert listed == KNOBS
    for knob in knobs().values():
        assert " ".join(knob.description.split()[:3]) in " ".join(args.split()), knob.name


def test_the_optimizer_keeps_every_knob_in_its_settings() -> None:
    opt = GradSumOptimizer(scripted(), evaluators=[exact_match], max_concurrency=3)
    assert set(opt.settings) == set(KNOBS) - {"model", "judge_model", "optimizer_model"}
    ctx = opt.context()
    for name, value in opt.settings.items():
        assert getattr(ctx, name) == value


@pytest.mark.parametrize(("name", "value", "error"), [
    ("beam_width", 0, ValueError), ("beam_width", 1.5, TypeError), ("summarize", 1, TypeError),
    ("target_score", 0.0, ValueError), ("retry_backoff", float("inf"), ValueError),
    ("patience", "3", TypeError), ("meta_prompts", {}, TypeError),
])
def test_the_context_checks_its_knobs(name: str, value: object, error: type) -> None:
    with pytest.raises(error, match=name):
        GradSumContext(model="openai:gpt-4o-mini", **{name: value})  # type: ignore[arg-type]
    with pytest.raises(error, match=name):
        check_knob(name, value)


def test_optional_knobs_take_none() -> None:
    for knob in knobs().values():
        if knob.optional:
            check_knob(knob.name, None)
