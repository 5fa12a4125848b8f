"""Integration tests talk to the embedded local LLM.

`make test-integration` starts the server and exports GRADSUM_LOCAL_BASE_URL;
run alone, the session fixture starts (and stops) a server itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def local_base_url() -> Iterator[str]:
    from langchain_gradsum.local_llm import BASE_URL_ENV, running_local_llm

    if os.environ.get(BASE_URL_ENV):
        yield os.environ[BASE_URL_ENV]
        return
    try:
        ctx = running_local_llm()
        base_url = ctx.__enter__()
    except Exception as e:  # the local extra is not installed
        pytest.skip(f"the embedded local LLM is not available ({e}); run `make test`")
    try:
        yield base_url
    finally:
        ctx.__exit__(None, None, None)
