"""What the optimizer LLM is shown about a prompt's failures: evidence a small model can act on.

Pure functions of the state: the measured facts about a candidate's outputs on the
current batch (how many failed, whether the expected answer was in the reply but in
the wrong form, how long replies are, what form expected answers take, what the
evaluators said), the kinds of mistake its critiques name, and the earlier edits of
the same prompt that did not help. Also how a data row is shown in the meta-prompts
(`show_inputs`, `show_reference`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_gradsum.prompts import MISTAKE_KINDS
from langchain_gradsum.state import FULL_MARKS, Candidate, Example, Record, record_key

__all__ = ["CUT_OFF", "answer_form", "answer_shape", "clip_shown", "critique_kind",
           "cut_off_replies", "edit_history", "evidence", "in_form", "kind_counts", "labels",
           "one_reply", "show_feedback", "show_inputs", "show_output", "show_reference"]

SHOW_LIMIT = 2000
"""Characters of one value (an input, a reference, an output) a meta-prompt shows."""

CUT_OFF = ("The reply was cut off at the length limit before it finished, so it never "
           "reached its final answer: the prompt must ask for a shorter reply.")
"""What the critique is told about a reply that stopped at the token cap. An evaluator
sees only the text, so its comment ("the reply's final number is 100, expected 16")
does not say why; without this line the 1.5B critic called 4 of 4 cut-off svamp replies
a missing final number, and no edit asked for brevity."""

_KIND = re.compile(r"^\W*kind\W*[:\-]\s*\**\s*([a-z]+)", re.I | re.M)
_WORD = re.compile(r"[^\w\s]")


def critique_kind(critique: str) -> str:
    """The mistake kind a critique names on its ``Kind:`` line, else ``"other"``."""
    m = _KIND.search(critique)
    kind = m.group(1).lower() if m else ""
    return kind if kind in MISTAKE_KINDS else "other"


def kind_counts(critiques: Sequence[str]) -> str:
    """``"format 3, reasoning 1"``: the kinds the critiques name, most frequent first."""
    counts = Counter(critique_kind(c) for c in critiques)
    return ", ".join(f"{k} {n}" for k, n in counts.most_common())


def _norm(text: str) -> str:
    return " ".join(_WORD.sub(" ", text.lower()).split())


def _answer(example: Example) -> str | None:
    ref = example.get("outputs") or {}
    value = ref.get("answer", next(iter(ref.values()), None) if len(ref) == 1 else None)
    return None if value is None else str(value).strip()


def _mask_answer(comment: str, answer: str | None) -> str:
    """The comment with the row's expected answer replaced by a placeholder: the form
    it states stays, the one answer (which a small editor would paste) goes."""
    if not answer or len(answer) > 40:
        return comment
    pattern = re.compile(rf"'?(?<!\w){re.escape(answer)}(?!\w)'?", re.I)
    return pattern.sub("<the expected answer>", comment)


def _contains(reply: str, answer: str) -> bool:
    a = _norm(answer)
    return bool(a) and f" {a} " in f" {_norm(reply)} "


def evidence(
    records: Mapping[str, Record],
    candidate_id: str,
    rows: Sequence[int],
    train: Sequence[Example],
    *,
    max_comments: int = 3,
) -> str:
    """Measured facts about one candidate's outputs on `rows`, as short lines.

    Everything here is computed, not generated: counts, lengths, the form of the
    expected answers, and the evaluators' own comments on failed rows.
    """
    found = [(i, records.get(record_key(candidate_id, "train", i))) for i in rows]
    recs = [(i, r) for i, r in found if r is not None and "score" in r]
    if not recs:
        return "- (nothing measured yet)"
    failed = [(i, r) for i, r in recs if r["score"] < FULL_MARKS]
    lines = [f"- {len(failed)} of {len(recs)} replies fell short of full marks."]
    cut = sum(1 for _, r in failed if r.get("truncated"))
    if cut:  # first: the fix (a shorter reply) is not what the other lines suggest
        lines.append(f"- {cut} of the {len(failed)} failed replies were cut off at the "
                     "length limit before they reached the answer: the prompt must ask "
                     "for brief working, a few short lines, then the answer.")
    replies = [r.get("output") or "" for _, r in recs]
    words = sum(len(t.split()) for t in replies) / len(replies)
    answers = [a for i, _ in recs if (a := _answer(train[i])) is not None]
    if answers:
        ans_words = sum(len(a.split()) for a in answers) / len(answers)
        lines.append(f"- Replies are {words:.0f} words long on average; expected answers "
                     f"are {ans_words:.0f} word{'s' if round(ans_words) != 1 else ''}.")
        lines.append(f"- Expected answers are {answer_shape(answers)}.")
    else:
        lines.append(f"- Replies are {words:.0f} words long on average.")
    if failed:
        present = sum(1 for i, r in failed if (a := _answer(train[i])) is not None
                      and len(a) <= 60 and _contains(r.get("output") or "", a))
        if present:
            lines.append(f"- {present} of the {len(failed)} failed replies contain the "
                         "expected answer, yet fail: their form is the problem, not their "
                         "content.")
        comments = []
        for i, r in failed:
            for line in (r.get("feedback") or "").splitlines():
                text = _mask_answer(line.strip(), _answer(train[i]))
                if text and text not in comments:
                    comments.append(text)
        if comments:
            lines.append("- The evaluation said: " + " | ".join(
                c if len(c) <= 300 else c[:300] + "..." for c in comments[:max_comments]))
    return "\n".join(lines)


_LABEL_SHAPES: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r"\([A-Za-z]\)"), "an option label in parentheses", " ((A), (B), (C), ...)"),
    (re.compile(r"[A-Za-z]"), "a single option letter", " (A, B, C, ...)"),
    (re.compile(r"(?i)yes|no"), "yes or no", ""),
    (re.compile(r"(?i)true|false"), "true or false", ""),
)
_SHAPES = (*_LABEL_SHAPES,
           (re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?%?"), "a number", ", such as 42"))
"""(the whole answer, its form in words, a made-up illustration). A label set is
illustrated by the whole series, never one label: the 1.5B editor copies "such as A"
into the prompt, and the task model then answers A (hellaswag seed 1: 77 of 100 test
replies, 25 expected; bbh_date: "e.g. (A)", 58 of 100)."""


def _shape(answers: Sequence[str]) -> tuple[str, str]:
    """The form `answers` share in words, and its illustration (may be empty)."""
    for pattern, words, illustration in _SHAPES:
        if all(pattern.fullmatch(a) for a in answers):
            return words, illustration
    n = sum(len(a.split()) for a in answers) / len(answers)
    if n <= 6:
        return f"short phrases of about {max(1, round(n))} word{'s' if round(n) > 1 else ''}", ""
    return f"free text of about {round(n)} words", ""


def answer_shape(answers: Sequence[str]) -> str:
    """The form the expected answers share, in words, with a made-up illustration.

    Never the answers themselves: a small editor pastes a shown answer ("end with the
    label (E)") into the prompt, which fits one example and misleads on the others.
    """
    return "".join(_shape(answers))


def answer_form(examples: Sequence[Example]) -> str | None:
    """The form the expected answers of `examples` share, in words and without an example
    (``"a number"``, ``"a single option letter"``); ``None`` when none has a reference
    answer (a task scored by a judge alone)."""
    answers = [a for ex in examples if (a := _answer(ex)) is not None]
    if not answers:
        return None
    return _shape(answers)[0].replace("short phrases", "a short phrase")


def labels(examples: Sequence[Example]) -> list[str]:
    """The expected answers of `examples` that are labels of a small fixed set (an option
    letter, with or without parentheses, yes/no, true/false), each once, sorted; numbers
    and phrases are not labels."""
    return sorted({a for ex in examples if (a := _answer(ex)) is not None
                   and any(pattern.fullmatch(a) for pattern, _, _ in _LABEL_SHAPES)})


def in_form(output: str, example: Example) -> bool | None:
    """Whether the whole reply takes the form of the row's expected answer (an option
    label, a letter, yes/no, true/false, a number), right or wrong; ``None`` when that
    answer has none of these forms (free text).

    Progress a 0/1 metric cannot see: on a task the start prompt fails everywhere
    because its replies are long, a prompt whose replies are ``(B)`` is closer.
    """
    answer = _answer(example)
    if answer is None:
        return None
    for pattern, _, _ in _SHAPES:
        if pattern.fullmatch(answer):
            return bool(pattern.fullmatch(output.strip().rstrip(".")))
    return None


def one_reply(records: Mapping[str, Record], candidate_id: str, val: Sequence[Example], *,
              share: float = 0.9, min_rows: int = 5) -> str | None:
    """A warning when `candidate_id` gave one short reply on at least `share` of the
    validation rows (``None`` otherwise): its score may be that of a fixed answer.

    Seen on label tasks: the bbh_sports winner answered "no" on all 100 test rows, and
    62 of them expect "no"; a search that fixes the reply's form can end on one label.
    """
    outs = [r["output"] for i in range(len(val))
            if "output" in (r := records.get(record_key(candidate_id, "val", i)) or {})]
    if len(outs) < min_rows:
        return None
    reply, n = Counter(_norm(o) for o in outs).most_common(1)[0]
    if not reply or len(reply) > 40 or n < share * len(outs):
        return None
    expect = sum(1 for ex in val if (a := _answer(ex)) is not None and _norm(a) == reply)
    return (f"the best prompt gives the same reply, {reply!r}, on {n} of {len(outs)} "
            f"validation rows, and {expect} of the {len(val)} rows expect it: its score may "
            "be that of a fixed answer, not of the task learned")


def cut_off_replies(records: Mapping[str, Record], candidate_id: str, val: Sequence[Example],
                    *, share: float = 0.2) -> str | None:
    """A warning when at least `share` of `candidate_id`'s validation replies stopped at
    the model's token cap (``None`` otherwise): the model's ``max_tokens``, not the
    prompt, may be what limits the score.

    Measured on svamp: 36 of the start prompt's 100 test replies stop at the 200-token
    cap, 31 of them wrong; prompts asking for brief working cut the replies to 10-30
    tokens and scored lower on test (0.44 and 0.52 against 0.61), because the 1.5B model
    needs its working. A prompt cannot buy that room; a larger cap can.
    """
    recs = [r for i in range(len(val))
            if "output" in (r := records.get(record_key(candidate_id, "val", i)) or {})]
    cut = sum(1 for r in recs if r.get("truncated"))
    if not recs or cut < share * len(recs):
        return None
    return (f"the best prompt's replies stopped at the model's token cap (max_tokens) on "
            f"{cut} of {len(recs)} validation rows: a larger cap may lift the score more "
            "than any prompt (a prompt that asks for shorter replies can cost accuracy)")


def edit_history(candidates: Mapping[str, Candidate], parent_id: str, *, limit: int = 2,
                 clip: int = 300) -> str:
    """Earlier children of `parent_id` that did not beat it, for the editor to avoid.

    A child did not help if it failed its screen (fixed none of the failures it was
    written for) or scored below its parent on the same batch.
    """
    parent = candidates[parent_id]
    lines = []
    for cand in candidates.values():
        if cand["parent_id"] != parent_id:
            continue
        screen: Mapping[str, Any] = cand.get("screen") or {}
        why = None
        if screen.get("passed") is False:
            why = (f"it scored {screen.get('score', 0):.2f} on the failed examples it was "
                   f"written for, the current prompt {screen.get('parent_score', 0):.2f}")
        else:
            for it, score in cand["scores"].items():
                if it in parent["scores"] and score < parent["scores"][it]:
                    why = f"it scored {score:.2f}, the current prompt {parent['scores'][it]:.2f}"
                    break
        if why is None:
            continue
        text = " ".join(cand["template"].split())
        text = text if len(text) <= clip else text[:clip] + "..."
        lines.append(f"- {text!r}: {why}")
    if not lines:
        return ""
    return ("\nEarlier edits of this prompt that did not help (do not repeat them):\n"
            + "\n".join(lines[-limit:]) + "\n")


# --- how a row is shown in the meta-prompts --------------------------------------------


def show_output(record: Record) -> str:
    """A recorded reply as the critique sees it: clipped, marked where it was cut off."""
    text = clip_shown(record.get("output") or f"(the call failed: {record.get('error')})")
    return text + " …(cut off here)" if record.get("truncated") else text


def show_feedback(record: Record) -> str:
    """What the evaluation said of a reply, with `CUT_OFF` first if it was cut off."""
    said = record.get("feedback") or "(no comment)"
    return f"{CUT_OFF}\n{said}" if record.get("truncated") else said


def clip_shown(text: str, limit: int = SHOW_LIMIT) -> str:
    """`text` as a meta-prompt shows it: cut at `limit` characters, saying so."""
    return text if len(text) <= limit else text[:limit] + " …(truncated)"


def _show(values: Mapping[str, Any]) -> str:
    if len(values) == 1:
        return clip_shown(str(next(iter(values.values()))))
    return "\n".join(f"{k}: {clip_shown(str(v))}" for k, v in values.items())


def show_inputs(ex: Example) -> str:
    """A row's inputs: the one value alone, or ``name: value`` lines."""
    return _show(ex["inputs"])


def show_reference(ex: Example) -> str:
    """A row's reference outputs: its ``answer``, else like `show_inputs`."""
    ref = ex.get("outputs") or {}
    if not ref:
        return "(none given)"
    if "answer" in ref:
        return clip_shown(str(ref["answer"]))
    return _show(ref)
