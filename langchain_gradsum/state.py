"""The graph's state (what flows) and context (the run's knobs), in one place.

The state is plain JSON-able data so any LangGraph checkpointer can persist it.
The context holds the settings and model objects; it is not checkpointed.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NotRequired, TypedDict

from langchain_core.language_models import BaseChatModel

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


@dataclass(kw_only=True)
class GradSumContext:
    """Settings of one optimization run (LangGraph's ``context_schema``)."""

    model: ModelLike = field(metadata={"description": "Task model: runs the candidate prompts."})
    judge_model: ModelLike | None = field(
        default=None, metadata={"description": "Scores outputs from `criteria`; default `model`."}
    )
    optimizer_model: ModelLike | None = field(
        default=None,
        metadata={"description": "Writes gradients, summaries and edits; default `model`."},
    )
    task_description: str = ""
    criteria: str | None = None
    evaluators: Sequence[Evaluator] = ()
    beam_width: int = 3
    candidates_per_prompt: int = 2
    max_iterations: int = 10
    minibatch_size: int = 10
    max_gradients_per_prompt: int | None = None
    patience: int | None = None
    target_score: float | None = None
    max_llm_calls: int | None = None
    max_concurrency: int = 4
    max_retries: int = 2
    max_parse_retries: int = 1
    retry_backoff: float = 1.0
    """Seconds before the first retry; doubles each time."""
    summarize: bool = True
    repair_missing_variables: bool = True
    """Append a lost placeholder to an edited prompt instead of rejecting it."""
    reject_copied_examples: bool = True
    """Reject an edited prompt that pastes in text of a train/val input (8+ words)."""
    retry_unusable_edits: bool = True
    """Re-ask the editor once, saying why, when its prompt was rejected or repeats
    an earlier prompt (one more call, taken from the unused child's scoring budget)."""
    screen_size: int = 2
    """Score a new child first on this many of the failures it was written for; only a
    child strictly better than its parent there is scored on the batch (0: score every
    child on the whole batch, as the paper does)."""
    instruction_edits: bool = True
    """A parent's first child adds one instruction to it (a short, reliable edit for a
    small editor model); the other children are rewrites."""
    prefer_short_outputs: bool = True
    """At equal validation score, pick the prompt whose outputs are shorter (cheaper)."""
    form_progress: bool = True
    """At equal score, rank higher the prompt whose replies take the expected answers'
    form (an option label, yes/no, a number) on more rows: in screens and the beam."""
    seed: int = 0
    meta_prompts: MetaPrompts = field(default_factory=MetaPrompts)
    prompt_slot: Any = None
    """Where the optimized text sits in the user's prompt (see `_templates.PromptSlot`);
    `None` means a plain string template sent as one human message."""
    app: Any = None
    """An `apps.AppRunner` when the prompt sits inside a user's app: each candidate is
    run as that whole app (its own models, parsers, retrieval); `None`: prompt -> model."""
    cache: Any = None
    """A `CallCache`: finished LLM calls are answered from it (resume, re-runs)."""
    should_stop: Callable[[], str | None] | None = None
    """Polled between steps; a returned reason ends the run gracefully."""
