"""Fault injection through a real OpenAI client: a loopback OpenAI-compatible server
counts every request and injects 429s, 500s, timeouts, dropped connections, bodies that
are not JSON and empty replies. The cap holds for the requests the server sees, every
fault is counted, one bad reply never ends a run, nothing starts after `optimize()`
returns, and no secret echoed in an error reaches a file."""

from __future__ import annotations

import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from fake_openai_server import FakeOpenAIServer, random_faults
from gradsum_fakes import GOOD, Script, optimizer, qa_rows, scripted
from langchain_openai import ChatOpenAI

from langchain_gradsum import OptimizationError, _llm
from langchain_gradsum._llm import resolve_model

PROMPT = "Q: {question}"
PLANTED = "sk-PLANTEDsecret0123456789abcdef"


def _chat(server: FakeOpenAIServer, **kw: Any) -> ChatOpenAI:
    """A ChatOpenAI client of the fake server, with the SDK's default retries (2)."""
    return ChatOpenAI(base_url=server.base_url, api_key="sk-test-not-a-key", model="fake",
                      **kw)


def _settle(server: FakeOpenAIServer) -> None:
    """Give requests a timed-out client left behind time to be counted."""
    time.sleep(0.05)


def _fault_run(model: Any, server: FakeOpenAIServer, cap: int) -> Any:
    return optimizer(model, criteria="Say B.", beam_width=2, candidates_per_prompt=2,
                     max_iterations=3, minibatch_size=2, max_retries=3, max_llm_calls=cap,
                     ).optimize(PROMPT, qa_rows(4), qa_rows(2, "v"))


def _assert_every_request_counted(result: Any, server: FakeOpenAIServer, cap: int) -> None:
    _settle(server)
    assert server.requests <= cap
    assert server.requests == result.total_calls  # no request the optimizer did not count
    assert sum(server.faults.values()) > 0
    assert result.counters.get("transient_errors", 0) == sum(server.faults.values())
    malformed = server.faults["malformed"] + server.faults["empty"]
    assert result.counters.get("malformed_replies", 0) == malformed
    assert result.best_score is not None


@pytest.mark.parametrize("seed", range(2))
def test_the_cap_holds_through_chatopenai_with_its_default_retries(seed: int) -> None:
    server = FakeOpenAIServer(Script(), random_faults(0.2, seed=seed), hold_s=1.2)
    with server.serving():
        cap = 40
        result = _fault_run(_chat(server, timeout=0.8), server, cap)
        _assert_every_request_counted(result, server, cap)


@pytest.mark.parametrize("seed", range(2))
def test_the_cap_holds_through_a_provider_model_string(seed: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    kinds = ("429", "500", "drop", "malformed", "empty", "timeout")
    server = FakeOpenAIServer(Script(), random_faults(0.2, kinds, seed=10 + seed), hold_s=0.2)
    with server.serving():
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-key")
        cap = 40
        # the server closes a held ("timeout") request after 0.2 s: the client, which
        # waits 600 s by default, sees a dropped connection
        result = _fault_run("openai:gpt-fake", server, cap)
        _assert_every_request_counted(result, server, cap)


def test_resolve_model_turns_off_the_sdk_retries_of_a_copy() -> None:
    model = ChatOpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test", model="fake")
    assert model.root_client.max_retries == 2  # the SDK's default
    resolved = resolve_model(model)
    assert resolved is not model and resolved.max_retries == 0
    assert resolved.root_client.max_retries == 0
    assert resolved.root_async_client.max_retries == 0
    assert resolved.client._client is resolved.root_client
    assert resolved.async_client._client is resolved.root_async_client
    assert model.root_client.max_retries == 2  # the caller's model is left alone
    assert resolve_model(resolved) is resolved  # already without retries: kept
    assert resolve_model(model) is resolve_model(model)  # one copy per model


def test_a_model_whose_retries_cannot_be_reached_is_warned_about() -> None:
    class Client:
        max_retries = 5

    class Retrying(type(scripted())):  # type: ignore[misc]
        sdk: Any = None

    with pytest.warns(UserWarning, match="retries could not be turned off"):
        resolve_model(Retrying(respond=Script(), sdk=Client()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_model(scripted())  # nothing to turn off: no warning


# --- malformed and empty replies --------------------------------------------------------


def _only(kind: str, role: str, times: int | None = None) -> Any:
    """A fault plan: `kind` for the requests of `role` (the first `times` of them)."""
    seen = {"n": 0}
    lock = threading.Lock()

    def plan(n: int, r: str) -> str | None:
        if r != role:
            return None
        with lock:
            seen["n"] += 1
            return kind if times is None or seen["n"] <= times else None

    return plan


@pytest.mark.parametrize("kind", ["malformed", "empty"])
def test_a_bad_reply_is_retried_and_counted(kind: str) -> None:
    server = FakeOpenAIServer(Script(), _only(kind, "summarize", times=1))
    with server.serving():
        result = optimizer(_chat(server), beam_width=1, candidates_per_prompt=1).optimize(
            PROMPT, qa_rows(2))
    assert server.faults[kind] == 1
    assert result.counters["malformed_replies"] == 1
    assert result.counters["transient_errors"] == 1 and result.counters["retries"] == 1
    assert "failed_calls" not in result.counters
    assert result.best_score == 1.0  # the retried summary led to the better prompt
    assert server.requests == result.total_calls


@pytest.mark.parametrize("kind", ["malformed", "empty"])
def test_a_reply_that_stays_bad_costs_only_its_candidate(kind: str) -> None:
    """Every summary call gets a bad reply: the run goes on without that candidate's
    children and returns (before, the step's one failed call ended the run)."""
    server = FakeOpenAIServer(Script(), _only(kind, "summarize"))
    with server.serving():
        result = optimizer(_chat(server), beam_width=1, candidates_per_prompt=1,
                           max_retries=2).optimize(PROMPT, qa_rows(2))
    assert server.faults[kind] == 3  # one try and two retries
    assert result.counters["malformed_replies"] == 3
    assert result.counters["failed_calls"] == 1
    assert set(result.candidates) == {"c0"} and result.best_id == "c0"
    assert server.requests == result.total_calls


def test_every_generate_call_failing_transiently_costs_rows_not_the_run() -> None:
    server = FakeOpenAIServer(Script(), _only("500", "generate"))
    with server.serving():
        result = optimizer(_chat(server), max_retries=1, max_iterations=0).optimize(
            PROMPT, qa_rows(2))
    assert result.counters["failed_calls"] == 2 and result.best_score == 0.0
    assert all("Error code: 500" in r["error"] for r in result.records.values())
    assert server.requests == result.total_calls == 4


def test_a_partial_result_counts_the_calls_of_the_step_that_failed() -> None:
    """A non-transient error in every call of a step still ends the run, and the
    partial result counts that step's calls too."""
    model = scripted(gradient=lambda text: ValueError("bad request: no such model"))
    with pytest.raises(OptimizationError, match="no such model") as info:
        optimizer(model).optimize(PROMPT, qa_rows(2))
    partial = info.value.partial_result
    assert partial is not None
    assert partial.total_calls == len(model.calls) == 4  # 2 generate + 2 gradient
    assert partial.usage["gradient"]["calls"] == 2
    assert partial.counters["gradient_errors"] == 2


def test_a_run_that_fails_in_its_first_step_still_has_a_partial_result() -> None:
    model = scripted(generate=lambda text: ValueError("Error code: 401 - invalid key"))
    with pytest.raises(OptimizationError, match="401") as info:
        optimizer(model).optimize(PROMPT, qa_rows(2))
    partial = info.value.partial_result
    assert partial is not None and partial.best_id == "c0" and partial.best_score is None
    assert partial.best_template == PROMPT
    assert partial.total_calls == len(model.calls) == 2


# --- a second Ctrl-C --------------------------------------------------------------------


def _press_ctrl_c() -> None:
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
    time.sleep(0.3)


def test_no_call_starts_after_a_second_ctrl_c_returns() -> None:
    starts: list[tuple[float, str]] = []
    base = Script()

    def respond(text: str, role: str) -> Any:
        starts.append((time.monotonic(), role))
        if role == "generate" and GOOD in text and not any(
                GOOD in t for t in pressed):
            pressed.append(text)
            _press_ctrl_c()  # twice, during the first call of iteration 1
            _press_ctrl_c()
        return base(text, role)

    pressed: list[str] = []
    model = scripted(respond)
    result = optimizer(model, max_iterations=3, minibatch_size=6, beam_width=2,
                       max_concurrency=1).optimize(PROMPT, qa_rows(6))
    returned = time.monotonic()
    time.sleep(0.8)  # anything left behind would start now
    assert result.stop_reason == "interrupted" and pressed
    late = [role for t, role in starts if t > returned]
    assert late == []
    assert result.total_calls == len(starts)  # the call in flight is counted


def test_a_second_ctrl_c_in_the_first_step_returns_the_initial_prompt() -> None:
    starts: list[float] = []

    def respond(text: str, role: str) -> Any:
        starts.append(time.monotonic())
        if len(starts) == 1:
            _press_ctrl_c()
            _press_ctrl_c()
        return "A"

    result = optimizer(scripted(respond), minibatch_size=4, max_concurrency=1).optimize(
        PROMPT, qa_rows(4))
    returned = time.monotonic()
    time.sleep(0.5)
    assert result is not None and result.stop_reason == "interrupted"
    assert result.best_id == "c0" and result.best_score is None
    assert result.total_calls == len(starts) == 1 and starts[0] < returned


# --- secrets in error texts -------------------------------------------------------------


def test_a_key_echoed_in_an_error_body_is_redacted_everywhere(tmp_path: Path) -> None:
    from langchain_gradsum.report import write_report

    class Echo(FakeOpenAIServer):
        def _fault(self, handler: Any, kind: str) -> None:
            self._send(handler, 502, {"error": {"message": (
                f"upstream refused: headers {{'Authorization': 'Bearer {PLANTED}', "
                f"'api-key': 'azure0123456789abcdef0123456789ab'}} key={PLANTED}")}})

    server = Echo(Script(), _only("echo", "generate", times=1))
    with server.serving():
        result = optimizer(_chat(server, max_retries=0), max_retries=0, max_iterations=0,
                           minibatch_size=2).optimize(PROMPT, qa_rows(3), qa_rows(1, "v"),
                                                      checkpoint=tmp_path / "run.sqlite")
    errors = [r["error"] for r in result.records.values() if "error" in r]
    assert len(errors) == 1 and "[REDACTED]" in errors[0]
    result.save(tmp_path / "result.json")
    write_report(result.to_dict(), tmp_path / "report.html")
    for f in tmp_path.iterdir():
        data = f.read_bytes()
        assert PLANTED.encode() not in data, f.name
        assert b"azure0123456789abcdef" not in data, f.name


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f"Error code: 401 - Incorrect API key provided: {PLANTED}.", "Incorrect API key"),
        (f"Authorization: Bearer {PLANTED}", "Authorization: Bearer"),
        ("{'authorization': 'Basic dXNlcjpwYXNzd29yZA=='}", "authorization"),
        ('{"api-key": "0123456789abcdef0123456789abcdef"}', '"api-key"'),
        ("x-api-key=sk-ant-api03-abcdefghijklmnop&model=x", "model=x"),
        ("GET https://host/v1?key=AIzaSyA-1234567890abcdefghijklmnopqrstu", "https://host"),
        ("token gsk_abcdefghijklmnopqrstuvwxyz012345 expired", "expired"),
    ],
)
def test_redact_removes_secret_shapes(text: str, kept: str) -> None:
    out = _llm.redact(text)
    assert "[REDACTED]" in out and kept in out
    for secret in (PLANTED, "dXNlcjpwYXNzd29yZA", "0123456789abcdef0123", "api03-abc",
                   "AIzaSyA-123", "gsk_abc"):
        assert secret not in out


def test_redact_leaves_ordinary_error_texts_alone() -> None:
    for text in ("RateLimited: still limited", "Error code: 500 - server error",
                 "max_tokens: 512, prompt_tokens=12", "the task-model reply was empty"):
        assert _llm.redact(text) == text
