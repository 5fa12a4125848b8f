"""A self-contained HTML report of one GRAD-SUM run.

    from langchain_gradsum.report import write_report
    write_report(result, "report.html")        # an OptimizationResult or its dict

One file, no external scripts, styles or fonts: inline SVG charts and a few
lines of inline JavaScript (the page reads fine without it). The page is the
Jinja2 template ``templates/report.html.j2`` (autoescaped), with
``templates/report.css`` and ``templates/report.js`` inlined into it; this module
only works out what the page shows (plain values). So every piece of text that
came from a dataset or a model is escaped: a row containing ``<script>`` shows
as text.

The report reads the dict of `OptimizationResult.to_dict` (the ``result.json``
of ``gradsum optimize --out``). An optional ``"run"`` key adds the settings and
the dataset rows: ``{"settings": {...}, "models": {...}, "examples": {"train":
[...], "val": [...]}}``.
"""

from __future__ import annotations

import base64
import difflib
import functools
import hashlib
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from langchain_gradsum.state import ROLES, lineage, parse_record_key, record_key

__all__ = ["load_result", "render_report", "write_report"]

_CLIP = 600
# Colour-blind-friendly palette (Okabe-Ito, minus black) for candidate lines.
_LINEAGE = "#0072B2"
_PALETTE = ("#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#999999")


# --- loading -------------------------------------------------------------------------


def load_result(path: str | Path) -> dict[str, Any]:
    """Read a ``result.json``.

    Raises:
        ValueError: the file is missing, is not JSON, or is not a GradSum result.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file {str(path)!r} (expected the result.json of a run)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    return _as_dict(data, str(path))


def _as_dict(result: Any, what: str = "result") -> dict[str, Any]:
    if hasattr(result, "to_dict") and callable(result.to_dict):
        result = result.to_dict()
    if not isinstance(result, Mapping):
        raise TypeError(
            f"{what} must be an OptimizationResult or its dict, got {type(result).__name__}"
        )
    cands = result.get("candidates")
    if not isinstance(cands, Mapping) or not cands:
        raise ValueError(
            f"{what} is not a GradSum result: it has no 'candidates' (expected the dict "
            "written by OptimizationResult.save or `gradsum optimize --out`)"
        )
    for cid, cand in cands.items():
        if not isinstance(cand, Mapping) or "template" not in cand:
            raise ValueError(f"{what}: candidate {cid!r} has no 'template'")
    return dict(result)


# --- small helpers -------------------------------------------------------------------


def _clip(text: Any, limit: int = _CLIP) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[:limit] + " …"


def _num(id_: str) -> tuple[int, str]:
    digits = "".join(ch for ch in id_ if ch.isdigit())
    return (int(digits) if digits else 1 << 30, id_)


def _fmt(score: Any, digits: int = 3) -> str:
    if score is None or (isinstance(score, float) and math.isnan(score)):
        return "–"
    try:
        return f"{float(score):.{digits}f}"
    except (TypeError, ValueError):
        return str(score)


def _int(n: Any) -> str:
    try:
        return f"{int(n):,}"
    except (TypeError, ValueError):
        return "–"


def _duration(seconds: Any) -> str:
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        return "–"
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


# --- the model of the run the page is drawn from ---------------------------------------


class _Run:
    def __init__(self, d: dict[str, Any], examples: Mapping[str, Any] | None) -> None:
        self.d = d
        self.cands: dict[str, dict[str, Any]] = {
            cid: dict(c) for cid, c in sorted(d["candidates"].items(), key=lambda kv: _num(kv[0]))
        }
        self.ids = list(self.cands)
        self.index = {cid: i for i, cid in enumerate(self.ids)}
        self.best_id = d.get("best_id") if d.get("best_id") in self.cands else None
        self.initial_id = "c0" if "c0" in self.cands else self.ids[0]
        self.children: dict[str | None, list[str]] = {}
        for cid, c in self.cands.items():
            parent = c.get("parent_id")
            if parent not in self.cands:
                parent = None
            self.children.setdefault(parent, []).append(cid)
        self.lineage = self._lineage(self.best_id)
        scored = [int(it) for c in self.cands.values() for it in (c.get("scores") or {})]
        written = [int(c.get("iteration") or 0) for c in self.cands.values()]
        self.last_iter = max(scored + written + [int(d.get("iterations") or 0)])
        run = d.get("run")
        self.run: Mapping[str, Any] = run if isinstance(run, Mapping) else {}
        ex = examples if examples is not None else self.run.get("examples")
        self.examples: Mapping[str, Any] = ex if isinstance(ex, Mapping) else {}
        self.records: Mapping[str, Any] = d.get("records") or {}

    def _lineage(self, cid: str | None) -> list[str]:
        return lineage(self.cands, cid)

    def scores(self, cid: str) -> list[tuple[int, float]]:
        out = []
        for it, s in (self.cands[cid].get("scores") or {}).items():
            try:
                out.append((int(it), float(s)))
            except (TypeError, ValueError):
                continue
        return sorted(out)

    def best_by_iteration(self) -> list[tuple[int, float, str]]:
        best: dict[int, tuple[float, str]] = {}
        for cid in self.ids:
            for it, s in self.scores(cid):
                if it not in best or s > best[it][0]:
                    best[it] = (s, cid)
        return [(it, s, cid) for it, (s, cid) in sorted(best.items())]

    def final_split(self) -> str | None:
        split = self.d.get("split")
        if split == "val":
            return "val"
        if split == "train":
            return "train"
        return None

    def final_rows(self) -> list[int]:
        split = self.final_split()
        if split is None:
            return []
        finalists = [cid for cid in self.ids if self.cands[cid].get("val_score") is not None]
        rows: set[int] = set()
        for key in self.records:
            cid, _, rest = str(key).partition("|")
            sp, _, idx = rest.partition("|")
            if cid in finalists and sp == split and idx.isdigit():
                rows.add(int(idx))
        if split == "val":
            return sorted(rows)
        # Scored on train: only rows every finalist has (the full final pass).
        return sorted(i for i in rows if all(
            f"{cid}|train|{i}" in self.records for cid in finalists))


# --- the page -----------------------------------------------------------------------


def render_report(
    result: Any,
    *,
    title: str = "GRAD-SUM report",
    examples: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> str:
    """One self-contained HTML page describing a run.

    Args:
        result: An `OptimizationResult` or its ``to_dict()`` (a loaded result.json).
        title: The page title.
        examples: ``{"train": rows, "val": rows}`` to show each row's inputs
            (default: ``result["run"]["examples"]`` when present).

    Raises:
        ValueError / TypeError: `result` is not a GradSum result.
    """
    run = _Run(_as_dict(result), examples)
    css, js = _asset("report.css"), _asset("report.js")
    return _environment().get_template(_TEMPLATE).render(
        title=title,
        css=Markup(css),
        js=Markup(js),
        js_hash="sha256-" + base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode(),
        summary=_summary(run),
        chart=_chart(run),
        prompts=_prompts(run),
        tree=_tree(run),
        validation=_validation(run),
        usage=_usage(run),
        candidates=[_candidate(run, cid) for cid in run.ids],
        settings=_settings(run) if run.run else None,
    )


def write_report(result: Any, path: str | Path, **kwargs: Any) -> Path:
    """Render the report of `result` and write it to `path` (UTF-8)."""
    path = Path(path)
    page = render_report(result, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


# --- the template and its files (package data: langchain_gradsum/templates/) ---------

_TEMPLATE = "report.html.j2"


def _escape(value: Any) -> Markup:
    """Escape every ``{{ value }}`` of the template (None shows as nothing).

    The template is autoescaped; this finalizer escapes first, with the standard
    library's ``html.escape`` (so ``"`` is ``&quot;``), and passes markup the template
    made itself (a macro's output) through as it is.
    """
    if hasattr(value, "__html__"):
        return Markup(value)
    return Markup(html.escape("" if value is None else str(value), quote=True))


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("langchain_gradsum", "templates"),
        autoescape=True,
        finalize=_escape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(fmt=_fmt, number=_int, tokens=_fmt_tokens, duration=_duration,
                       f=format, trend=_trend, score_class=_score_cls)
    return env


@functools.cache
def _asset(name: str) -> str:
    """A CSS or JS file inlined into the page (read once)."""
    return (resources.files("langchain_gradsum") / "templates" / name).read_text(
        encoding="utf-8")


def _trend(diff: float) -> str:
    return "up" if diff > 0 else ("down" if diff < 0 else "flat")


def _score_cls(score: Any) -> str:
    if not isinstance(score, int | float):
        return "s-na"
    if score >= 0.999:
        return "s-hi"
    if score > 0:
        return "s-mid"
    return "s-lo"


def _fmt_tokens(value: Any) -> str:
    return f"{value:.0f}" if isinstance(value, int | float) else "–"


def _badges(run: _Run, cid: str, *, lineage: bool) -> dict[str, Any]:
    """The badges of a candidate: best, (in the lineage,) its final score."""
    return {"best": cid == run.best_id,
            "lineage": lineage and cid in run.lineage and cid != run.best_id,
            "val": run.cands[cid].get("val_score"),
            "split": run.d.get("split") or "val"}


# --- summary cards -------------------------------------------------------------------


def _summary(run: _Run) -> dict[str, Any]:
    d = run.d
    best, initial = d.get("best_score"), d.get("initial_score")
    delta = None
    if isinstance(best, int | float) and isinstance(initial, int | float):
        delta = best - initial
    settings = run.run.get("settings")
    settings = settings if isinstance(settings, Mapping) else {}
    usage = (d.get("usage") or {}).values()
    calls = d.get("total_calls")
    if calls is None:
        calls = sum(int(u.get("calls", 0)) for u in usage)
    tokens = d.get("total_tokens")
    if tokens is None:
        tokens = sum(int(u.get("input_tokens", 0)) + int(u.get("output_tokens", 0))
                     for u in usage)
    out_tokens = d.get("mean_output_tokens") or {}
    return {"best": best, "initial": initial, "delta": delta, "split": d.get("split") or "?",
            "best_id": run.best_id, "stop_reason": d.get("stop_reason") or "–",
            "iterations": d.get("iterations"), "calls": calls,
            "budget": settings.get("max_llm_calls"), "tokens": tokens,
            "out_best": out_tokens.get("best"), "out_initial": out_tokens.get("initial"),
            "wall_time": d.get("wall_time_s"), "n_candidates": len(run.ids),
            "warnings": [str(w) for w in d.get("warnings") or []],
            "comparison": d.get("comparison") if isinstance(d.get("comparison"), Mapping)
            else None}


# --- score chart ---------------------------------------------------------------------


class _Scale:
    """Iteration columns and scores to SVG coordinates."""

    W, H = 860, 320
    LEFT, RIGHT, TOP, BOTTOM = 44, 84, 16, 44

    def __init__(self, n_cols: int) -> None:
        self.n_cols = n_cols
        self.span = max(1, n_cols - 1)
        self.pw = self.W - self.LEFT - self.RIGHT
        self.ph = self.H - self.TOP - self.BOTTOM

    def x(self, col: float) -> float:
        pw = self.pw
        return round(self.LEFT + (pw * col / self.span if self.n_cols > 1 else pw / 2), 1)

    def y(self, score: float) -> float:
        return round(self.TOP + self.ph * (1 - max(0.0, min(1.0, score))), 1)


def _chart(run: _Run) -> dict[str, Any]:
    finals = [(cid, float(run.cands[cid]["val_score"])) for cid in run.ids
              if isinstance(run.cands[cid].get("val_score"), int | float)]
    sc = _Scale(run.last_iter + 1 + (1 if finals else 0))
    final = None
    if finals:
        fx, before = sc.x(sc.n_cols - 1), sc.x(sc.n_cols - 2)
        final = {"x": fx, "sep_x": (fx + before) / 2, "y1": sc.TOP, "y2": sc.H - sc.BOTTOM}
    return {
        "width": sc.W, "height": sc.H, "split": run.d.get("split") or "",
        "grid": [{"x1": sc.LEFT, "x2": sc.W - sc.RIGHT, "y": sc.y(i / 5),
                  "text_x": sc.LEFT - 8, "text_y": sc.y(i / 5) + 4, "label": f"{i / 5:.1f}"}
                 for i in range(6)],
        "columns": [{"x": sc.x(col), "label": col} for col in range(run.last_iter + 1)],
        "tick_y": sc.H - sc.BOTTOM + 18, "axis_y": sc.H - 6,
        "axis_x": sc.x(run.last_iter / 2) if run.last_iter else sc.x(0),
        "final": final,
        "beam": _chart_beam(run, sc),
        "lines": _chart_lines(run, sc),
        "finals": _chart_finals(run, sc, finals),
    }


def _colour(run: _Run, cid: str) -> str:
    return _LINEAGE if cid in run.lineage else _PALETTE[run.index[cid] % len(_PALETTE)]


def _chart_beam(run: _Run, sc: _Scale) -> dict[str, Any] | None:
    """The beam's best line."""
    best = run.best_by_iteration()
    if not best:
        return None
    return {"points": " ".join(f"{sc.x(it)},{sc.y(s)}" for it, s, _ in best),
            "dots": [{"x": sc.x(it), "y": sc.y(s), "iteration": it, "cid": cid, "score": s}
                     for it, s, cid in best]}


def _chart_lines(run: _Run, sc: _Scale) -> list[dict[str, Any]]:
    """Candidates: a thin line through each candidate's minibatch scores."""
    lines = []
    for cid in run.ids:
        pts = run.scores(cid)
        if not pts:
            continue
        lines.append({
            "cid": cid, "cls": "cand lin" if cid in run.lineage else "cand",
            "colour": _colour(run, cid),
            "title": f"{cid}: " + ", ".join(f"it {it} = {s:.3f}" for it, s in pts),
            "points": " ".join(f"{sc.x(it)},{sc.y(s)}" for it, s in pts) if len(pts) > 1
            else None,
            "dots": [{"x": sc.x(it), "y": sc.y(s), "iteration": it, "score": s}
                     for it, s in pts],
        })
    return lines


def _chart_finals(run: _Run, sc: _Scale,
                  finals: list[tuple[str, float]]) -> list[dict[str, Any]]:
    """Final scores, labels pushed apart so equal scores stay readable (best first)."""
    out = []
    label_y = float("-inf")
    for cid, s in sorted(finals, key=lambda f: (-f[1], f[0] != run.best_id, _num(f[0]))):
        fx, fy = sc.x(sc.n_cols - 1), sc.y(s)
        label_y = max(fy + 4, label_y + 14)
        out.append({"cid": cid, "cls": "final best" if cid == run.best_id else "final",
                    "colour": _colour(run, cid), "x": fx, "y": fy, "label_y": label_y,
                    "score": s})
    return out


# --- prompts -------------------------------------------------------------------------


def _prompts(run: _Run) -> dict[str, Any]:
    first = run.cands[run.initial_id]
    final_id = run.best_id or run.initial_id
    final = run.cands[final_id]
    unchanged = final_id == run.initial_id
    return {"unchanged": unchanged, "lineage": run.lineage,
            "initial_id": run.initial_id, "initial_score": first.get("val_score"),
            "initial": first.get("template"),
            "final_id": final_id, "final_score": final.get("val_score"),
            "final": final.get("template"),
            "diff": None if unchanged else _diff(first.get("template"), final.get("template"))}


_Part = tuple[str, str]  # ("", text) | ("del", text) | ("ins", text)


def _diff(old: Any, new: Any) -> list[dict[str, Any]]:
    """A line diff (difflib) with the changed words of replaced lines marked."""
    a = str(old or "").splitlines() or [""]
    b = str(new or "").splitlines() or [""]

    def line(cls: str, parts: list[_Part]) -> dict[str, Any]:
        return {"cls": cls, "gutter": {"eq": " ", "del": "-", "ins": "+"}[cls], "parts": parts}

    rows: list[dict[str, Any]] = []
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            rows += [line("eq", [("", text)]) for text in a[i1:i2]]
            continue
        old_lines, new_lines = a[i1:i2], b[j1:j2]
        if tag == "replace" and len(old_lines) == len(new_lines):
            for ol, nl in zip(old_lines, new_lines, strict=True):
                o, n = _word_diff(ol, nl)
                rows += [line("del", o), line("ins", n)]
            continue
        rows += [line("del", [("", text)]) for text in old_lines]
        rows += [line("ins", [("", text)]) for text in new_lines]
    return rows


def _word_diff(old: str, new: str) -> tuple[list[_Part], list[_Part]]:
    a, b = re.split(r"(\s+)", old), re.split(r"(\s+)", new)
    o: list[_Part] = []
    n: list[_Part] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            o.append(("", "".join(a[i1:i2])))
            n.append(("", "".join(b[j1:j2])))
            continue
        if i2 > i1:
            o.append(("del", "".join(a[i1:i2])))
        if j2 > j1:
            n.append(("ins", "".join(b[j1:j2])))
    return o, n


# --- lineage -------------------------------------------------------------------------


def _tree(run: _Run) -> list[dict[str, Any]]:
    """The lineage tree: each node with its children (nested up to 200 deep)."""

    def node(cid: str, depth: int) -> dict[str, Any]:
        c = run.cands[cid]
        pts = run.scores(cid)
        parent = c.get("parent_id")
        delta = None
        if parent in run.cands and pts:
            ppts = dict(run.scores(parent))
            it0, s0 = pts[0]
            if it0 in ppts:
                delta = s0 - ppts[it0]
        kids = run.children.get(cid, []) if depth < 200 else []
        return {"cid": cid, "cls": "node lin" if cid in run.lineage else "node",
                "iteration": c.get("iteration"),
                "minibatch": " → ".join(f"{s:.2f}" for _, s in pts) or "not scored",
                "delta": delta, "badges": _badges(run, cid, lineage=False),
                "children": [node(k, depth + 1) for k in kids]}

    return [node(r, 0) for r in run.children.get(None, [])]


# --- validation ----------------------------------------------------------------------


def _validation_title(run: _Run) -> str:
    split = run.final_split()
    if split == "val":
        return "Validation scores"
    if split == "train":
        return "Final scores (on the training set: no validation set was given)"
    return "Validation scores"


def _row_examples(run: _Run, split: str) -> Sequence[Any]:
    rows = run.examples.get(split)
    return rows if isinstance(rows, Sequence) else []


def _show_values(values: Any) -> str:
    if isinstance(values, Mapping):
        if len(values) == 1:
            return _clip(next(iter(values.values())), 300)
        return _clip("; ".join(f"{k}: {v}" for k, v in values.items()), 300)
    return _clip(values, 300)


def _unit(score: Any) -> float | None:
    """A score clamped to [0, 1] (None if it is not a number), for a bar."""
    try:
        return max(0.0, min(1.0, float(score)))
    except (TypeError, ValueError):
        return None


def _validation(run: _Run) -> dict[str, Any]:
    split = run.final_split()
    finalists = sorted(
        (cid for cid in run.ids if run.cands[cid].get("val_score") is not None),
        key=lambda c: -float(run.cands[c]["val_score"]),
    )
    view: dict[str, Any] = {"title": _validation_title(run), "split": split, "finalists": [],
                            "stop_reason": run.d.get("stop_reason") or "?", "rows": []}
    if split is None or not finalists:
        return view
    view["finalists"] = [{"cid": c, "best": c == run.best_id,
                          "bar": _unit(run.cands[c]["val_score"])} for c in finalists]
    ex_rows = _row_examples(run, split)
    for i in run.final_rows():
        ex = ex_rows[i] if i < len(ex_rows) and isinstance(ex_rows[i], Mapping) else None
        cells = []
        for c in finalists:
            rec = run.records.get(record_key(c, split, i)) or {}
            tip = rec.get("output") if "output" in rec else rec.get("error", "")
            cells.append({"score": rec.get("score"), "tip": _clip(tip, 400)})
        example = None if ex is None else {"inputs": _show_values(ex.get("inputs")),
                                           "outputs": _show_values(ex.get("outputs"))}
        view["rows"].append({"index": i, "example": example, "cells": cells})
    return view


# --- usage ---------------------------------------------------------------------------


def _usage(run: _Run) -> dict[str, Any]:
    usage: Mapping[str, Any] = run.d.get("usage") or {}
    roles = [r for r in ROLES if r in usage] + sorted(r for r in usage if r not in ROLES)
    counters: Mapping[str, Any] = run.d.get("counters") or {}
    view: dict[str, Any] = {"rows": [], "total": {"calls": 0, "input": 0, "output": 0},
                            "counters": [(k.replace("_", " "), v)
                                         for k, v in sorted(counters.items())]}
    if not roles:
        return view
    numbers = [(r, int(usage[r].get("calls", 0)), int(usage[r].get("input_tokens", 0)),
                int(usage[r].get("output_tokens", 0))) for r in roles]
    total_calls = sum(calls for _, calls, _, _ in numbers) or 1
    max_tokens = max((tin + tout for _, _, tin, tout in numbers), default=0) or 1
    total = view["total"]
    for role, calls, tin, tout in numbers:
        total["calls"] += calls
        total["input"] += tin
        total["output"] += tout
        view["rows"].append({"role": role, "calls": calls, "input": tin, "output": tout,
                             "share": 100 * calls / total_calls,
                             "tokens_width": 100 * (tin + tout) / max_tokens})
    return view


# --- candidates ----------------------------------------------------------------------


def _candidate(run: _Run, cid: str) -> dict[str, Any]:
    c = run.cands[cid]
    parent = c.get("parent_id") if c.get("parent_id") in run.cands else None
    grads: Mapping[str, Any] = c.get("gradients") or {}
    sums: Mapping[str, Any] = c.get("summaries") or {}
    return {
        "cid": cid, "best": cid == run.best_id, "lineage": cid in run.lineage,
        "iteration": c.get("iteration"), "parent": parent, "scores": run.scores(cid),
        "badges": _badges(run, cid, lineage=True),
        "summary": c.get("summary"), "template": c.get("template"),
        "diff": _diff(run.cands[parent].get("template"), c.get("template")) if parent else None,
        "critiques": [{"iteration": it, "gradients": grads.get(it) or [], "summary": sums.get(it)}
                      for it in sorted({*grads, *sums}, key=lambda k: _num(str(k)))],
        "outputs": _outputs(run, cid),
    }


def _outputs(run: _Run, cid: str) -> list[dict[str, Any]]:
    recs = []
    for key, rec in run.records.items():
        parsed = parse_record_key(key)
        if parsed is None or parsed[0] != cid or not isinstance(rec, Mapping):
            continue
        _, split, row = parsed
        recs.append(((split != "train", split, row), split, str(row), rec))
    recs.sort(key=lambda r: r[0])
    return [{"split": split, "index": idx, "score": rec.get("score"),
             "output": _clip(rec.get("output") if "output" in rec
                             else f"(error) {rec.get('error', '')}"),
             "feedback": _clip(rec.get("feedback"))}
            for _, split, idx, rec in recs]


# --- settings ------------------------------------------------------------------------


def _settings(run: _Run) -> list[tuple[str, str]]:
    items: list[tuple[str, Any]] = []
    for key in ("models", "settings"):
        block = run.run.get(key)
        if isinstance(block, Mapping):
            items += [(k, v) for k, v in block.items()]
    for key, value in run.run.items():
        if key not in ("models", "settings", "examples"):
            items.append((key, value))
    return [(k, v if isinstance(v, str) else json.dumps(v, default=str)) for k, v in items]
