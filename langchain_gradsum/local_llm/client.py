"""The client: a ``ChatOpenAI`` pointed at the local server (langchain_openai is
imported on first use, not with this module)."""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

from langchain_gradsum.local_llm._base import BASE_URL_ENV, MODEL_ALIAS, SERVE_HINT, LocalLLMError

if TYPE_CHECKING:
    from langchain_openai import ChatOpenAI

__all__ = ["local_chat_model"]


@functools.cache
def _local_chat_openai() -> type[ChatOpenAI]:
    """The ``ChatOpenAI`` subclass for llama-server (defined on first use: no import cost)."""
    from operator import itemgetter

    from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
    from langchain_core.runnables import RunnableMap, RunnablePassthrough
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel

    class LocalChatOpenAI(ChatOpenAI):
        """``ChatOpenAI`` for the local llama-server: structured output via a JSON schema.

        llama-server ignores an object ``tool_choice`` (it takes only ``"auto"``,
        ``"required"`` or ``"none"``), and with this model's chat template none of them
        makes it call the tool: the 1.5B model answers in prose (or echoes the tool
        definition), so ``method="function_calling"`` parses nothing. A JSON schema
        works: the server compiles it into a grammar, so the reply matches it. So
        ``function_calling`` and ``json_schema`` requests both send
        ``response_format={"type": "json_schema", ...}`` and parse the reply's text.
        It goes in ``extra_body`` so that langchain-openai does not take its
        ``parse()`` path, which raises on a reply cut off at ``max_tokens``; here that
        is a ``parsing_error`` (with ``include_raw=True``), as a truncated tool call was.
        """

        def with_structured_output(  # type: ignore[override]
            self,
            schema: Any = None,
            *,
            method: str = "json_schema",
            include_raw: bool = False,
            **kwargs: Any,
        ) -> Any:
            if method not in ("function_calling", "json_schema") or schema is None:
                return super().with_structured_output(
                    schema, method=method, include_raw=include_raw, **kwargs  # type: ignore[arg-type]
                )
            is_model = isinstance(schema, type) and issubclass(schema, BaseModel)
            json_schema = schema.model_json_schema() if is_model else dict(schema)
            name = schema.__name__ if is_model else str(json_schema.get("title", "output"))
            response_format = {
                "type": "json_schema",
                "json_schema": {"name": name, "schema": json_schema},
            }
            llm = self.bind(extra_body={**(self.extra_body or {}),
                                        "response_format": response_format})  # fmt: skip
            parser = PydanticOutputParser(pydantic_object=schema) if is_model else (
                JsonOutputParser()
            )
            if not include_raw:
                return llm | parser
            parsed = RunnablePassthrough.assign(
                parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
            )
            failed = RunnablePassthrough.assign(parsed=lambda _: None)
            return RunnableMap(raw=llm) | parsed.with_fallbacks(
                [failed], exception_key="parsing_error"
            )

    LocalChatOpenAI.__module__ = "langchain_gradsum.local_llm"  # its public home
    LocalChatOpenAI.__qualname__ = "LocalChatOpenAI"
    return LocalChatOpenAI


def local_chat_model(
    base_url: str | None = None,
    *,
    max_tokens: int = 512,
    temperature: float = 0.0,
    timeout: float = 300,
    **kwargs: Any,
) -> ChatOpenAI:
    """Build a ``ChatOpenAI`` client for the local server.

    ``max_tokens`` is sent in ``extra_body``: langchain-openai sends its cap as
    ``max_completion_tokens``, which llama-server honours but llama-cpp-python's
    server ignored (an uncapped call ran to the full context); ``max_tokens`` works
    with both. Structured output uses the server's JSON-schema grammar, also when
    ``method="function_calling"`` is asked for (see ``LocalChatOpenAI``).

    Args:
        base_url: Server base URL; defaults to ``$GRADSUM_LOCAL_BASE_URL``.
        max_tokens: Cap on generated tokens per call.
        temperature: Sampling temperature.
        timeout: Request timeout in seconds. When it expires the client closes the
            connection and llama-server stops generating for it within a few seconds.
        **kwargs: Passed on to ``ChatOpenAI`` (an ``extra_body`` is merged).

    Returns:
        The chat model (a ``ChatOpenAI`` subclass, model name ``"local"``, no retries).

    Raises:
        LocalLLMError: If no base URL is given or set in the environment.
    """
    base_url = base_url or os.environ.get(BASE_URL_ENV, "").strip() or None
    if not base_url:
        raise LocalLLMError(f"No local LLM server URL: {BASE_URL_ENV} is not set. {SERVE_HINT}")
    from pydantic import SecretStr

    extra_body = {"max_tokens": max_tokens, **(kwargs.pop("extra_body", None) or {})}
    return _local_chat_openai()(
        base_url=base_url,
        api_key=SecretStr("unused"),
        model=MODEL_ALIAS,
        temperature=temperature,
        extra_body=extra_body,
        max_retries=kwargs.pop("max_retries", 0),
        timeout=timeout,
        **kwargs,
    )
