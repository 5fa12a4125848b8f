"""Evaluators: programmatic ones in LangSmith's shape, built-ins, and the LLM judge.

A programmatic evaluator is any callable taking some of ``inputs``, ``outputs``
and ``reference_outputs`` (by those parameter names, as in LangSmith and
openevals) and returning a number, a bool, or ``{"key", "score", "comment"}``.
``outputs`` is ``{"output": <the model's text>}``. Scores must lie in 0..1.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "EvalResult",
    "EvaluatorError",
    "JudgeVerdict",
    "choice_match",
    "contains_answer",
    "exact_match",
    "numeric_match",
    "run_evaluator",
]

_PARAMS = ("inputs", "outputs", "reference_outputs")


class JudgeVerdict(BaseModel):
    """The LLM judge's structured output: reasoning first, then the score."""

    reasoning: str = Field(
        description="Brief reasoning about whether the output meets the criteria."
    )
    score: float = Field(description="Score from 0 (fails the criteria) to 1 (fully meets them).")


class EvaluatorError(ValueError):
    """A programmatic evaluator raised or returned something unusable: a bug to fix."""


class EvalResult(BaseModel):
    key: str
    score: float
    comment: str = ""


def evaluator_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def run_evaluator(
    fn: Callable[..., Any],
    inputs: Mapping[str, Any],
    output: str,
    reference_outputs: Mapping[str, Any],
) -> EvalResult:
    """Call a programmatic evaluator and normalize its result.

    Raises:
        ValueError: the evaluator returned something that is not a 0..1 score.
    """
    kwargs = {"inputs": dict(inputs), "outputs": {"output": output},
              "reference_outputs": dict(reference_outputs)}
    try:
        raw = fn(**_select_args(fn, kwargs))
        return normalize_result(raw, evaluator_name(fn))
    except EvaluatorError:
        raise
    except Exception as e:
        raise EvaluatorError(f"evaluator {evaluator_name(fn)!r} failed: {type(e).__name__}: {e}"
                             ) from e


def _select_args(fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return kwargs
    chosen = {k: v for k, v in kwargs.items() if k in params}
    if not chosen:
        raise TypeError(
            f"evaluator {evaluator_name(fn)!r} must take some of the parameters "
            f"{', '.join(_PARAMS)} (by name), like LangSmith evaluators"
        )
    return chosen


def normalize_result(raw: Any, name: str) -> EvalResult:
    comment = ""
    key = name
    if isinstance(raw, EvalResult):
        return raw
    if hasattr(raw, "score") and not isinstance(raw, Mapping | bool | int | float):
        raw = {"key": getattr(raw, "key", name), "score": raw.score,
               "comment": getattr(raw, "comment", "") or ""}
    if isinstance(raw, Mapping):
        if "score" not in raw:
            raise ValueError(
                f"evaluator {name!r} returned a dict without 'score' (keys: {sorted(raw)}); "
                "return {'key': ..., 'score': 0..1, 'comment': ...}"
            )
        key = str(raw.get("key") or name)
        comment = str(raw.get("comment") or "")
        raw = raw["score"]
    if isinstance(raw, bool):
        score = float(raw)
    elif isinstance(raw, int | float):
        score = float(raw)
    else:
        raise ValueError(
            f"evaluator {name!r} returned {raw!r}; return a number in 0..1, a bool, or "
            "{'key', 'score', 'comment'}"
        )
    if not 0.0 <= score <= 1.0:
        raise ValueError(
            f"evaluator {name!r} returned score {score}; scores must be in 0..1 (divide by "
            "your scale's maximum)"
        )
    return EvalResult(key=key, score=score, comment=comment)


# --- built-in programmatic evaluators -------------------------------------------------

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _reference(reference_outputs: Mapping[str, Any]) -> str:
    for key in ("answer", "output", "expected"):
        if key in reference_outputs:
            value = reference_outputs[key]
            return "" if value is None else str(value).strip()
    if len(reference_outputs) == 1:
        value = next(iter(reference_outputs.values()))
        return "" if value is None else str(value).strip()
    raise ValueError(
        f"no reference answer: reference_outputs has {sorted(reference_outputs)}, "
        "expected an 'answer' key"
    )


def _last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def _numbers(text: str) -> list[float]:
    out = []
    for token in _NUMBER.findall(text):
        try:
            out.append(float(token.replace(",", "")))
        except ValueError:
            continue
    return out


def _quote(text: str, limit: int = 80) -> str:
    """A short quote of a reply for a comment: first `limit` characters, one line."""
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")


def _length(text: str) -> str:
    n = len(text.split())
    return f"{n} word{'s' if n != 1 else ''}"


def numeric_match(outputs: Mapping[str, Any], reference_outputs: Mapping[str, Any]) -> dict:
    """1 if the last number in the output equals the reference number (math tasks).

    The comment says what was read and what was expected, and whether the expected
    number appears in the reply without being its final number (a form problem,
    not a wrong result). A reference without a number scores 0 with a comment.
    """
    ref = _reference(reference_outputs)
    expected = _last_number(ref)
    text = str(outputs.get("output", ""))
    got = _last_number(text)
    if expected is None:
        return {"key": "numeric_match", "score": 0.0,
                "comment": f"the reference answer {ref!r} contains no number to compare with"}
    ok = got is not None and abs(got - expected) < 1e-6
    if ok:
        comment = f"final number {got:g}, as expected"
    elif got is None:
        comment = (f"the reply ({_length(text)}) contains no number; expected {expected:g}. "
                   "The reply must end with the final number.")
    else:
        comment = f"the reply's final number is {got:g}, expected {expected:g}"
        if any(abs(x - expected) < 1e-6 for x in _numbers(text)[:-1]):
            comment += (f"; {expected:g} does appear earlier in the reply, but the final "
                        "number must be the answer (end the reply with the answer)")
    return {"key": "numeric_match", "score": float(ok), "comment": comment}


def exact_match(outputs: Mapping[str, Any], reference_outputs: Mapping[str, Any]) -> dict:
    """1 if the output equals the reference, ignoring case and surrounding space/periods.

    The comment quotes the reply and the expected answer and says when the reply
    contains the expected answer but adds other text (the whole reply must be the
    answer).
    """
    want = _reference(reference_outputs).strip().strip(".").lower()
    text = str(outputs.get("output", ""))
    got = text.strip().strip(".").lower()
    ok = got == want
    if ok:
        comment = f"the reply is exactly the expected answer {want!r}"
    else:
        comment = (f"the whole reply must be exactly {want!r} and nothing else; the reply "
                   f"was {_quote(text)} ({_length(text)})")
        if want and _contains(got, want):
            comment += (f". It contains {want!r} but adds other text: the reply must be "
                        "only the answer")
    return {"key": "exact_match", "score": float(ok), "comment": comment}


def contains_answer(outputs: Mapping[str, Any], reference_outputs: Mapping[str, Any]) -> dict:
    """1 if any accepted answer (``answers`` list or ``answer``) appears in the output."""
    answers = [a for a in (reference_outputs.get("answers") or [_reference(reference_outputs)])
               if a is not None and str(a).strip()]
    text = str(outputs.get("output", ""))
    norm = _norm(text)
    ok = any(_norm(str(a)) and _norm(str(a)) in norm for a in answers)
    if not answers:
        return {"key": "contains_answer", "score": 0.0,
                "comment": "the reference has no answer to look for"}
    if ok:
        comment = f"the reply contains the expected answer {str(answers[0])!r}"
    else:
        comment = (f"the reply ({_length(text)}: {_quote(text)}) does not contain the "
                   f"expected answer {str(answers[0])!r}")
    return {"key": "contains_answer", "score": float(ok), "comment": comment}


def _contains(text: str, want: str) -> bool:
    """Whether `want` occurs in `text` as a whole word or phrase (normalized)."""
    t, w = f" {_norm(text)} ", f" {_norm(want)} "
    return bool(w.strip()) and w in t


_CHOICE_ANSWER = re.compile(r"answer(?:\s+is)?\s*[:\-]?\s*\(?([A-J])\b", re.I)
_CHOICE_ONLY = re.compile(r"^\W*([A-J])\W*$")
_CHOICE_MARKED = re.compile(r"\(([A-J])\)|^\s*([A-J])[).:](?!\w)", re.M)
_CHOICE = re.compile(r"\b([A-J])\b(?!['\u2019])")


def choice_match(outputs: Mapping[str, Any], reference_outputs: Mapping[str, Any]) -> dict:
    """1 if the chosen option letter equals the reference letter (``A``, ``(B)``...).

    The choice is, in this order: the letter after the last "answer:"/"answer is";
    the whole reply if it is one letter; the last marked letter ("(C)", or "C)" /
    "C." opening a line); else the last standalone capital A-J that is not the
    word "I" or the article "A".
    """
    want = _reference(reference_outputs).strip().strip("()").upper()
    text = str(outputs.get("output", ""))
    got = _choice(text)
    if got == want:
        comment = f"chose {got}, as expected"
    elif got:
        comment = f"the reply's chosen option is {got}, expected {want}"
        if want in {"".join(m) for m in _CHOICE_MARKED.findall(text)} | {
                m.upper() for m in _CHOICE_ANSWER.findall(text)}:
            comment += (f"; ({want}) is named in the reply too, so the choice is ambiguous: "
                        "state one final option letter")
    else:
        comment = (f"no option letter found in the reply ({_length(text)}: {_quote(text)}); "
                   f"expected {want}. The reply must name one option letter.")
    return {"key": "choice_match", "score": float(got == want), "comment": comment}


def _choice(text: str) -> str | None:
    if explicit := _CHOICE_ANSWER.findall(text):
        return explicit[-1].upper()
    if only := _CHOICE_ONLY.match(text):
        return only.group(1)
    if marked := _CHOICE_MARKED.findall(text):
        return "".join(marked[-1])
    words = [m for m in _CHOICE.finditer(text) if m.group(1) != "I"
             and not (m.group(1) == "A" and re.match(r"A [a-z]", text[m.start():]))]
    return words[-1].group(1) if words else None


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())
