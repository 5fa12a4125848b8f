"""Shared fixtures of the unit tests: no network, scripted fake models only.

Every unit test runs with network sockets restricted to loopback (pytest-socket):
a connection to any other host raises ``SocketConnectBlockedError``. Loopback
stays open for local capture servers (e.g. a fake LangSmith endpoint).
"""

from __future__ import annotations

from pathlib import Path

import pytest

LOOPBACK = ["127.0.0.1", "localhost"]
_HERE = Path(__file__).parent.resolve()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/unit_tests as loopback-only (pytest-socket)."""
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents and not item.get_closest_marker(
            "allow_hosts"
        ):
            item.add_marker(pytest.mark.allow_hosts(LOOPBACK))


@pytest.fixture(autouse=True)
def _no_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests never send traces, whatever the developer's shell exports.

    A test that wants tracing (to a loopback capture server) sets these again itself.
    """
    for var in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING",
                "LANGSMITH_TRACING_V2"):
        monkeypatch.delenv(var, raising=False)
