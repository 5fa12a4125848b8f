"""PostgreSQL persistence: LangGraph's `PostgresSaver` and the call cache in one database.

Used when ``checkpoint=`` or ``cache=`` is a ``postgresql://`` URL. Needs the
``postgres`` extra (``pip install 'langchain-gradsum[postgres]'``:
langgraph-checkpoint-postgres and psycopg).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

__all__ = ["is_postgres_url", "open_postgres_saver", "postgres_connect", "safe_url"]

_SCHEMES = ("postgresql://", "postgres://")

# Any constant: the key of the advisory lock that serializes the schema set-up of
# workers starting at once against one database (CREATE TABLE IF NOT EXISTS races).
_SETUP_LOCK = 0x67726164  # "grad"


def is_postgres_url(value: Any) -> bool:
    """A ``postgresql://`` (or ``postgres://``) connection URL."""
    return isinstance(value, str) and value.strip().lower().startswith(_SCHEMES)


def safe_url(url: str) -> str:
    """`url` with its password (if any) hidden, for error messages."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _require(what: str) -> None:
    try:
        import langgraph.checkpoint.postgres  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"{what}='postgresql://...' needs the postgres extra: "
            f"pip install 'langchain-gradsum[postgres]' ({e})"
        ) from None


def postgres_connect(url: str, what: str) -> Any:
    """A psycopg connection as LangGraph's Postgres checkpointer wants it (autocommit,
    no prepared statements, dict rows); a clear error when the database cannot be
    reached, before any LLM call."""
    _require(what)
    import psycopg
    from psycopg.rows import dict_row

    try:
        return psycopg.Connection.connect(url, autocommit=True, prepare_threshold=0,
                                          row_factory=dict_row, connect_timeout=10)
    except psycopg.Error as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{what}: could not connect to PostgreSQL at {safe_url(url)}: {reason}"
        ) from None


def with_setup_lock(conn: Any, setup: Callable[[], None], timeout_s: float = 300) -> None:
    """Run `setup` (create tables, migrate) while holding a database-wide advisory lock,
    so that many workers starting at once do not race on the schema.

    The lock is polled (``pg_try_advisory_lock``), not waited for: a worker blocked in
    ``pg_advisory_lock`` holds a transaction open, and the checkpointer's migrations
    (``CREATE INDEX CONCURRENTLY``) wait for every open transaction: a deadlock.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        with conn.cursor() as cur:
            row = cur.execute("SELECT pg_try_advisory_lock(%s) AS got", (_SETUP_LOCK,)
                              ).fetchone()
        if (row["got"] if isinstance(row, dict) else row[0]):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"another process held the schema set-up lock of this database for over "
                f"{timeout_s:.0f} s (pg_advisory_lock key {_SETUP_LOCK})")
        time.sleep(0.1)
    try:
        setup()
    finally:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK,))


def open_postgres_saver(url: str) -> tuple[Any, Callable[[], None]]:
    """A set-up `PostgresSaver` on its own connection, and the function that closes it."""
    conn = postgres_connect(url, "checkpoint")
    from langgraph.checkpoint.postgres import PostgresSaver

    saver = PostgresSaver(conn)
    try:
        with_setup_lock(conn, saver.setup)
    except Exception:
        conn.close()
        raise
    return saver, conn.close
