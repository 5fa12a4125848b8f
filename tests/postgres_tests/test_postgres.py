"""``checkpoint="postgresql://..."``: a run persisted in a real PostgreSQL server survives
SIGKILL and is resumed by another process; runs with different thread ids share the
database (checkpoints and call cache) without interfering.

The optimizations are scripted (`ScriptedChatModel`, no LLM): what is tested is the
persistence, as in tests/unit_tests/test_persistence.py for SQLite.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from langchain_gradsum import GradSumOptimizer, numeric_match
from langchain_gradsum.testing import ScriptedChatModel

pytestmark = pytest.mark.postgres

WORKER = Path(__file__).parent / "pg_worker.py"


def _worker(url: str, tmp: Path, name: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), url, str(tmp / f"{name}.log"), str(tmp / f"{name}.json"),
         *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(url: str, tmp: Path, name: str, *extra: str) -> tuple[int, str]:
    proc = _worker(url, tmp, name, *extra)
    _, err = proc.communicate(timeout=180)
    return proc.returncode, err


def _log(tmp: Path, name: str) -> list[Any]:
    path = tmp / f"{name}.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _result(tmp: Path, name: str) -> dict[str, Any]:
    return json.loads((tmp / f"{name}.json").read_text())


def _same_result(resumed: dict[str, Any], full: dict[str, Any], killed_after: int) -> None:
    """Equal, usage included; only the counters of what the cache answered differ."""
    resumed, full = json.loads(json.dumps(resumed)), json.loads(json.dumps(full))
    assert resumed["counters"].pop("resumed_calls", 0) <= killed_after
    assert "resumed_calls" not in full["counters"]
    for r in (resumed, full):
        r["counters"].pop("cache_hits", None)
    assert resumed == full


def _same_calls(calls: list[Any], full_calls: list[Any]) -> None:
    # Every call finished before the kill is never made again...
    assert len(calls) == len({json.dumps(c) for c in calls})
    # ...and together the two processes made exactly the uninterrupted run's calls.
    assert sorted(map(json.dumps, calls)) == sorted(map(json.dumps, full_calls))


@pytest.fixture(scope="module")
def uninterrupted(postgres_url: str, tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, tuple[dict, list]]:
    """Each variant's run, start to end without a kill, each in a database of its own."""
    import psycopg

    tmp = tmp_path_factory.mktemp("pg-full")
    out: dict[str, tuple[dict, list]] = {}
    for variant in ("a", "b"):
        db = f"full_{variant}"
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {db}")
            conn.execute(f"CREATE DATABASE {db}")
        url = postgres_url.rsplit("/", 1)[0] + f"/{db}"
        code, err = _run(url, tmp, variant, "--variant", variant)
        assert code == 0, err
        out[variant] = (_result(tmp, variant), _log(tmp, variant))
    return out


@pytest.mark.parametrize("kill_at", [5, 20])
def test_sigkill_then_resume_in_another_process(fresh_db: str, tmp_path: Path,
                                                uninterrupted: dict, kill_at: int) -> None:
    full_result, full_calls = uninterrupted["a"]
    assert kill_at < len(full_calls)  # the kill really lands mid-run

    code, _ = _run(fresh_db, tmp_path, "run", "--kill-at", str(kill_at))
    assert code == -9
    assert len(_log(tmp_path, "run")) == kill_at
    assert not (tmp_path / "run.json").exists()

    import psycopg

    with psycopg.connect(fresh_db) as conn:  # the steps finished before the kill are there
        saved = conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0]
    assert saved > 0

    code, err = _run(fresh_db, tmp_path, "run")  # a new process, the same call
    assert code == 0, err
    _same_calls(_log(tmp_path, "run"), full_calls)
    result = _result(tmp_path, "run")
    # Resumed from the checkpoint, not replayed from the start: only the calls of the
    # step the kill interrupted are answered from the cache ("resumed_calls").
    assert result["counters"].get("resumed_calls", 0) < kill_at
    _same_result(result, full_result, kill_at)

    # A finished run called again makes no call and returns its result.
    n = len(_log(tmp_path, "run"))
    code, err = _run(fresh_db, tmp_path, "run")
    assert code == 0, err
    assert len(_log(tmp_path, "run")) == n


def test_two_thread_ids_share_the_database_without_interfering(
        fresh_db: str, tmp_path: Path, uninterrupted: dict) -> None:
    """Run A is killed and resumed while run B goes on beside it in the same database."""
    kill_at = 12
    a = _worker(fresh_db, tmp_path, "a", "--thread-id", "run-a", "--kill-at", str(kill_at))
    b = _worker(fresh_db, tmp_path, "b", "--thread-id", "run-b", "--variant", "b")
    _, err_a = a.communicate(timeout=180)
    assert a.returncode == -9, err_a
    a = _worker(fresh_db, tmp_path, "a", "--thread-id", "run-a")  # resumed, B still running
    _, err_a = a.communicate(timeout=180)
    _, err_b = b.communicate(timeout=180)
    assert a.returncode == 0, err_a
    assert b.returncode == 0, err_b

    assert _result(tmp_path, "a")["counters"].get("resumed_calls", 0) < kill_at
    for name, killed in (("a", kill_at), ("b", 0)):
        full_result, full_calls = uninterrupted[name]
        _same_calls(_log(tmp_path, name), full_calls)
        _same_result(_result(tmp_path, name), full_result, killed)

    import psycopg

    with psycopg.connect(fresh_db) as conn:
        threads = {r[0] for r in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}
        cached = conn.execute("SELECT COUNT(*) FROM gradsum_calls").fetchone()[0]
    assert threads == {"run-a", "run-b"}
    # the call cache lives in the same database: one entry per distinct call of A and B
    assert cached == len(uninterrupted["a"][1]) + len(uninterrupted["b"][1])


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


def _optimizer(model: Any) -> GradSumOptimizer:
    return GradSumOptimizer(model, criteria="right number", evaluators=[numeric_match],
                            beam_width=2, max_iterations=1, minibatch_size=3, retry_backoff=0)


def test_the_shared_call_cache_answers_another_workers_identical_run(fresh_db: str) -> None:
    """The same optimization under another thread id (another worker picking the same job)
    is answered from the call cache in the database: 0 LLM calls, the same best prompt."""
    first_model = ScriptedChatModel(respond=_respond)
    first = _optimizer(first_model).optimize("Q: {question}", ROWS, ROWS[:3],
                                             checkpoint=fresh_db, thread_id="job-1")
    assert len(first_model.calls) == first.total_calls > 0

    again_model = ScriptedChatModel(respond=_respond)
    again = _optimizer(again_model).optimize("Q: {question}", ROWS, ROWS[:3],
                                             checkpoint=fresh_db, thread_id="job-2")
    assert again_model.calls == [] and again.total_calls == 0
    assert again.counters["cache_hits"] > 0
    assert (again.best_template, again.best_score) == (first.best_template, first.best_score)


def test_a_checkpointer_instance_with_a_postgres_cache(fresh_db: str) -> None:
    """Any LangGraph checkpointer, as before, here LangGraph's own PostgresSaver; the cache
    given as a URL."""
    from langgraph.checkpoint.postgres import PostgresSaver

    with PostgresSaver.from_conn_string(fresh_db) as saver:
        saver.setup()
        model = ScriptedChatModel(respond=_respond)
        result = _optimizer(model).optimize("Q: {question}", ROWS, ROWS[:3],
                                            checkpoint=saver, cache=fresh_db, thread_id="t")
        assert saver.get_tuple({"configurable": {"thread_id": "t"}}) is not None
    assert result.best_score is not None and len(model.calls) == result.total_calls
    again = ScriptedChatModel(respond=_respond)
    _optimizer(again).optimize("Q: {question}", ROWS, ROWS[:3], cache=fresh_db)
    assert again.calls == []


def test_an_unreachable_database_is_a_clear_error_before_any_call(postgres_url: str) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = ScriptedChatModel(respond=_respond)
    url = f"postgresql://user:hunter2@127.0.0.1:{port}/db"
    with pytest.raises(ValueError, match="could not connect to PostgreSQL") as err:
        _optimizer(model).optimize("Q: {question}", ROWS, checkpoint=url)
    assert "hunter2" not in str(err.value) and "***" in str(err.value)
    assert model.calls == []


def test_the_cli_checkpoints_in_postgres(fresh_db: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib

    from typer.testing import CliRunner

    from langchain_gradsum import local_llm
    from langchain_gradsum.cli import app

    @contextlib.contextmanager
    def running_local_llm(port: int | None = None):
        yield "http://127.0.0.1:1/v1"

    models: list[ScriptedChatModel] = []

    def local_chat_model(*args: Any, **kwargs: Any) -> ScriptedChatModel:
        models.append(ScriptedChatModel(respond=_respond))
        return models[-1]

    monkeypatch.setattr(local_llm, "running_local_llm", running_local_llm)
    monkeypatch.setattr(local_llm, "local_chat_model", local_chat_model)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    args = ["optimize", "Q: {question}", "--data", str(data), "--model", "local",
            "--evaluator", "numeric_match", "--max-iterations", "1", "--minibatch-size", "3",
            "--max-concurrency", "1", "--checkpoint", fresh_db, "--quiet"]
    for _ in range(2):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
    assert models[0].calls and models[1].calls == []  # the second run: resumed, finished
    assert not any(p.name.startswith("postgresql") for p in Path.cwd().iterdir())
