"""The ``gradsum`` command line: optimize, report, progress and errors (no network)."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from gradsum_fakes import arithmetic
from rich.console import Console
from typer.testing import CliRunner

from langchain_gradsum import cli, local_llm
from langchain_gradsum.cli import ProgressView, app
from langchain_gradsum.testing import ScriptedChatModel

runner = CliRunner()


respond = arithmetic(instruction_is_good=True)


@pytest.fixture
def fake_local(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """`--model local` without a server: the embedded server and client are faked."""
    state: dict[str, Any] = {"started": 0, "stopped": 0, "models": []}

    @contextlib.contextmanager
    def running_local_llm(port: int | None = None):
        state["started"] += 1
        try:
            yield "http://127.0.0.1:1/v1"
        finally:
            state["stopped"] += 1

    def local_chat_model(base_url: str | None = None, **kwargs: Any) -> ScriptedChatModel:
        assert base_url == "http://127.0.0.1:1/v1"
        model = ScriptedChatModel(respond=respond)
        state["models"].append(model)
        return model

    monkeypatch.setattr(local_llm, "running_local_llm", running_local_llm)
    monkeypatch.setattr(local_llm, "local_chat_model", local_chat_model)
    monkeypatch.delenv("LANGSMITH_TRACING", raising=False)
    monkeypatch.delenv("LANGCHAIN_TRACING_V2", raising=False)
    return state


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    train = tmp_path / "train.jsonl"
    val = tmp_path / "val.jsonl"
    train.write_text("".join(
        json.dumps({"inputs": {"question": f"2+2 (#{i})"}, "outputs": {"answer": "4"}}) + "\n"
        for i in range(6)), encoding="utf-8")
    val.write_text("".join(
        json.dumps({"inputs": {"question": f"1+3 (v{i})"}, "outputs": {"answer": "4"}}) + "\n"
        for i in range(3)), encoding="utf-8")
    return {"train": train, "val": val}


def base_args(data: dict[str, Path]) -> list[str]:
    return ["optimize", "Answer: {question}", "--data", str(data["train"]),
            "--val", str(data["val"]), "--model", "local", "--evaluator", "numeric_match",
            "--criteria", "The answer is correct.", "--task", "arithmetic",
            "--beam-width", "2", "--max-iterations", "2", "--minibatch-size", "3",
            "--max-concurrency", "1"]


def test_optimize_writes_result_and_report(fake_local: dict[str, Any],
                                           data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = runner.invoke(app, [*base_args(data), "--out", str(out), "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert fake_local["started"] == fake_local["stopped"] == 1  # one server, stopped
    assert len(fake_local["models"]) == 1  # every role shares the one local model
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert result["best_template"] == "Think step by step, then answer: {question}"
    assert result["split"] == "val" and result["best_score"] == 1.0
    assert result["total_calls"] == len(fake_local["models"][0].calls)
    assert result["run"]["settings"]["beam_width"] == 2
    assert result["run"]["settings"]["seed"] == 3
    assert result["run"]["settings"]["evaluators"] == ["numeric_match"]
    assert result["run"]["models"] == {"model": "local"}
    assert len(result["run"]["examples"]["val"]) == 3
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "Think step by step" in page
    # Not a terminal: plain log lines with the progress, then the summary.
    assert "[gradsum] iteration 0/2" in res.output
    assert re.search(r"\[gradsum\]   c\d scored \d\.\d{3}", res.output)
    assert "[gradsum] best c" in res.output
    cmp = result["comparison"]  # the best prompt against the initial one, row by row
    assert cmp["rows"] == 3 and cmp["won"] + cmp["lost"] <= 3
    assert f"; {cmp['won']} rows won, {cmp['lost']} lost, p = " in res.output
    assert "--- best prompt ---\nThink step by step, then answer: {question}\n" in res.output
    assert f"wrote {out / 'report.html'}" in res.output


def test_every_knob_flag_reaches_the_optimizer(fake_local: dict[str, Any],
                                               data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = runner.invoke(app, [*base_args(data), "--out", str(out), "--quiet",
                              "--max-gradients-per-prompt", "1", "--max-retries", "0",
                              "--no-repair", "--allow-copied-examples", "--no-summarize",
                              "--no-edit-retry", "--screen-size", "0",
                              "--no-instruction-edits", "--no-prefer-short",
                              "--no-form-progress"])
    assert res.exit_code == 0, res.output
    settings = json.loads((out / "result.json").read_text(encoding="utf-8"))["run"]["settings"]
    assert settings["max_gradients_per_prompt"] == 1 and settings["max_retries"] == 0
    assert settings["repair_missing_variables"] is False
    assert settings["reject_copied_examples"] is False and settings["summarize"] is False
    assert settings["retry_unusable_edits"] is False
    assert settings["screen_size"] == 0 and settings["instruction_edits"] is False
    assert settings["prefer_short_outputs"] is False and settings["form_progress"] is False


def test_prompt_from_file_and_quiet(fake_local: dict[str, Any], data: dict[str, Path],
                                    tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Answer: {question}\n", encoding="utf-8")
    args = base_args(data)
    args[1] = f"@{prompt}"
    res = runner.invoke(app, [*args, "--quiet"])
    assert res.exit_code == 0, res.output
    assert "[gradsum]" not in res.output
    assert "--- best prompt ---" in res.output


def test_budget_is_shown_and_kept(fake_local: dict[str, Any], data: dict[str, Path]) -> None:
    res = runner.invoke(app, [*base_args(data), "--max-llm-calls", "60"])
    assert res.exit_code == 0, res.output
    assert "/60" in res.output
    calls = [int(n) for n in re.findall(r"calls (\d+)/60", res.output)]
    assert calls and max(calls) <= 60
    assert len(fake_local["models"][0].calls) <= 60


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--data": "missing.jsonl"}, "no such file"),
        ({"--beam-width": "0"}, "beam_width must be >= 1"),
        ({"--target-score": "1.5"}, "target_score must be in (0, 1]"),
        ({"prompt": "Answer: {nope}"}, "has no 'nope' in its inputs"),
        ({"prompt": "@nowhere.txt"}, "prompt: no such file"),
        ({"--max-llm-calls": "3"}, "max_llm_calls=3 is too small"),
    ],
)
def test_bad_input_is_one_error_line(fake_local: dict[str, Any], data: dict[str, Path],
                                     change: dict[str, str], message: str) -> None:
    args = base_args(data)
    for key, value in change.items():
        if key == "prompt":
            args[1] = value
        elif key in args:
            args[args.index(key) + 1] = value
        else:
            args += [key, value]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert message in lines[0]
    assert "Traceback" not in res.output


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--beam-width", "0", "beam_width must be >= 1"),
     ("--minibatch-size", "0", "minibatch_size must be >= 1"),
     ("prompt", "Answer: {question", "not a valid template"),
     ("prompt", "Answer", "the prompt has no {variables}"),
     ("--val", "missing.jsonl", "--val: no such file")],
)
def test_bad_input_fails_before_the_local_server_starts(
    fake_local: dict[str, Any], data: dict[str, Path], option: str, value: str, message: str
) -> None:
    args = base_args(data)
    args[1 if option == "prompt" else args.index(option) + 1] = value
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert message in res.stderr
    assert fake_local["started"] == 0


def test_no_scorer_is_an_error(fake_local: dict[str, Any], data: dict[str, Path]) -> None:
    res = runner.invoke(app, ["optimize", "Answer: {question}", "--data", str(data["train"]),
                              "--model", "local"])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: give `criteria`")


def test_unknown_evaluator_is_rejected(fake_local: dict[str, Any],
                                       data: dict[str, Path]) -> None:
    res = runner.invoke(app, [*base_args(data), "--evaluator", "bleu"])
    assert res.exit_code == 2
    assert "bleu" in res.output + res.stderr


def test_report_command(fake_local: dict[str, Any], data: dict[str, Path],
                        tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert runner.invoke(app, [*base_args(data), "--out", str(out), "-q"]).exit_code == 0
    (out / "report.html").unlink()
    res = runner.invoke(app, ["report", str(out / "result.json")])
    assert res.exit_code == 0, res.output
    assert (out / "report.html").is_file()
    target = tmp_path / "elsewhere" / "r.html"
    res = runner.invoke(app, ["report", str(out / "result.json"), "-o", str(target),
                              "--title", "My <run>"])
    assert res.exit_code == 0, res.output
    assert "<title>My &lt;run&gt;</title>" in target.read_text(encoding="utf-8")


@pytest.mark.parametrize("content", [None, "not json", json.dumps({"foo": 1})])
def test_report_bad_input(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "result.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    res = runner.invoke(app, ["report", str(path)])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1


def test_help_is_complete() -> None:
    res = runner.invoke(app, ["optimize", "--help"])
    assert res.exit_code == 0
    for flag in ("--data", "--val", "--task", "--criteria", "--evaluator", "--model",
                 "--judge-model", "--optimizer-model", "--beam-width",
                 "--candidates-per-prompt", "--max-iterations", "--minibatch-size",
                 "--patience", "--target-score", "--max-llm-calls", "--max-concurrency",
                 "--no-summarize", "--seed", "--out", "--max-gradients-per-prompt",
                 "--max-retries", "--no-repair", "--allow-copied-examples", "--no-edit-retry",
                 "--screen-size", "--no-instruction-edits", "--no-prefer-short",
                 "--no-form-progress", "numeric_match",
                 "exact_match", "contains_answer", "choice_match", "@FILE", "local"):
        assert flag in res.output, flag
    res = runner.invoke(app, ["report", "--help"])
    assert res.exit_code == 0 and "--output" in res.output
    res = runner.invoke(app, ["--help"])
    assert "optimize" in res.output and "report" in res.output


def test_console_script_entry_point() -> None:
    """`python -m langchain_gradsum.cli` (what the `gradsum` script runs) works."""
    proc = subprocess.run([sys.executable, "-m", "langchain_gradsum.cli", "--version"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("gradsum ")


def test_live_progress_on_a_terminal() -> None:
    """On a terminal the status line shows iteration, scored, best and calls/budget."""
    console = Console(force_terminal=True, width=160, record=True, color_system=None)
    view = ProgressView(console, max_iterations=3, budget=100)
    assert view.live
    with view:
        view({"event": "iteration", "iteration": 1, "beam": ["c0", "c1"], "calls": 9})
        view({"event": "scored", "iteration": 1, "candidate": "c1", "score": 0.75, "calls": 19})
        status = view._status()
        assert status == "iteration 1/3 · scored 1 · best 0.750 (c1) · calls 19/100"
        view({"event": "best", "candidate": "c1", "score": 0.8, "calls": 40})
        view.finish(44)
    text = console.export_text()
    assert "best 0.750 (c1)" in text and "calls 44/100" in text


def test_plain_progress_lines() -> None:
    console = Console(force_terminal=False, width=200, record=True)
    view = ProgressView(console, max_iterations=2, budget=None)
    assert not view.live
    with view:
        for ev in ({"event": "iteration", "iteration": 0, "beam": ["c0"], "calls": 0},
                   {"event": "scored", "iteration": 0, "candidate": "c0", "score": 0.5,
                    "calls": 4},
                   {"event": "candidate", "candidate": "c1", "parent": "c0", "iteration": 1,
                    "calls": 7},
                   {"event": "rejected", "parent": "c0", "why": "missing {question}",
                    "calls": 7},
                   {"event": "finalize", "split": "val", "finalists": ["c1", "c0"],
                    "stop_reason": "max_iterations", "calls": 20},
                   {"event": "validated", "candidate": "c0", "split": "val", "score": 0.25,
                    "calls": 23},
                   {"event": "best", "candidate": "c1", "score": 1.0, "calls": 26}):
            view(ev)
    lines = console.export_text().splitlines()
    assert lines == [
        "[gradsum] iteration 0/2 · beam c0 · calls 0",
        "[gradsum]   c0 scored 0.500 (minibatch, iteration 0) · new best",
        "[gradsum]   c1 written from c0",
        "[gradsum]   rejected an edit of c0: missing {question}",
        "[gradsum] stopped (max_iterations); scoring c1, c0 on val",
        "[gradsum]   c0 scored 0.250 on val",
        "[gradsum] best c1: 1.000",
    ]


def test_optimization_failure_exits_1_and_keeps_partial(
    monkeypatch: pytest.MonkeyPatch, data: dict[str, Path], tmp_path: Path
) -> None:
    calls = {"n": 0}

    def flaky(text: str, role: str) -> Any:
        if role == "edit":
            return ValueError("the editor broke")
        return respond(text, role)

    @contextlib.contextmanager
    def running(port: int | None = None):
        yield "http://127.0.0.1:1/v1"

    def model(base_url: str | None = None, **kwargs: Any) -> ScriptedChatModel:
        calls["n"] += 1
        return ScriptedChatModel(respond=flaky)

    monkeypatch.setattr(local_llm, "running_local_llm", running)
    monkeypatch.setattr(local_llm, "local_chat_model", model)
    out = tmp_path / "run"
    res = runner.invoke(app, [*base_args(data), "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert res.stderr.startswith("error: optimization failed")
    assert len(res.stderr.strip().splitlines()) == 1
    partial = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert partial["stop_reason"] == "error" and "c0" in partial["candidates"]
    assert (out / "report.html").is_file()


def test_main_is_the_script_entry() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0


def test_checkpoint_flag_returns_a_finished_run_without_calls(
        fake_local: dict[str, Any], data: dict[str, Path], tmp_path: Path) -> None:
    args = [*base_args(data), "--checkpoint", str(tmp_path / "run.sqlite")]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert len(fake_local["models"][0].calls) > 0
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert len(fake_local["models"][-1].calls) == 0  # the saved run is returned
    best = "--- best prompt ---\nThink step by step, then answer: {question}\n"
    assert best in first.output and best in again.output


def test_stop_file_flag_stops_before_any_edit(
        fake_local: dict[str, Any], data: dict[str, Path], tmp_path: Path) -> None:
    stop = tmp_path / "STOP"
    stop.touch()
    res = runner.invoke(app, [*base_args(data), "--stop-file", str(stop)])
    assert res.exit_code == 0, res.output
    roles = fake_local["models"][0].calls_by_role()
    assert "edit" not in roles and roles.get("generate", 0) > 0
    assert "stop_file" in res.output


def test_the_summary_prints_the_results_warnings() -> None:
    from langchain_gradsum.result import OptimizationResult

    result = OptimizationResult(
        best_prompt="Q: {q}", best_template="Q: {q}", best_id="c1", best_score=0.6,
        initial_score=0.0, split="val", stop_reason="budget", iterations=1, candidates={},
        usage={}, counters={}, wall_time_s=1.0, warnings=["the best prompt gives 'no'"])
    console = Console(record=True, width=200)
    cli._print_summary(console, result, [])
    out = console.export_text()
    assert "warning: the best prompt gives 'no'" in out
    assert out.index("warning:") < out.index("--- best prompt ---")
