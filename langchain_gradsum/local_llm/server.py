"""The server process: llama-server on loopback with parallel slots, and its HTTP probes."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from langchain_gradsum.local_llm._base import (
    BASE_URL_ENV,
    CTX_PER_SLOT,
    DEFAULT_SLOTS,
    LOOPBACK,
    MODEL_ALIAS,
    SERVER_BINARY_ENV,
    SLOTS_ENV,
    THREADS_ENV,
    LocalLLMError,
    _remove_quietly,
    _tail,
    default_model_path,
)
from langchain_gradsum.local_llm.build import server_binary

__all__ = ["LocalLLMServer", "default_slots", "server_is_ready", "server_slots"]


def default_slots() -> int:
    """Parallel slots of a new local server: ``$GRADSUM_LOCAL_SLOTS``, else :data:`DEFAULT_SLOTS`.

    This is also the number of requests the server works on at once, so it is the
    ``max_concurrency`` that keeps it busy.

    Raises:
        LocalLLMError: If the variable is not a positive integer.
    """
    raw = os.environ.get(SLOTS_ENV, "").strip()
    if not raw:
        return DEFAULT_SLOTS
    try:
        slots = int(raw)
    except ValueError:
        slots = 0
    if slots < 1:
        raise LocalLLMError(f"{SLOTS_ENV}={raw!r} is not a positive integer.")
    return slots


def _free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _http_get(url: str, timeout: float) -> tuple[int, bytes]:
    """GET ``url`` ignoring any proxy settings (the server is on loopback)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), b""


def _server_root(base_url: str) -> str:
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def server_is_ready(base_url: str, timeout: float = 2.0) -> bool:
    """Tell whether the server at ``base_url`` is up and has its model loaded.

    llama-server answers ``GET /health`` with 200 once the model is loaded (503
    while loading). A server without ``/health`` (404, e.g. another OpenAI-compatible
    server) counts as ready if ``GET {base_url}/models`` returns a model list.

    Args:
        base_url: Base URL ending in ``/v1``.
        timeout: Seconds to wait for each answer.

    Returns:
        True if the server is ready for requests.
    """
    try:
        status, _ = _http_get(_server_root(base_url) + "/health", timeout)
        if status != 404:
            return status == 200
        status, body = _http_get(base_url.rstrip("/") + "/models", timeout)
        models = json.loads(body.decode("utf-8")) if status == 200 else None
    except (OSError, ValueError):
        return False
    return isinstance(models, dict) and "data" in models


def server_slots(base_url: str | None = None, timeout: float = 5.0) -> int:
    """The parallel slots of the server at ``base_url`` (``GET /props``), else the default.

    Use it as ``max_concurrency``: more requests in flight than slots only queue.

    Args:
        base_url: Base URL ending in ``/v1``; defaults to ``$GRADSUM_LOCAL_BASE_URL``.
        timeout: Seconds to wait for the answer.

    Returns:
        The server's ``total_slots``, or :func:`default_slots` if it cannot say (no URL,
        no answer, or a server without ``/props``).
    """
    base_url = base_url or os.environ.get(BASE_URL_ENV, "").strip()
    if base_url:
        try:
            status, body = _http_get(_server_root(base_url) + "/props", timeout)
            slots = json.loads(body.decode("utf-8")).get("total_slots") if status == 200 else None
            if isinstance(slots, int) and slots >= 1:
                return slots
        except (OSError, ValueError, AttributeError):
            pass
    return default_slots()


def _prune_logs(log_dir: Path, keep: int = 10) -> None:
    """Delete all but the ``keep`` newest ``server-*.log`` files in ``log_dir``."""
    logs = sorted(log_dir.glob("server-*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    _remove_quietly(*logs[keep:])


class LocalLLMServer:
    """llama.cpp's ``llama-server`` running as a subprocess on loopback.

    It serves the OpenAI API under ``/v1`` with ``slots`` parallel slots: concurrent
    requests are batched together (continuous batching), each slot with
    ``ctx_per_slot`` tokens of context. Use as a context manager (starts and waits
    until ready, then stops)::

        with LocalLLMServer(assemble_model()) as server:
            llm = local_chat_model(server.base_url)

    Args:
        model_path: The GGUF file; defaults to :func:`default_model_path` (it must
            already be assembled, see :func:`assemble_model`).
        port: TCP port on 127.0.0.1; a free one is picked if None.
        slots: Parallel slots (requests worked on at once); defaults to
            :func:`default_slots` (``$GRADSUM_LOCAL_SLOTS``, else 4).
        ctx_per_slot: Context tokens per slot; the server gets ``slots * ctx_per_slot``.
        n_threads: CPU threads; defaults to ``$GRADSUM_LOCAL_THREADS``, else 2.
        binary: The llama-server executable; defaults to :func:`server_binary`.
        log_path: Where the server's stdout/stderr go; defaults to
            ``<model dir>/logs/server-<port>.log`` (the 10 newest are kept), or a
            temporary file if that directory is not writable.
        command: Replaces the whole server command line (for tests).
    """

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        port: int | None = None,
        slots: int | None = None,
        ctx_per_slot: int = CTX_PER_SLOT,
        n_threads: int | None = None,
        binary: Path | None = None,
        log_path: Path | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        self._port = port
        self.slots = slots or default_slots()
        self.ctx_per_slot = ctx_per_slot
        # Default 2 (this machine's cores); GRADSUM_LOCAL_THREADS=1 when another
        # CPU-heavy job shares the machine: llama.cpp threads that cannot all run at
        # once spin against each other and generation collapses (measured 1 tok/s).
        self.n_threads = n_threads or int(os.environ.get(THREADS_ENV, "2"))
        self.binary = Path(binary) if binary is not None else server_binary()
        self.log_path = Path(log_path) if log_path is not None else None
        self._command = list(command) if command is not None else None
        self.process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None

    @property
    def port(self) -> int:
        """The server's port (picked on first use if none was given)."""
        if self._port is None:
            self._port = _free_port()
        return self._port

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL, ``http://127.0.0.1:PORT/v1``."""
        return f"http://{LOOPBACK}:{self.port}/v1"

    @property
    def n_ctx(self) -> int:
        """The server's whole context, split evenly between the slots."""
        return self.slots * self.ctx_per_slot

    @property
    def running(self) -> bool:
        """Whether the subprocess has been started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        """Return the command line that starts the server."""
        if self._command is not None:
            return list(self._command)
        return [
            str(self.binary),
            "-m", str(self.model_path),
            "--alias", MODEL_ALIAS,
            "--host", LOOPBACK,
            "--port", str(self.port),
            "-c", str(self.n_ctx),
            "-np", str(self.slots),
            "-t", str(self.n_threads),
        ]  # fmt: skip

    def _check_can_start(self) -> None:
        if self._command is not None:
            return
        if not (self.binary.is_file() and os.access(self.binary, os.X_OK)):
            raise LocalLLMError(
                f"llama-server is not built ({self.binary} does not exist). Build it with "
                "`python -m langchain_gradsum.local_llm build` (or `make local-llm`), or "
                f"point {SERVER_BINARY_ENV} at a llama-server binary."
            )
        if not self.model_path.is_file():
            raise LocalLLMError(
                f"Model file {self.model_path} does not exist. Assemble it with "
                "`python -m langchain_gradsum.local_llm assemble` (or `make local-llm`)."
            )

    def _open_log(self) -> IO[bytes]:
        if self.log_path is None:
            try:
                log_dir = self.model_path.parent / "logs"
                log_dir.mkdir(parents=True, exist_ok=True)
                _prune_logs(log_dir)
                self.log_path = log_dir / f"server-{self.port}.log"
                return self.log_path.open("wb")
            except OSError:
                fd, name = tempfile.mkstemp(prefix="gradsum-llama-server-", suffix=".log")
                self.log_path = Path(name)
                return os.fdopen(fd, "wb")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        return self.log_path.open("wb")

    def start(self) -> LocalLLMServer:
        """Start the server subprocess (returns at once; see :meth:`wait_ready`).

        Returns:
            self, for chaining.

        Raises:
            LocalLLMError: If the llama-server binary or the model file is missing.
        """
        if self.running:
            return self
        self._check_can_start()
        self._log_handle = self._open_log()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches us; we stop the server ourselves
        )
        atexit.register(self.stop)
        return self

    def _exited_error(self) -> LocalLLMError:
        code = self.process.returncode if self.process else None
        crashed = code is not None and code < 0  # killed by a signal (SIGSEGV: -11)
        hint = ("It crashed: if the binary was built on another CPU or by an older recipe, "
                "rebuild it with `gradsum local build --force`.\n" if crashed else "")
        return LocalLLMError(
            f"The local LLM server exited with code {code} before it was ready.\n{hint}"
            f"Command: {' '.join(self.command())}\n"
            f"Last lines of {self.log_path}:\n{_tail(self.log_path)}"
        )

    def wait_ready(self, timeout: float = 180) -> LocalLLMServer:
        """Block until the server answers ``GET /health`` with 200 (model loaded).

        Args:
            timeout: Seconds to wait before giving up.

        Returns:
            self, for chaining.

        Raises:
            LocalLLMError: If the server was not started, exits, or is not ready in
                time; the message includes the tail of its log.
        """
        if self.process is None:
            raise LocalLLMError("LocalLLMServer.wait_ready() called before start().")
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise self._exited_error()
            if server_is_ready(self.base_url, timeout=2.0):
                return self
            if time.monotonic() > deadline:
                raise LocalLLMError(
                    f"The local LLM server at {self.base_url} was not ready after "
                    f"{timeout:.0f} s. Last lines of {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.25)

    def stop(self, timeout: float = 15) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``timeout`` seconds. Idempotent."""
        atexit.unregister(self.stop)
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> LocalLLMServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` to the server's process group (it runs in its own session)."""
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
