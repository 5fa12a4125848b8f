"""The graph's state (what flows) and context (the run's knobs), in one place.

The state is plain JSON-able data so any LangGraph checkpointer can persist it.
The context holds the settings and model objects; it is not checkpointed.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Literal

from annotated_types import Ge, Interval
from langchain_core.language_models import BaseChatModel
from pydantic import WithJsonSchema
from typing_extensions import (  # typing's NotRequired is 3.11+; pydantic needs this TypedDict
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
    "RunContext",
    "Screen",
    "FULL_MARKS",
    "ROLES",
    "best_by_iteration",
    "lineage",
    "mean_output_tokens",
    "parse_record_key",
    "record_key",
    "total_calls",
]

Role = Literal["generate", "judge", "gradient", "summarize", "edit"]
ROLES: tuple[Role, ...] = ("generate", "judge", "gradient", "summarize", "edit")
"""The kinds of LLM call, in loop order: `usage` and the traces are by these roles (the
node `evaluate` calls the judge: its role is ``judge``)."""

FULL_MARKS = 1.0 - 1e-9
"""A score at or above this is full marks: the row is solved (no critique, no failure)."""


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
    form: NotRequired[float]
    """With ``form_progress``, at a tie: the share of `rows` on which the child's replies
    take the expected answers' form (`beam.form_rate`)..."""
    parent_form: NotRequired[float]
    """... and the parent's: the child passes if its share is higher."""
    cut_off: NotRequired[int]
    """With ``cut_off_progress``, at a tie where the parent's replies were cut off at the
    token cap: on how many of `rows` the child's were..."""
    parent_cut_off: NotRequired[int]
    """... and the parent's: the child passes if its count is lower."""
    output_tokens: NotRequired[float]
    """With ``prefer_short_outputs``, at a tie: the child's mean output tokens per reply
    on `rows`..."""
    parent_output_tokens: NotRequired[float]
    """... and the parent's: the child passes if its replies are at least a quarter
    shorter (`beam.SHORTER`)."""


class Candidate(TypedDict):
    """One prompt the search has produced (the initial prompt is `c0`)."""

    id: str
    template: str
    """The optimized text: the whole template, or the optimized chat message."""
    parent_id: str | None
    iteration: int
    """The iteration in which the candidate was written (0 for the initial prompt)."""
    summary: str | None
    """What produced this candidate: its *parent's* summarized gradient (or, with
    ``summarize=False``, the parent's single gradient) that the editor was given;
    ``None`` for the initial prompt. Not to be confused with `summaries`."""
    gradients: dict[str, list[str]]
    """Critiques of this candidate, by iteration (as a string key)."""
    summaries: dict[str, str]
    """This candidate's *own* summarized gradients, by iteration (as a string key): what
    its children are written from (each child's `summary`). (The two names are kept as
    they are: they are keys of checkpoints and saved results.)"""
    scores: dict[str, float]
    """Mean minibatch score, by iteration (as a string key)."""
    val_score: float | None
    lead: NotRequired[dict[str, Any] | None]
    """A validated finalist's paired record against the initial prompt on the final
    split (`_scoring.paired_comparison`: ``{"rows", "won", "lost", "p"}``); it may
    replace the initial prompt only with ``p <= replace_start_p``."""
    strategy: NotRequired[str | None]
    """How the edit was asked for: ``"instruction"`` (one added instruction),
    ``"shorten"`` (one added instruction asking for brief working, see ``shorten_edits``),
    ``"demo"`` (an example put in front, see ``demo_edits``)
    or ``"rewrite:<k>"`` (a rewrite with edit variant k); ``None`` for the initial
    prompt."""
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


def parse_record_key(key: str) -> tuple[str, str, int] | None:
    """``(candidate id, split, row)`` of a `record_key`; ``None`` if `key` is not one."""
    cid, sep, rest = str(key).partition("|")
    split, sep2, index = rest.partition("|")
    if not (sep and sep2 and index.isdigit()):
        return None
    return cid, split, int(index)


def mean_output_tokens(records: Mapping[str, Mapping[str, Any]], candidate_id: str | None,
                       split: str) -> float | None:
    """Mean generated tokens per output of a candidate on `split` (``None`` where the
    provider reported no token counts)."""
    counts = [r["output_tokens"] for k, r in records.items()
              if (key := parse_record_key(k)) is not None and key[:2] == (candidate_id, split)
              and "output_tokens" in r]
    return sum(counts) / len(counts) if counts else None


def total_calls(usage: Mapping[str, Mapping[str, Any]] | None) -> int:
    """The LLM calls of a `usage` mapping (by role), summed over the roles."""
    return sum(int(u.get("calls", 0)) for u in (usage or {}).values())


def lineage(candidates: Mapping[str, Mapping[str, Any]], candidate_id: str | None) -> list[str]:
    """The ids from the initial prompt down to `candidate_id`, following ``parent_id``
    (a parent not in `candidates` ends the chain)."""
    chain: list[str] = []
    cid = candidate_id
    while cid is not None and cid in candidates and cid not in chain:
        chain.append(cid)
        cid = candidates[cid].get("parent_id")
    return chain[::-1]


def best_by_iteration(candidates: Mapping[str, Mapping[str, Any]]) -> dict[int, tuple[float, str]]:
    """The best minibatch score of each iteration and whose it is, by iteration (in
    order); at equal score the candidate that comes first in `candidates`."""
    best: dict[int, tuple[float, str]] = {}
    for cid, cand in candidates.items():
        for it, score in (cand.get("scores") or {}).items():
            if int(it) not in best or score > best[int(it)][0]:
                best[int(it)] = (score, cid)
    return dict(sorted(best.items()))


def merge_dicts(left: dict[str, Any] | None, right: dict[str, Any] | None) -> dict[str, Any]:
    """Reducer: later values replace earlier ones key by key."""
    return {**(left or {}), **(right or {})}


def add_usage(
    left: dict[str, RoleUsage] | None, right: dict[str, RoleUsage] | None
) -> dict[str, RoleUsage]:
    """Reducer: add calls and tokens per role."""
    out: dict[str, RoleUsage] = {k: RoleUsage(**v) for k, v in (left or {}).items()}
    for role, u in (right or {}).items():
        cur = out.setdefault(role, {"calls": 0, "input_tokens": 0, "output_tokens": 0})
        cur["calls"] += u.get("calls", 0)
        cur["input_tokens"] += u.get("input_tokens", 0)
        cur["output_tokens"] += u.get("output_tokens", 0)
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
    benched: list[str]
    """Beam members the budget took out of the search (``beam_cut``): they get no more
    children or batches, but compete for the final validation on their pooled scores."""
    records: Annotated[dict[str, Record], merge_dicts]
    """Outputs and scores by `record_key`, so nothing is generated twice."""
    usage: Annotated[dict[str, RoleUsage], add_usage]
    counters: Annotated[dict[str, int], add_counts]
    paid: Annotated[list[str], operator.add]
    """Call-cache keys of the calls counted in `usage` (only with a call cache), so a
    resumed run neither repeats nor miscounts the calls of an interrupted step."""
    finalists_cap: int
    """Set when the budget left only pays for another iteration if fewer prompts than
    the beam and the initial prompt are validated at the end: at most this many."""
    stop_reason: str | None
    best_id: str | None


Evaluator = Callable[..., Any]
ModelLike = str | BaseChatModel

MAX_BACKOFF_S = 60.0
"""Largest `retry_backoff`: the first retry waits this long, later ones up to 30 times it."""

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



@dataclass(kw_only=True)
class GradSumContext:
    """Settings of one optimization run (LangGraph's ``context_schema``).

    Every knob is defined here once: its type and range (``Annotated``), its default and
    its description. `GradSumOptimizer`'s parameters and docstring, the ``gradsum
    optimize`` options and the README's knob table are derived from these fields
    (`langchain_gradsum._knobs`); the values are checked when a context is made.
    """

    model: _Model = field(metadata={"description": (
        "Task model that runs the candidate prompts: a BaseChatModel, a 'provider:model' "
        "string, or 'local' for the embedded Qwen2.5-Coder-1.5B server.")})
    judge_model: _OptionalModel = field(default=None, metadata={"description": (
        "Model of the LLM judge that scores outputs by `criteria` (default: `model`).")})
    optimizer_model: _OptionalModel = field(default=None, metadata={"description": (
        "Model that writes the critiques, summaries and edits (default: `model`).")})
    task_description: str = field(default="", metadata={"description": (
        "Plain-language description of the task.")})
    criteria: str | None = field(default=None, metadata={"description": (
        "Criteria for the LLM judge (scores 0..1); give `criteria`, `evaluators` or both "
        "(scores are then averaged).")})
    evaluators: _Evaluators = field(default=(), metadata={"description": (
        "Programmatic evaluators, LangSmith/openevals style: "
        "(inputs, outputs, reference_outputs) -> score; built-in ones also by name "
        "(exact_match, numeric_match, contains_answer, choice_match).")})
    beam_width: Annotated[int, Ge(1)] = field(default=3, metadata={"description": (
        "Candidates kept after each iteration.")})
    candidates_per_prompt: Annotated[int, Ge(1)] = field(default=2, metadata={"description": (
        "New prompts written per beam member per iteration.")})
    max_iterations: Annotated[int, Ge(0)] = field(default=10, metadata={"description": (
        "Edit rounds.")})
    minibatch_size: Annotated[int, Ge(1)] = field(default=10, metadata={"description": (
        "Training rows scored per iteration, a fresh seeded sample each time.")})
    max_gradients_per_prompt: Annotated[int, Ge(1)] | None = field(
        default=None, metadata={"description": (
            "Cap on critiques per candidate per iteration (default: one per shortfall).")})
    patience: Annotated[int, Ge(1)] | None = field(default=None, metadata={"description": (
        "Stop after this many iterations without a better best minibatch score.")})
    target_score: Annotated[float, Interval(gt=0, le=1)] | None = field(
        default=None, metadata={"description": (
            "Stop once the best minibatch score reaches this.")})
    max_llm_calls: Annotated[int, Ge(1)] | None = field(default=None, metadata={"description": (
        "Hard cap on LLM calls, retries included; never exceeded.")})
    max_concurrency: Annotated[int, Ge(1)] = field(default=4, metadata={"description": (
        "LLM calls in flight at once (GradSumOptimizer with 'local': the embedded "
        "server's parallel slots).")})
    max_retries: Annotated[int, Ge(0)] = field(default=2, metadata={"description": (
        "Retries of timeouts, 429s and 5xx errors (exponential backoff).")})
    max_parse_retries: Annotated[int, Ge(0)] = field(default=1, metadata={"description": (
        "Re-asks of the judge when its structured reply does not parse (then scored 0).")})
    retry_backoff: Annotated[float, Interval(ge=0, le=MAX_BACKOFF_S)] = field(
        default=1.0, metadata={"description": (
            "Seconds before the first retry; doubles each time.")})
    summarize: bool = field(default=True, metadata={"description": (
        "Merge each candidate's critiques into one summary; False is the paper's "
        "ablation: one edit per critique, no summary.")})
    repair_missing_variables: bool = field(default=True, metadata={"description": (
        "Append a {variable} an edit lost, instead of rejecting the edit.")})
    reject_copied_examples: bool = field(default=True, metadata={"description": (
        "Reject an edit that pastes in 8+ consecutive words of a train/val input, or the "
        "rare words or the expected answer of a row it was critiqued on (it overfits and "
        "leaks data), or gives one label as the example answer (the model copies it).")})
    retry_unusable_edits: bool = field(default=True, metadata={"description": (
        "Re-ask the editor once, saying why, when its prompt was rejected or repeats an "
        "earlier one (the call comes out of the unused child's scoring budget).")})
    screen_size: Annotated[int, Ge(0)] = field(default=2, metadata={"description": (
        "Score a new child first on this many of the failures it was written for; only one "
        "strictly better than its parent there is scored on the batch (0: off, the paper's "
        "way).")})
    instruction_edits: bool = field(default=True, metadata={"description": (
        "A parent's first child adds one instruction to it (short and reliable for a small "
        "editor model); the others are rewrites.")})
    shorten_edits: bool = field(default=True, metadata={"description": (
        "When most of a prompt's failed replies on the batch were cut off at the token cap, "
        "its added-instruction child is written to ask for brief working (strategy "
        "`shorten`; needs `instruction_edits`; not under `exact_match`, where the whole reply "
        "must be the answer).")})
    demo_edits: bool = field(default=False, metadata={"description": (
        "A parent's last rewrite child is instead the parent with an example put in front: "
        "its shortest right reply on a training row, under that row's inputs (a "
        "demonstration, strategy `demo`; composed, no editor call; one example per prompt "
        "at most).")})
    cut_off_progress: bool = field(default=True, metadata={"description": (
        "At equal score in a screen, a child passes if fewer of its replies were cut off at "
        "the token cap than its parent's (a shorter wrong reply is a step towards a right "
        "one).")})
    prefer_short_outputs: bool = field(default=True, metadata={"description": (
        "At equal score, rank higher the prompt with shorter outputs (cheaper): in screens "
        "(replies a quarter shorter pass), in the beam (on the batch) and in the final pick "
        "(on validation).")})
    pooled_ranking: bool = field(default=True, metadata={"description": (
        "Rank the beam by each candidate's mean score over every minibatch it was scored "
        "on, not the latest one alone (a 4-row batch is mostly noise), and let members a "
        "budget cut took out compete for the final validation on that mean; False: the "
        "latest batch, the paper's way.")})
    pooled_prior: Annotated[float, Interval(ge=0)] = field(default=1.0, metadata={
        "description": (
            "Each pooled mean (`pooled_ranking`) counts this many more minibatches at the "
            "mean of every candidate scored so far, so one lucky batch does not outrank the "
            "same score over several; 0: the plain mean.")})
    batch_difficulty: bool = field(default=True, metadata={"description": (
        "Pooled means (`pooled_ranking`) allow for how hard each minibatch was (a fit of "
        "score = candidate + batch over every candidate scored in the run), so a child's "
        "0.75 on a batch its parent solved ranks below the parent; False: plain means over "
        "whatever batches each candidate was scored on.")})
    form_progress: bool = field(default=True, metadata={"description": (
        "At equal score, rank higher the prompt whose replies take the expected answers' form "
        "(an option label, yes/no, a number) on more rows: in screens and the beam.")})
    replace_start_p: Annotated[float, Interval(ge=0, le=1)] = field(default=1.0, metadata={
        "description": (
            "Keep the initial prompt unless the final pick beat it on more validation rows "
            "than it lost with exact sign-test p at most this (0.35: 3 rows won to 0, 5 to "
            "1 or 10 to 5; 4 to 1 does not); else the best finalist that clears it, or the "
            "initial prompt. 1.0 (default): the best validation score wins, at equal score "
            "the shorter replies (a lead with p >= 0.05 gets a warning). On 20 validation "
            "rows 0.35 kept mmlu's start prompt (28/100) over one that led 5 rows to 3 and "
            "scored 41/100 on test.")})
    seed: int = field(default=0, metadata={"description": "Seed of the minibatch sampling."})
    meta_prompts: MetaPrompts = field(default_factory=MetaPrompts, metadata={"description": (
        "The judge, gradient, summary and edit prompts, the edit variants, the edit "
        "retry message, the shortening ask and the composed shortening instructions "
        "(override any of them).")})

    def __post_init__(self) -> None:
        from langchain_gradsum._knobs import check_knob, knobs

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
        for name in knobs():
            check_knob(name, getattr(self, name))

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

    # What `GradSumOptimizer` adds for its own runs (`RunContext`); not knobs. A
    # context made by hand has none of them.
    @property
    def prompt_slot(self) -> Any:
        """Where the optimized text sits in the user's prompt (`_templates.PromptSlot`)."""
        return None

    @property
    def app(self) -> Any:
        """The `apps.AppRunner` of a prompt inside a user's app."""
        return None

    @property
    def cache(self) -> Any:
        """The `CallCache` that answers finished LLM calls."""
        return None

    @property
    def should_stop(self) -> Callable[[], str | None] | None:
        """Polled between steps; a returned reason ends the run gracefully."""
        return None


@dataclass(kw_only=True)
class RunContext(GradSumContext):
    """The context of a `GradSumOptimizer` run: the knobs plus the run's internals."""

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
