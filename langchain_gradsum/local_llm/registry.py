"""One server per machine: a server another live process of ours started is shared.

Two llama.cpp servers on 2 cores spin against each other (measured: 1 token/s each
instead of 14), so :func:`running_local_llm` records the server it starts in
``<cache dir>/server.json`` (under a file lock) and a later run reuses it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from langchain_gradsum.local_llm._base import BASE_URL_ENV, _file_lock, cache_dir

__all__ = ["running_local_llm"]


def _package() -> ModuleType:
    """The ``local_llm`` package: the model, server class and probe are looked up on it
    when called, so replacing ``local_llm.assemble_model`` (or ``LocalLLMServer``,
    ``server_is_ready``) replaces it here too, as when this was one module."""
    return sys.modules["langchain_gradsum.local_llm"]


@contextlib.contextmanager
def running_local_llm(port: int | None = None, *, slots: int | None = None) -> Iterator[str]:
    """Provide a running local LLM server for the duration of a ``with`` block.

    If ``$GRADSUM_LOCAL_BASE_URL`` names a server that answers, it is reused and left
    running; so is a server another live process of ours started (one per machine).
    Otherwise the model is assembled (if needed) and a server is started, then
    stopped when the block exits.

    Args:
        port: Port for a newly started server; a free one if None.
        slots: Parallel slots of a newly started server; :func:`default_slots` if None.

    Yields:
        The server's base URL (``http://127.0.0.1:PORT/v1``).
    """
    existing = os.environ.get(BASE_URL_ENV, "").strip()
    pkg = _package()
    if existing and pkg.server_is_ready(existing):
        yield existing.rstrip("/")
        return
    if existing:
        print(
            f"[local_llm] {BASE_URL_ENV}={existing} does not answer; starting a new server.",
            file=sys.stderr,
        )
    # One server per machine: two llama.cpp servers on 2 cores spin against each other
    # (measured: 1 token/s each instead of 14). A server another process started is
    # shared; the requests of both runs are batched in its slots.
    with _registry_lock():
        shared = _shared_server()
        if shared is None:
            model = pkg.assemble_model()
            server = pkg.LocalLLMServer(model, port=port, slots=slots).start()
            try:
                server.wait_ready()
            except BaseException:
                server.stop()
                raise
            _registry_path().write_text(
                json.dumps(
                    {"base_url": server.base_url, "pid": os.getpid(), "slots": server.slots}
                ),
                encoding="utf-8",
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
    return cache_dir() / "server.json"


def _registry_lock() -> contextlib.AbstractContextManager[None]:
    return _file_lock(cache_dir() / "server.lock")


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
        if _package().server_is_ready(url, timeout=10):
            return url
        try:
            os.kill(int(info["pid"]), 0)
        except OSError:
            return None
        time.sleep(1)
    return None
