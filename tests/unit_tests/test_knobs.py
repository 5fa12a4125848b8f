"""Every knob is defined once, in `GradSumContext`; everything else is derived or checked."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest
from gradsum_fakes import scripted
from typer.testing import CliRunner

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
    ("patience", "3", TypeError), ("meta_prompts", "mine", TypeError),
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


# --- the command line ----------------------------------------------------------------


def test_gradsum_optimize_help_lists_exactly_the_knobs() -> None:
    from typer.main import get_command

    from langchain_gradsum.cli import app, knob_option

    command = get_command(app).commands["optimize"]  # type: ignore[attr-defined]
    options = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    for name in KNOBS:
        assert knob_option(name) in options, name
    res = CliRunner().invoke(app, ["optimize", "--help"], terminal_width=200)
    for name in KNOBS:
        assert knob_option(name) in res.output, name
    for knob in knobs().values():  # the derived options show the context's description
        if knob.kind in (int, float, bool):
            assert knob.description.split(";")[0].split("(")[0].strip() in \
                " ".join(res.output.split()), knob.name


def test_new_knob_flags_reach_the_optimizer(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    from langchain_gradsum import cli

    seen: dict[str, object] = {}

    class Spy(GradSumOptimizer):
        def __init__(self, model: object = None, **knobs: object) -> None:
            super().__init__(model, **knobs)  # type: ignore[arg-type]
            seen.update(self.settings)

        def optimize(self, *args: object, **kwargs: object) -> object:
            raise KeyboardInterrupt

    import langchain_gradsum.optimizer as optimizer_module

    monkeypatch.setattr(optimizer_module, "GradSumOptimizer", Spy)
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"inputs": {"question": "q"}, "outputs": {"answer": "a"}})
                     + "\n", encoding="utf-8")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"summarize": "Merge for {prompt}: {gradients}"}), encoding="utf-8")
    res = CliRunner().invoke(cli.app, [
        "optimize", "Q: {question}", "--data", str(train), "--model", "openai:gpt-4o-mini",
        "--evaluator", "exact_match", "--max-parse-retries", "3", "--retry-backoff", "0.5",
        "--no-summarize", "--no-repair", "--meta-prompts", str(meta)], env={
        "OPENAI_API_KEY": "sk-test-not-used"})
    assert res.exit_code == 130, res.output
    assert seen["max_parse_retries"] == 3 and seen["retry_backoff"] == 0.5
    assert seen["summarize"] is False and seen["repair_missing_variables"] is False
    assert seen["meta_prompts"].summarize == "Merge for {prompt}: {gradients}"  # type: ignore[attr-defined]
    assert seen["beam_width"] == knobs()["beam_width"].default  # not given: the default


def test_bad_meta_prompts_file_is_an_input_error(tmp_path: Path) -> None:
    from langchain_gradsum.cli import app

    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"nope": "x"}), encoding="utf-8")
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"inputs": {"question": "q"}, "outputs": {"answer": "a"}})
                     + "\n", encoding="utf-8")
    res = CliRunner().invoke(app, ["optimize", "Q: {question}", "--data", str(train),
                                   "--model", "local", "--evaluator", "exact_match",
                                   "--meta-prompts", str(meta)])
    assert res.exit_code == 2 and "--meta-prompts" in res.stderr


# --- the README ------------------------------------------------------------------------


def test_readme_knob_table_is_generated_from_the_context() -> None:
    from langchain_gradsum._knobs import knob_table, readme_with_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert knob_table() in readme, "README.md's knob table is stale: run " \
                                   "`make docs`"
    assert readme_with_table(readme) == readme
    for name in KNOBS:
        assert f"| `{name}` |" in knob_table()
