"""What every part of the local model shares: its constants, paths, error and file helpers."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
from collections.abc import Iterator
from pathlib import Path

MODEL_FILENAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL_SIZE = 1117320768
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
N_PARTS = 22
PART_VERSION = "0.2.0"

MODEL_DIR_ENV = "GRADSUM_MODEL_DIR"
BASE_URL_ENV = "GRADSUM_LOCAL_BASE_URL"
MODEL_ALIAS = "local"
LOOPBACK = "127.0.0.1"

# The server: llama.cpp's llama-server, built from the llama.cpp tree vendored in this
# exact llama-cpp-python sdist (the only place a pinned llama.cpp source is on PyPI).
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
_PORTABLE_CMAKE_ARGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # no web UI download from the build: the API is all we use
)
# ggml's AMX matmul, compiled in by -march=native on a CPU that reports AMX, crashed
# llama-server (SIGSEGV in ggml_backend_amx_mul_mat at the warm-up decode) on this
# workplace's Xeon VMs (2026-12-02); built without it, the server runs and still
# repacks weights for AVX-512/AVX2. Explicit -mno-* flags win over -march=native in
# gcc and clang, whatever their order on the command line.
NO_AMX_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def cmake_args(machine: str) -> tuple[str, ...]:
    """The cmake configure arguments for a CPU architecture (``platform.machine()``)."""
    if machine.lower() in ("x86_64", "amd64"):
        return (*_PORTABLE_CMAKE_ARGS, f"-DCMAKE_C_FLAGS={NO_AMX_FLAGS}",
                f"-DCMAKE_CXX_FLAGS={NO_AMX_FLAGS}")
    return _PORTABLE_CMAKE_ARGS


CMAKE_ARGS = cmake_args(platform.machine())
BUILD_RECIPE = 2  # bump when CMAKE_ARGS or the install steps change: forces a rebuild
SERVER_BINARY_ENV = "GRADSUM_LLAMA_SERVER"  # run this llama-server instead of the built one
BUILD_DIR_ENV = "GRADSUM_LLAMA_BUILD_DIR"  # `build` reuses this cmake build dir
SLOTS_ENV = "GRADSUM_LOCAL_SLOTS"
THREADS_ENV = "GRADSUM_LOCAL_THREADS"
# 4 parallel slots: on 2 cores the engine's batched throughput peaks at 4 sequences
# (25.6 tok/s at 1, 33.4 at 4, 29.1 at 8); each slot gets CTX_PER_SLOT tokens.
DEFAULT_SLOTS = 4
CTX_PER_SLOT = 4096

INSTALL_HINT = (
    "Install them with `pip install 'langchain-gradsum[local]'` "
    "(or run `make local-llm` in a checkout of the repository)."
)
BUILD_HINT = (
    "Building llama-server needs cmake (>= 3.14) and a C/C++ compiler (gcc/g++ or clang): "
    "on Debian/Ubuntu `sudo apt-get install cmake g++` (or `pip install cmake` for cmake "
    "alone), then run `make local-llm` (or `python -m langchain_gradsum.local_llm build`) "
    "again."
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


def cache_dir() -> Path:
    """The directory holding the model, the server binary (``bin/``) and logs."""
    return default_model_path().parent


# ---------------------------------------------------------------------- file helpers


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


def _tail(path: Path | None, lines: int = 30) -> str:
    if path is None:
        return "(no log)"
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(could not read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
