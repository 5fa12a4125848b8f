"""Nothing lost: checkpoint/resume after SIGKILL, the call cache, graceful stop, faults."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from langchain_gradsum import GradSumOptimizer, numeric_match
from langchain_gradsum.testing import ScriptedChatModel

WORKER = Path(__file__).parent / "workers" / "resume_worker.py"


def _run_worker(tmp: Path, name: str, kill_at: int | None = None) -> subprocess.CompletedProcess:
    args = [sys.executable, str(WORKER), str(tmp / f"{name}.sqlite"), str(tmp / f"{name}.log"),
            str(tmp / f"{name}.json")]
    if kill_at is not None:
        args.append(str(kill_at))
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def _log(tmp: Path, name: str) -> list[Any]:
    path = tmp / f"{name}.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list]:
    tmp = tmp_path_factory.mktemp("full")
    proc = _run_worker(tmp, "full")
    assert proc.returncode == 0, proc.stderr
    return json.loads((tmp / "full.json").read_text()), _log(tmp, "full")


@pytest.mark.parametrize("kill_at", [1, 5, 12, 20, 27])
def test_sigkill_then_resume_repeats_no_finished_call(
    tmp_path: Path, uninterrupted: tuple[dict, list], kill_at: int
) -> None:
    full_result, full_calls = uninterrupted
    assert kill_at < len(full_calls)  # the kill really lands mid-run

    killed = _run_worker(tmp_path, "run", kill_at=kill_at)
    assert killed.returncode == -9
    assert len(_log(tmp_path, "run")) == kill_at
    assert not (tmp_path / "run.json").exists()

    resumed = _run_worker(tmp_path, "run")
    assert resumed.returncode == 0, resumed.stderr
    calls = _log(tmp_path, "run")
    # Every call finished before the kill is never made again...
    assert len(calls) == len({json.dumps(c) for c in calls})
    # ...and together the two processes made exactly the uninterrupted run's calls.
    assert sorted(map(json.dumps, calls)) == sorted(map(json.dumps, full_calls))
    result = json.loads((tmp_path / "run.json").read_text())
    # The same result, usage included; only the counters of what the cache
    # answered differ. Calls of the step that died are counted once, on resume.
    resumed_calls = result["counters"].pop("resumed_calls", 0)
    assert resumed_calls <= kill_at
    assert "resumed_calls" not in full_result["counters"]
    for r in (result, full_result):
        r["counters"].pop("cache_hits", None)
    assert result == full_result


def test_finished_run_called_again_makes_no_call(tmp_path: Path) -> None:
    assert _run_worker(tmp_path, "run").returncode == 0
    first = json.loads((tmp_path / "run.json").read_text())
    n = len(_log(tmp_path, "run"))
    assert _run_worker(tmp_path, "run").returncode == 0
    assert len(_log(tmp_path, "run")) == n
    assert json.loads((tmp_path / "run.json").read_text())["best_template"] == first[
        "best_template"]


def _respond(text: str, role: str) -> Any:
    if role == "generate":
        return "so 4" if "step" in text else "5"
    if role == "judge":
        return {"reasoning": "checked", "score": 1.0 if "so 4" in text else 0.0}
    if role == "gradient":
        return "Ask for steps."
    if role == "summarize":
        return "Ask for step-by-step work."
    return "<prompt>Work step by step. {question}</prompt>"


ROWS = [{"inputs": {"question": f"2+2, case {i}"}, "outputs": {"answer": "4"}} for i in range(6)]


def _optimizer(model: Any, **kw: Any) -> GradSumOptimizer:
    settings: dict[str, Any] = dict(criteria="right number", evaluators=[numeric_match],
                                    beam_width=2, max_iterations=2, minibatch_size=3,
                                    retry_backoff=0)
    settings.update(kw)
    return GradSumOptimizer(model, **settings)


def test_cached_rerun_makes_zero_model_calls(tmp_path: Path) -> None:
    first_model = ScriptedChatModel(respond=_respond)
    first = _optimizer(first_model).optimize("Q: {question}", ROWS, ROWS[:3],
                                             cache=tmp_path / "calls.sqlite")
    assert len(first_model.calls) == first.total_calls > 0

    again_model = ScriptedChatModel(respond=_respond)
    again = _optimizer(again_model).optimize("Q: {question}", ROWS, ROWS[:3],
                                             cache=tmp_path / "calls.sqlite")
    assert again_model.calls == []
    assert again.total_calls == 0
    assert again.best_template == first.best_template
    assert again.best_score == first.best_score
    assert again.counters["cache_hits"] > 0


def test_stop_file_ends_at_next_safe_point_with_validated_best(tmp_path: Path) -> None:
    stop = tmp_path / "STOP"

    def respond(text: str, role: str) -> Any:
        if role == "summarize":
            stop.touch()  # the user asks to stop while the first iteration runs
        return _respond(text, role)

    model = ScriptedChatModel(respond=respond)
    result = _optimizer(model, max_iterations=5).optimize("Q: {question}", ROWS, ROWS[:3],
                                                          stop_file=stop)
    assert result.stop_reason == "stop_file"
    assert result.iterations == 0  # no edit was made after the stop
    assert result.best_score is not None and result.split == "val"
    assert "edit" not in model.calls_by_role()


def _press_ctrl_c() -> None:
    """Send SIGINT to the main thread, as a terminal does, and give its handler time to run.

    Aimed at the main thread so its wait is interrupted at once (a signal the kernel
    hands to a worker thread is only seen at the main thread's next 0.1 s poll), and
    spaced well beyond that poll so two presses are never merged into one.
    """
    import signal
    import threading
    import time

    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
    time.sleep(0.3)


def test_ctrl_c_stops_at_the_next_safe_point_with_the_validated_best() -> None:
    import signal

    def respond(text: str, role: str) -> Any:
        if role == "summarize":
            _press_ctrl_c()  # the user presses Ctrl-C once
        return _respond(text, role)

    model = ScriptedChatModel(respond=respond)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when run in a background job
    result = _optimizer(model, max_iterations=5).optimize("Q: {question}", ROWS, ROWS[:3])
    assert result.stop_reason == "interrupted"
    assert result.iterations == 0 and "edit" not in model.calls_by_role()
    assert result.best_id == "c0" and result.split == "val" and result.best_score is not None
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


def test_a_second_ctrl_c_stops_at_once_and_keeps_what_was_done() -> None:
    import time

    def respond(text: str, role: str) -> Any:
        if role == "summarize":
            for _ in range(2):  # Ctrl-C twice
                _press_ctrl_c()
        return _respond(text, role)

    model = ScriptedChatModel(respond=respond)
    result = _optimizer(model, max_iterations=5).optimize("Q: {question}", ROWS, ROWS[:3])
    # returned during the summary call, with the best minibatch candidate so far
    assert result.stop_reason == "interrupted" and result.split == "minibatch"
    assert result.best_id == "c0" and result.best_score is not None
    time.sleep(1.0)  # the call in flight finishes; no new step starts behind our back
    # every call is accounted, the one in flight at the second Ctrl-C included
    assert result.total_calls == len(model.calls) > 0
    assert set(model.calls_by_role()) == {"generate", "judge", "gradient", "summarize"}


class _Flaky:
    """Fails ~20 % of calls with a timeout, a 429, a 500 or malformed judge JSON."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.injected: dict[str, int] = {}

    def __call__(self, text: str, role: str) -> Any:
        if self.rng.random() < 0.2:
            kind = self.rng.choice(["timeout", "429", "500", "json"])
            if kind == "json" and role != "judge":
                kind = "timeout"
            self.injected[kind] = self.injected.get(kind, 0) + 1
            if kind == "timeout":
                return TimeoutError("injected timeout")
            if kind == "json":
                return {"reasoning": "no score field"}
            err = RuntimeError(f"injected HTTP {kind}")
            err.status_code = int(kind)  # type: ignore[attr-defined]
            return err
        return _respond(text, role)


@pytest.mark.parametrize("seed", range(5))
def test_faults_at_twenty_percent_complete_and_are_counted(seed: int) -> None:
    flaky = _Flaky(seed)
    model = ScriptedChatModel(respond=flaky)
    budget = 120
    result = _optimizer(model, max_retries=3, max_llm_calls=budget).optimize(
        "Q: {question}", ROWS, ROWS[:3])
    assert result.best_score is not None
    assert len(model.calls) == result.total_calls <= budget  # retries count, cap holds
    transient = flaky.injected.get("timeout", 0) + flaky.injected.get("429", 0) + \
        flaky.injected.get("500", 0)
    assert result.counters.get("transient_errors", 0) == transient
    assert result.counters.get("judge_parse_failures", 0) == flaky.injected.get("json", 0)


class _KeyedModel(ScriptedChatModel):
    """A scripted model holding an API key, like a hosted model would."""

    api_key: SecretStr = SecretStr("")


def test_no_api_key_in_checkpoint_cache_or_result(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    planted = "sk-PLANTED-gradsum-7f3a9c"
    monkeypatch.setenv("OPENAI_API_KEY", planted)
    model = _KeyedModel(respond=_respond, api_key=SecretStr(planted))
    result = _optimizer(model).optimize("Q: {question}", ROWS, ROWS[:3],
                                        checkpoint=tmp_path / "run.sqlite")
    result.save(tmp_path / "result.json")
    files = list(tmp_path.iterdir())
    assert any(f.name.startswith("run.sqlite") for f in files)
    for f in files:
        assert planted.encode() not in f.read_bytes(), f.name


def test_the_worker_thread_stream_hands_over_items_and_errors() -> None:
    from langchain_gradsum._interrupt import _in_worker_thread

    def fails_at_once() -> Any:
        raise ValueError("at once")

    def fails_later() -> Any:
        yield 1
        yield 2
        raise KeyError("later")

    with pytest.raises(ValueError, match="at once"):
        list(_in_worker_thread(fails_at_once))
    got: list[int] = []
    with pytest.raises(KeyError, match="later"):
        for item in _in_worker_thread(fails_later):
            got.append(item)
    assert got == [1, 2]
