"""A persistent cache of finished LLM calls (SQLite), so nothing paid for is paid twice.

Keys are sha256 hashes of (model identity and parameters, messages, output
schema); values are the reply text or parsed structured output and the reply's
token usage. No key material is stored: model parameters are hashed, never written.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.load import dumps
from langchain_core.messages import BaseMessage

__all__ = ["CallCache"]

_LOOPBACK_PORT = re.compile(r"(https?://(?:127\.0\.0\.1|localhost|\[::1\])):\d+")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS gradsum_calls (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
)
"""


class CallCache:
    """Thread-safe SQLite cache of LLM replies.

    Args:
        path: The SQLite file (created if missing). It may be the same file as a
            LangGraph SQLite checkpointer: the cache uses its own table.
    """

    def __init__(self, path: str | Path, run_id: str | None = None) -> None:
        self.path = Path(path)
        self.run_id = run_id
        """Entries are tagged with the run that paid for them."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        with self._lock, self._conn:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(_SCHEMA)

    @staticmethod
    def key(model: BaseChatModel, messages: Sequence[BaseMessage] | str, kind: str) -> str:
        """Hash of what determines a reply: the model and its parameters, the messages,
        and `kind` (``"text"`` or the structured-output schema's name)."""
        try:
            identity = model._get_llm_string()
        except Exception:  # a model that cannot serialize itself
            identity = f"{type(model).__module__}.{type(model).__qualname__}:{model!r}"
        # A loopback server (the embedded model) gets a new port each time it starts;
        # the port says nothing about the model, so it is left out of the key.
        identity = _LOOPBACK_PORT.sub(r"\1", identity)
        if isinstance(messages, str):
            payload = messages
        else:
            payload = dumps(list(messages), sort_keys=True)
        blob = json.dumps([identity, payload, kind], sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT value FROM gradsum_calls WHERE key = ?", (key,)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        value = {**value, "run": self.run_id}
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO gradsum_calls (key, value) VALUES (?, ?)",
                (key, json.dumps(value)),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM gradsum_calls").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
