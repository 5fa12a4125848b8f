"""A persistent cache of finished LLM calls (SQLite or PostgreSQL), so nothing paid for
is paid twice.

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

__all__ = ["CallCache", "PostgresCallCache", "open_cache"]

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


class PostgresCallCache(CallCache):
    """The call cache in a PostgreSQL database (its own table, ``gradsum_calls``), e.g.
    the one that holds the run's LangGraph checkpoints: many workers and runs share it,
    and an identical call made by any of them is answered from it.

    Args:
        url: A ``postgresql://`` connection URL (needs the ``postgres`` extra).
    """

    def __init__(self, url: str, run_id: str | None = None) -> None:
        from langchain_gradsum._postgres import postgres_connect, safe_url, with_setup_lock

        self.path = Path(safe_url(url))  # what it is, for messages; never a file
        self.url = url
        self.run_id = run_id
        self._lock = threading.Lock()
        self._conn: Any = postgres_connect(url, "cache")  # a psycopg connection

        def setup() -> None:
            with self._conn.cursor() as cur:
                cur.execute(_SCHEMA)

        with_setup_lock(self._conn, setup)

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock, self._conn.cursor() as cur:
            row = cur.execute("SELECT value FROM gradsum_calls WHERE key = %s",
                              (key,)).fetchone()
        if row is None:
            return None
        value = row["value"] if isinstance(row, dict) else row[0]
        return json.loads(value)

    def put(self, key: str, value: dict[str, Any]) -> None:
        value = {**value, "run": self.run_id}
        with self._lock, self._conn.cursor() as cur:
            cur.execute(
                "INSERT INTO gradsum_calls (key, value) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (key, json.dumps(value)),
            )

    def __len__(self) -> int:
        with self._lock, self._conn.cursor() as cur:
            row = cur.execute("SELECT COUNT(*) AS n FROM gradsum_calls").fetchone()
        return int(row["n"] if isinstance(row, dict) else row[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_cache(spec: str | Path) -> CallCache:
    """The cache a ``cache=`` value names: a ``postgresql://`` URL or a SQLite path."""
    from langchain_gradsum._postgres import is_postgres_url

    if is_postgres_url(spec):
        return PostgresCallCache(str(spec))
    return CallCache(spec)
