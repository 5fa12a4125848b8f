"""`OptimizationResult`: what a run produced, from the graph's state (`from_state`)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel

from langchain_gradsum._knobs import MODEL_ROLES, knobs
from langchain_gradsum._scoring import paired_comparison, rows_of
from langchain_gradsum._templates import PromptSlot
from langchain_gradsum.evaluators import evaluator_name
from langchain_gradsum.feedback import cut_off_replies, one_reply
from langchain_gradsum.state import (
    Candidate,
    GradSumContext,
    RoleUsage,
    lineage,
    mean_output_tokens,
    total_calls,
)

__all__ = ["OptimizationError", "OptimizationResult", "settings_as_json"]


def tie_warning(records: Mapping[str, Any], best_id: str, split: str, n: int,
                comparison: Mapping[str, Any], label: str) -> str:
    """The warning for a pick that scored what the initial prompt scored: it was taken
    for its shorter replies (or its place in the beam), not its accuracy. On hellaswag
    (seed 1, `3644d37`) such a pick tied the start prompt on 20 validation rows (0.30
    each) and scored 38 to its 46 on 100 test rows."""
    mine, theirs = (mean_output_tokens(records, cid, split) for cid in (best_id, "c0"))
    why = (f"its shorter replies ({mine:.0f} output tokens per reply against {theirs:.0f})"
           if mine is not None and theirs is not None and mine < theirs
           else "its rank in the beam")
    return (f"the best prompt scored what the initial prompt scored on {n} {label} rows "
            f"({comparison['won']} won, {comparison['lost']} lost) and was picked for {why}: "
            "it is not shown to be more accurate; keep the initial prompt if accuracy is all "
            "that counts")


@dataclass
class OptimizationResult:
    """What a run produced. ``best_prompt`` has the type and variables of the input prompt."""

    best_prompt: Any
    best_template: str
    best_id: str
    best_score: float | None
    """Score of the best prompt on `split` (validation when given)."""
    initial_score: float | None
    """Score of the initial prompt on the same split."""
    split: str
    stop_reason: str
    iterations: int
    candidates: dict[str, Candidate]
    """Every candidate written, with parent, iteration, summary, gradients and scores."""
    usage: dict[str, RoleUsage]
    counters: dict[str, int]
    wall_time_s: float
    records: dict[str, Any] = field(default_factory=dict, repr=False)
    """Every output and evaluation, by ``"candidate|split|row"``."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The run's knobs (JSON-able: evaluators by name, meta-prompts as text)."""
    best_app: Any = field(default=None, repr=False)
    """When an app was optimized: the same app with the best prompt in place, ready to
    invoke (the app passed in is not changed); else ``None``."""
    warnings: list[str] = field(default_factory=list)
    """What to check before trusting the best score: the best prompt gave one reply on
    (nearly) every validation row (`feedback.one_reply`), its replies often stopped at
    the token cap (`feedback.cut_off_replies`), or its lift over the initial prompt is
    within noise (`comparison`: more rows won than lost, sign test p >= 0.05)."""
    comparison: dict[str, Any] | None = None
    """The best prompt against the initial one row by row on `split` (finished runs whose
    best is not the initial prompt): ``{"rows", "won", "lost", "p"}``, `p` the exact
    two-sided sign test (McNemar's exact test for 0/1 scores)."""

    @property
    def total_calls(self) -> int:
        return total_calls(self.usage)

    @property
    def total_tokens(self) -> int:
        return sum(u["input_tokens"] + u["output_tokens"] for u in self.usage.values())

    @property
    def history(self) -> list[list[Candidate]]:
        """Candidates by the iteration that wrote them (index 0 holds the initial prompt)."""
        out: list[list[Candidate]] = [[] for _ in range(self.iterations + 1)]
        for cand in self.candidates.values():
            if cand["iteration"] < len(out):
                out[cand["iteration"]].append(cand)
        return out

    def lineage(self, candidate_id: str | None = None) -> list[Candidate]:
        """The chain of candidates from the initial prompt to `candidate_id` (default best)."""
        return [self.candidates[cid]
                for cid in lineage(self.candidates, candidate_id or self.best_id)]

    def mean_output_tokens(self, candidate_id: str | None = None) -> float | None:
        """Mean generated tokens per task call of a candidate (default: the best) on the
        split it was picked on; ``None`` where the provider reported no token counts.
        On a CPU, output tokens are most of a call's time."""
        split = "val" if self.split == "val" else "train"
        return mean_output_tokens(self.records, candidate_id or self.best_id, split)

    @classmethod
    def from_state(cls, state: Mapping[str, Any], context: GradSumContext | None = None, *,
                   stop_reason: str | None = None, wall_time_s: float = 0.0,
                   settings: dict[str, Any] | None = None) -> OptimizationResult:
        """The result of a GRAD-SUM graph run, from its state: what ``graph.invoke(...)``
        returns, or ``graph.get_state(config).values`` of a checkpointed run.

        A finished run (``finalize`` set ``best_id``) gives the best prompt on validation
        (``split`` "val", or "train" without validation rows). A run that did not finish,
        or any run when `stop_reason` is given (e.g. ``"interrupted"``), gives the best
        candidate so far: the top minibatch score of the latest iteration anything was
        scored in (``split`` "minibatch", not validated); stopped before the first step
        ended, that is the initial prompt, unscored.

        Args:
            state: The graph's state.
            context: The run's context: the best prompt is rebuilt as the input prompt's
                type and `settings` default to its knobs. Without it, a str template.
            stop_reason: Treat the run as stopped for this reason.
            wall_time_s: How long the run took, if known.
            settings: The run's knobs as JSON-able data (default: from `context`).
        """
        state = dict(state)
        if state.get("best_id") and stop_reason is None:
            best_id = state["best_id"]
            cands = state["candidates"]
            best, initial = cands[best_id]["val_score"], cands["c0"]["val_score"]
            split, reason = "val" if state.get("val") else "train", state["stop_reason"]
        else:
            state, best_id, best, initial = _best_so_far(state)
            split, reason = "minibatch", stop_reason or "incomplete"
        if settings is None:
            settings = settings_as_json({name: getattr(context, name)
                                  for name in knobs()}) if context is not None else {}
        app = context.app if context is not None else None
        slot: PromptSlot = (context.prompt_slot if context is not None else None) \
            or PromptSlot("str")
        template = state["candidates"][best_id]["template"]
        records, val = state.get("records") or {}, state.get("val") or []
        warnings = [w for w in (one_reply(records, best_id, val),
                                cut_off_replies(records, best_id, val)) if w] \
            if split == "val" else []
        comparison = None
        label = "validation" if split == "val" else "training"
        if split in ("val", "train") and best_id != "c0":
            n = len(rows_of(state, split))  # type: ignore[arg-type]
            comparison = paired_comparison(records, "c0", best_id, split, n)
            if comparison is not None and comparison["won"] > comparison["lost"] \
                    and comparison["p"] >= 0.05:
                warnings.append(
                    f"the best prompt beat the initial prompt on {comparison['won']} of "
                    f"{n} {label} rows and lost on {comparison['lost']} (sign test p = "
                    f"{comparison['p']:.2g}): the lift may be noise; score both prompts on "
                    "more rows before trusting it")
            elif comparison is not None and best is not None and initial is not None \
                    and abs(best - initial) < 1e-9:
                warnings.append(tie_warning(records, best_id, split, n, comparison, label))
        if split in ("val", "train") and best_id == "c0":
            held = [(cid, c) for cid, c in state["candidates"].items()
                    if (c.get("val_score") or 0) > (initial or 0) and c.get("lead")]
            if held:
                cid, c = max(held, key=lambda item: item[1]["val_score"])
                lead = c["lead"]
                warnings.append(
                    f"{cid} scored {c['val_score']:.2f} to the initial prompt's "
                    f"{initial:.2f} on {label} rows ({lead['won']} won, {lead['lost']} "
                    f"lost, sign test p = {lead['p']:.2g}): a lead that may be noise, so "
                    "the initial prompt is kept (replace_start_p); score both on more rows, "
                    "or set "
                    "replace_start_p=1.0 to take it")
        return cls(
            best_prompt=slot.rebuild(template),
            best_app=app.build(template) if app is not None else None,
            best_template=template,
            best_id=best_id,
            best_score=best,
            initial_score=initial,
            split=split,
            stop_reason=reason,
            iterations=state.get("iteration", 0),
            candidates=dict(state["candidates"]),
            usage=dict(state.get("usage") or {}),
            counters=dict(state.get("counters") or {}),
            wall_time_s=wall_time_s,
            records=dict(state.get("records") or {}),
            settings={**settings, **({"app": app.describe()} if app is not None else {})},
            warnings=warnings,
            comparison=comparison,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_template": self.best_template,
            "best_id": self.best_id,
            "best_score": self.best_score,
            "initial_score": self.initial_score,
            "split": self.split,
            "stop_reason": self.stop_reason,
            "iterations": self.iterations,
            "total_calls": self.total_calls,
            "total_tokens": self.total_tokens,
            "wall_time_s": self.wall_time_s,
            "mean_output_tokens": {"initial": self.mean_output_tokens("c0"),
                                   "best": self.mean_output_tokens()},
            "usage": self.usage,
            "counters": self.counters,
            "candidates": self.candidates,
            "records": self.records,
            "settings": self.settings,
            "warnings": self.warnings,
            "comparison": self.comparison,
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(indent=2), encoding="utf-8")
        return path


def _best_so_far(state: dict[str, Any]) -> tuple[dict[str, Any], str, float | None,
                                                 float | None]:
    """``(state, best_id, best, initial)`` of a run that did not finish: the top
    minibatch score of the latest iteration anything was scored in."""
    cands: dict[str, Candidate] = state.get("candidates") or {}
    if not cands:
        if not state.get("prompt"):
            raise ValueError("the state holds neither candidates nor a prompt: no result")
        cands = {"c0": {"id": "c0", "template": state["prompt"], "parent_id": None,
                        "iteration": 0, "summary": None, "gradients": {}, "summaries": {},
                        "scores": {}, "val_score": None}}
        state = {**state, "candidates": cands}
    best_id, best, latest = "c0", None, -1
    for cid, cand in cands.items():
        for it, score in cand["scores"].items():
            if int(it) > latest or (int(it) == latest and score > (best or -1)):
                best_id, best, latest = cid, score, int(it)
    return state, best_id, best, cands["c0"]["scores"].get(str(latest))


def settings_as_json(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Knob values as JSON-able data: evaluators by name, meta-prompts as text, models by
    a readable label."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if key == "evaluators":
            value = [evaluator_name(f) for f in value]
        elif key == "meta_prompts":
            value = dataclasses.asdict(value)
        elif key in MODEL_ROLES and value is not None:
            value = value if isinstance(value, str) else _model_label(value)
        out[key] = value
    return out


class OptimizationError(RuntimeError):
    """The run failed; `partial_result` keeps everything finished before the failure."""

    def __init__(self, message: str, partial_result: OptimizationResult | None) -> None:
        super().__init__(message)
        self.partial_result = partial_result


def _model_label(model: BaseChatModel) -> str:
    """A readable model name (never its parameters, which may hold keys)."""
    for attr in ("model_name", "model"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return f"{type(model).__name__}:{value}"
    return type(model).__name__
