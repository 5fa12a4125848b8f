"""The graph's state (what flows) and context (the run's knobs), in one place.

The state is plain JSON-able data so any LangGraph checkpointer can persist it.
The context holds the settings and model objects; it is not checkpointed.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Annotated, Any, Literal

from langchain_core.language_models import BaseChatModel
from pydantic import WithJsonSchema
from pydantic.json_schema import SkipJsonSchema
from typing_extensions import (  # pydantic makes JSON schemas of these (Python < 3.12)
    NotRequired,
    TypedDict,
)

from langchain_gradsum.prompts import MetaPrompts

__all__ = [
    "Candidate",
    "Example",
    "GradSumContext",
    "GradSumInput",
    "GradSumState",
    "Record",
    "RoleUsage",
    "Screen",
    "ROLES",
    "record_key",
]

Role = Literal["generate", "judge", "gradient", "summarize", "edit"]
ROLES: tuple[Role, ...] = ("generate", "judge", "gradient", "summarize", "edit")


class Example(TypedDict):
    """One data row, in the format of LangSmith datasets and `shared/data`."""

    inputs: dict[str, Any]
    outputs: dict[str, Any]


class Screen(TypedDict):
    """A new child's first, cheap test: a few rows its parent failed on."""

    rows: list[int]
    parent_score: float
    score: float | None
    """The child's mean score on `rows` (``None`` until scored)."""
    passed: bool | None
    """Strictly better than the parent on `rows`: only then is it scored further."""


class Candidate(TypedDict):
    """One prompt the search has produced (the initial prompt is `c0`)."""

    id: str
    template: str
    """The optimized text: the whole template, or the optimized chat message."""
    parent_id: str | None
    iteration: int
    """The iteration in which the candidate was written (0 for the initial prompt)."""
    summary: str | None
    """The summarized gradient (or, with ``summarize=False``, the single gradient)
    that produced this candidate."""
    gradients: dict[str, list[str]]
    """Critiques of this candidate, by iteration (as a string key)."""
    summaries: dict[str, str]
    """This candidate's summarized gradient, by iteration."""
    scores: dict[str, float]
    """Mean minibatch score, by iteration (as a string key)."""
    val_score: float | None
    strategy: NotRequired[str | None]
    """How the edit was asked for: ``"instruction"`` (one added instruction) or
    ``"rewrite:<k>"`` (a rewrite with edit variant k); ``None`` for the initial prompt."""
    screen: NotRequired[Screen | None]
    """A child's screen: its score on the failures it was written for, against its
    parent's (``None`` when not screened, e.g. the initial prompt)."""


class Record(TypedDict, total=False):
    """One candidate's output on one example, and its evaluation."""

    output: str
    error: str
    score: float
    feedback: str
    """Evaluator comments and judge reasoning, joined."""
    judge_failed: bool
    """The judge call failed or its reply could not be parsed (scored 0, not reused)."""
    output_tokens: int
    """Tokens the task model generated for this output (as the provider reported)."""
    truncated: bool
    """The reply stopped at the token cap (finish reason ``length``)."""


class RoleUsage(TypedDict):
    calls: int
    input_tokens: int
    output_tokens: int


def record_key(candidate_id: str, split: str, index: int) -> str:
    """Key of a record: which candidate, which split, which row."""
    return f"{candidate_id}|{split}|{index}"


def merge_dicts(left: dict[str, Any] | None, right: dict[str, Any] | None) -> dict[str, Any]:
    """Reducer: later values replace earlier ones key by key."""
    return {**(left or {}), **(right or {})}


def add_usage(
    left: dict[str, RoleUsage] | None, right: dict[str, RoleUsage] | None
) -> dict[str, RoleUsage]:
    """Reducer: add calls and tokens per role."""
    out: dict[str, RoleUsage] = {k: dict(v) for k, v in (left or {}).items()}  # type: ignore[misc]
    for role, u in (right or {}).items():
        cur = out.setdefault(role, {"calls": 0, "input_tokens": 0, "output_tokens": 0})
        for k in ("calls", "input_tokens", "output_tokens"):
            cur[k] += u.get(k, 0)  # type: ignore[literal-required]
    return out


def add_counts(left: dict[str, int] | None, right: dict[str, int] | None) -> dict[str, int]:
    """Reducer: add event counters (rejected candidates, retries, parse failures...)."""
    out = dict(left or {})
    for k, v in (right or {}).items():
        out[k] = out.get(k, 0) + v
    return out


class GradSumInput(TypedDict, total=False):
    """What a caller (or `langgraph dev`) passes in."""

    prompt: str
    """The template text to optimize, with ``{variables}``."""
    train: list[Example]
    val: list[Example]


class GradSumState(TypedDict, total=False):
    """Everything that flows through the GRAD-SUM loop."""

    prompt: str
    train: list[Example]
    val: list[Example]
    iteration: int
    """Number of edit rounds done so far."""
    batch: list[int]
    """The training rows of this iteration: its seeded minibatch, extended with further
    rows when the beam solved all of them (so there is always a failure to learn from)."""
    candidates: Annotated[dict[str, Candidate], merge_dicts]
    """Every candidate ever written, by id: the full history and lineage."""
    beam: list[str]
    """Ids of the candidates alive in the search (parents plus new children)."""
    records: Annotated[dict[str, Record], merge_dicts]
    """Outputs and scores by `record_key`, so nothing is generated twice."""
    usage: Annotated[dict[str, RoleUsage], add_usage]
    counters: Annotated[dict[str, int], add_counts]
    paid: Annotated[list[str], operator.add]
    """Call-cache keys of the calls counted in `usage` (only with a call cache), so a
    resumed run neither repeats nor miscounts the calls of an interrupted step."""
    stop_reason: str | None
    best_id: str | None


Evaluator = Callable[..., Any]
ModelLike = str | BaseChatModel

BUILTIN_EVALUATORS = ("exact_match", "numeric_match", "contains_answer", "choice_match")
"""Programmatic evaluators a context may name (e.g. from LangGraph Studio's JSON)."""

_MODEL_SCHEMA = {"type": "string", "examples": ["local", "openai:gpt-4o-mini"]}
_Model = Annotated[ModelLike, WithJsonSchema(_MODEL_SCHEMA)]
_OptionalModel = Annotated[ModelLike | None,
                           WithJsonSchema({"anyOf": [_MODEL_SCHEMA, {"type": "null"}]})]
_Evaluators = Annotated[
    Sequence[Evaluator | str],
    WithJsonSchema({"type": "array",
                    "items": {"type": "string", "enum": list(BUILTIN_EVALUATORS)}}),
]


def _knob(description: str, default: Any = MISSING, **kw: Any) -> Any:
    """A context field with its description (shown in the context's JSON schema)."""
    if default is not MISSING:
        kw["default"] = default
    return field(metadata={"description": description}, **kw)


@dataclass(kw_only=True)
class GradSumContext:
    """Settings of one optimization run (LangGraph's ``context_schema``).

    Every knob has a description, shown in the JSON schema LangGraph makes of this
    context (``graph.get_context_jsonschema()``: the assistant's context schema in
    LangGraph Server and Studio). A dict (a server run's JSON context) is coerced:
    ``meta_prompts`` may be a dict of `MetaPrompts` fields, ``evaluators`` may name
    built-in evaluators. The fields after ``meta_prompts`` are set from code only.
    """

    model: _Model = _knob(
        "Task model: runs the candidate prompts. 'local' (the embedded model, at "
        "$GRADSUM_LOCAL_BASE_URL) or 'provider:model' (init_chat_model); from code, also a "
        "BaseChatModel.")
    judge_model: _OptionalModel = _knob(
        "Model of the LLM judge that scores outputs against `criteria`; default `model`.",
        None)
    optimizer_model: _OptionalModel = _knob(
        "Model that writes gradients, summaries and edits; default `model`.", None)
    task_description: str = _knob("Plain-language description of the task.", "")
    criteria: str | None = _knob(
        "Evaluation criteria for the LLM judge (scores 0..1). Give criteria, evaluators, or "
        "both (scores are averaged).", None)
    evaluators: _Evaluators = _knob(
        "Programmatic evaluators: built-in ones by name (exact_match, numeric_match, "
        "contains_answer, choice_match); from code, any LangSmith-style callable.", ())
    beam_width: int = _knob("Candidates kept after each iteration.", 3)
    candidates_per_prompt: int = _knob(
        "New prompts written per beam member per iteration.", 2)
    max_iterations: int = _knob("Edit rounds.", 10)
    minibatch_size: int = _knob(
        "Training rows scored per iteration, a fresh seeded sample each time.", 10)
    max_gradients_per_prompt: int | None = _knob(
        "Cap on critiques per candidate per iteration (default: all).", None)
    patience: int | None = _knob(
        "Stop after this many iterations without a better best minibatch score.", None)
    target_score: float | None = _knob(
        "Stop once the best minibatch score reaches this.", None)
    max_llm_calls: int | None = _knob(
        "Hard cap on LLM calls, retries included; never exceeded.", None)
    max_concurrency: int = _knob("LLM calls in flight at once.", 4)
    max_retries: int = _knob(
        "Retries of timeouts, 429s and 5xx errors (exponential backoff).", 2)
    max_parse_retries: int = _knob(
        "Re-asks of a judge reply that does not parse (then it scores 0).", 1)
    retry_backoff: float = _knob("Seconds before the first retry; doubles each time.", 1.0)
    summarize: bool = _knob(
        "Summarize the critiques into one gradient; False is the paper's ablation (each "
        "new prompt from one gradient, no summary).", True)
    repair_missing_variables: bool = _knob(
        "Append a lost {variable} to an edited prompt instead of rejecting it.", True)
    reject_copied_examples: bool = _knob(
        "Reject an edited prompt that pastes in 8+ consecutive words of a train/val input.",
        True)
    retry_unusable_edits: bool = _knob(
        "Re-ask the editor once, saying why, when its prompt was rejected or repeats an "
        "earlier prompt (one more call, taken from the unused child's scoring budget).",
        True)
    screen_size: int = _knob(
        "Score a new child first on this many of the failures it was written for; only a "
        "child strictly better than its parent there is scored on the batch (0: score "
        "every child on the whole batch, as the paper does).", 2)
    instruction_edits: bool = _knob(
        "A parent's first child adds one instruction to it (a short, reliable edit for a "
        "small editor model); the others are rewrites.", True)
    prefer_short_outputs: bool = _knob(
        "At equal validation score, pick the prompt whose outputs are shorter (cheaper).",
        True)
    seed: int = _knob("Seed of the minibatch sampling.", 0)
    meta_prompts: MetaPrompts = _knob(
        "The judge, gradient, summary and edit prompts, the edit variants and the edit "
        "retry message (str.format templates); override any of them.",
        default_factory=MetaPrompts)
    prompt_slot: SkipJsonSchema[Any] = None
    """Where the optimized text sits in the user's prompt (see `_templates.PromptSlot`);
    `None` means a plain string template sent as one human message."""
    app: SkipJsonSchema[Any] = None
    """An `apps.AppRunner` when the prompt sits inside a user's app: each candidate is
    run as that whole app (its own models, parsers, retrieval); `None`: prompt -> model."""
    cache: SkipJsonSchema[Any] = None
    """A `CallCache`: finished LLM calls are answered from it (resume, re-runs)."""
    should_stop: SkipJsonSchema[Callable[[], str | None] | None] = None
    """Polled between steps; a returned reason ends the run gracefully."""

    def __post_init__(self) -> None:
        if isinstance(self.meta_prompts, Mapping):  # a JSON context (LangGraph Server)
            self.meta_prompts = MetaPrompts(**self.meta_prompts)
        if isinstance(self.evaluators, str) or any(isinstance(e, str) for e in self.evaluators):
            from langchain_gradsum import evaluators as builtin

            names = [self.evaluators] if isinstance(self.evaluators, str) else self.evaluators
            resolved = []
            for e in names:
                if isinstance(e, str):
                    if e not in BUILTIN_EVALUATORS:
                        raise ValueError(f"unknown evaluator {e!r}; the built-in ones are "
                                         f"{', '.join(BUILTIN_EVALUATORS)}")
                    e = getattr(builtin, e)
                resolved.append(e)
            self.evaluators = tuple(resolved)

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> Any:
        """Pydantic's schema of the dataclass, with each knob's description."""
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        props = target.get("properties", {})
        for f in fields(cls):
            if f.name in props and "description" in f.metadata:
                props[f.name]["description"] = f.metadata["description"]
        target["description"] = "Settings of one GRAD-SUM optimization run."
        return schema
