"""``checkpoint="postgresql://..."`` without a server: the routing and its clear errors.

The real PostgreSQL tests (kill, resume, shared database) are in tests/postgres_tests
(``make test-postgres``).
"""

from __future__ import annotations

import sys

import pytest
from gradsum_fakes import optimizer, qa_rows

from langchain_gradsum._postgres import is_postgres_url, safe_url
from langchain_gradsum.testing import ScriptedChatModel


def test_postgres_urls_are_told_from_paths() -> None:
    assert is_postgres_url("postgresql://u@127.0.0.1:5432/db")
    assert is_postgres_url("postgres://u@h/db")
    assert not is_postgres_url("run.sqlite") and not is_postgres_url(None)
    assert safe_url("postgresql://u:secret@h:1/db") == "postgresql://u:***@h:1/db"
    assert safe_url("postgresql://u@h/db") == "postgresql://u@h/db"


@pytest.mark.parametrize("where", ["checkpoint", "cache"])
def test_without_the_postgres_extra_a_url_is_a_clear_error_before_any_call(
        monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
    model = ScriptedChatModel(respond=lambda text, role: "B")
    with pytest.raises(ImportError, match=r"langchain-gradsum\[postgres\]"):
        optimizer(model).optimize("Q: {question}", qa_rows(3),
                                  **{where: "postgresql://u@127.0.0.1:1/db"})
    assert model.calls == []
