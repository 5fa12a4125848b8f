"""A self-contained HTML report of one GRAD-SUM run.

    from langchain_gradsum.report import write_report
    write_report(result, "report.html")        # an OptimizationResult or its dict

One file, no external scripts, styles or fonts: inline SVG charts and a few
lines of inline JavaScript (the page reads fine without it). Every piece of
text that came from a dataset or a model is escaped, so a row containing
``<script>`` shows as text.

The report reads the dict of `OptimizationResult.to_dict` (the ``result.json``
of ``gradsum optimize --out``). An optional ``"run"`` key adds the settings and
the dataset rows: ``{"settings": {...}, "models": {...}, "examples": {"train":
[...], "val": [...]}}``.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from langchain_gradsum.state import (
    ROLES,
    best_by_iteration,
    lineage,
    parse_record_key,
    record_key,
)

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


def _e(value: Any) -> str:
    """Escape any value for HTML text or an attribute."""
    return html.escape("" if value is None else str(value), quote=True)


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
        return _e(score)


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


def _colour(index: int) -> str:
    return _PALETTE[index % len(_PALETTE)]


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
        self.lineage = lineage(self.cands, self.best_id)
        scored = [int(it) for c in self.cands.values() for it in (c.get("scores") or {})]
        written = [int(c.get("iteration") or 0) for c in self.cands.values()]
        self.last_iter = max(scored + written + [int(d.get("iterations") or 0)])
        run = d.get("run")
        self.run: Mapping[str, Any] = run if isinstance(run, Mapping) else {}
        ex = examples if examples is not None else self.run.get("examples")
        self.examples: Mapping[str, Any] = ex if isinstance(ex, Mapping) else {}
        self.records: Mapping[str, Any] = d.get("records") or {}

    def scores(self, cid: str) -> list[tuple[int, float]]:
        out = []
        for it, s in (self.cands[cid].get("scores") or {}).items():
            try:
                out.append((int(it), float(s)))
            except (TypeError, ValueError):
                continue
        return sorted(out)

    def best_by_iteration(self) -> list[tuple[int, float, str]]:
        best = best_by_iteration({cid: {"scores": dict(self.scores(cid))} for cid in self.ids})
        return [(it, s, cid) for it, (s, cid) in best.items()]

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
            parsed = parse_record_key(key)
            if parsed is not None and parsed[0] in finalists and parsed[1] == split:
                rows.add(parsed[2])
        if split == "val":
            return sorted(rows)
        # Scored on train: only rows every finalist has (the full final pass).
        return sorted(i for i in rows if all(
            record_key(cid, "train", i) in self.records for cid in finalists))


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
    sections = [
        _summary(run),
        _section("scores", "Score per iteration", _score_chart(run)),
        _section("prompts", "Initial vs final prompt", _prompts(run)),
        _section("lineage", "Lineage", _lineage_tree(run)),
        _section("validation", _validation_title(run), _validation(run)),
        _section("usage", "Calls and tokens by module", _usage(run)),
        _section("candidates", "Candidates", _candidates(run)),
    ]
    if run.run:
        sections.append(_section("settings", "Run settings", _settings(run)))
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        # Belt and braces on top of escaping: nothing may load from elsewhere, and
        # the only script allowed to run is the page's own (by its hash).
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        f"style-src 'unsafe-inline'; script-src '{_JS_HASH}'; img-src data:\">\n"
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n<header><h1>{_e(title)}</h1>"
        "<p class=\"sub\">GRAD-SUM prompt optimization (arXiv 2407.12865)"
        " &middot; <button type=\"button\" id=\"expand-all\" class=\"js-only\">expand all</button>"
        " <button type=\"button\" id=\"collapse-all\" class=\"js-only\">collapse all</button></p>"
        "</header>\n<main>\n"
        f"{_nav()}\n{body}\n</main>\n<script>{_JS}</script>\n</body>\n</html>\n"
    )


def write_report(result: Any, path: str | Path, **kwargs: Any) -> Path:
    """Render the report of `result` and write it to `path` (UTF-8)."""
    path = Path(path)
    page = render_report(result, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _nav() -> str:
    links = [("scores", "Scores"), ("prompts", "Prompts"), ("lineage", "Lineage"),
             ("validation", "Validation"), ("usage", "Calls & tokens"),
             ("candidates", "Candidates")]
    return "<nav>" + " ".join(f"<a href=\"#{a}\">{t}</a>" for a, t in links) + "</nav>"


def _section(anchor: str, title: str, content: str) -> str:
    return f"<section id=\"{anchor}\"><h2>{_e(title)}</h2>\n{content}\n</section>"


def _summary(run: _Run) -> str:
    d = run.d
    split = d.get("split") or "?"
    best, initial = d.get("best_score"), d.get("initial_score")
    delta = ""
    if isinstance(best, int | float) and isinstance(initial, int | float):
        diff = best - initial
        cls = "up" if diff > 0 else ("down" if diff < 0 else "flat")
        delta = f"<span class=\"delta {cls}\">{diff:+.3f}</span>"
    settings = run.run.get("settings")
    settings = settings if isinstance(settings, Mapping) else {}
    budget = settings.get("max_llm_calls")
    calls = d.get("total_calls")
    if calls is None:
        calls = sum(int(u.get("calls", 0)) for u in (d.get("usage") or {}).values())
    tokens = d.get("total_tokens")
    if tokens is None:
        tokens = sum(int(u.get("input_tokens", 0)) + int(u.get("output_tokens", 0))
                     for u in (d.get("usage") or {}).values())
    cards = [
        ("Best score", f"{_fmt(best)} {delta}", f"on {_e(split)} &middot; candidate "
         + (f"<a href=\"#cand-{_e(run.best_id)}\">{_e(run.best_id)}</a>" if run.best_id
            else "–")),
        ("Initial score", _fmt(initial), f"on {_e(split)}"),
        ("Stop reason", f"<span class=\"stop\">{_e(d.get('stop_reason') or '–')}</span>",
         f"after {_int(d.get('iterations'))} iteration(s)"),
        ("LLM calls", _int(calls), f"of a budget of {_int(budget)}" if budget else "no budget cap"),
        ("Tokens", _int(tokens), "input + output"),
        ("Output tokens per call", _fmt_tokens((d.get("mean_output_tokens") or {}).get("best")),
         "best prompt; initial "
         + _fmt_tokens((d.get("mean_output_tokens") or {}).get("initial"))),
        ("Wall time", _duration(d.get("wall_time_s")), f"{len(run.ids)} candidate(s) written"),
    ]
    html_cards = "".join(
        f"<div class=\"card\"><div class=\"k\">{k}</div><div class=\"v\">{v}</div>"
        f"<div class=\"n\">{n}</div></div>" for k, v, n in cards
    )
    return f"<section id=\"summary\" class=\"cards\">{html_cards}</section>"


# --- score chart ---------------------------------------------------------------------


def _fmt_tokens(value: Any) -> str:
    return f"{value:.0f}" if isinstance(value, int | float) else "–"


def _score_chart(run: _Run) -> str:
    W, H = 860, 320
    left, right, top, bottom = 44, 84, 16, 44
    finals = [(cid, float(run.cands[cid]["val_score"])) for cid in run.ids
              if isinstance(run.cands[cid].get("val_score"), int | float)]
    n_cols = run.last_iter + 1 + (1 if finals else 0)
    span = max(1, n_cols - 1)
    pw, ph = W - left - right, H - top - bottom

    def x(col: float) -> float:
        return round(left + (pw * col / span if n_cols > 1 else pw / 2), 1)

    def y(score: float) -> float:
        return round(top + ph * (1 - max(0.0, min(1.0, score))), 1)

    parts = [f"<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" "
             "aria-label=\"Minibatch score per iteration for every candidate\" "
             "xmlns=\"http://www.w3.org/2000/svg\">"]
    for i in range(6):  # horizontal grid
        v = i / 5
        parts.append(f"<line class=\"grid\" x1=\"{left}\" x2=\"{W - right}\" y1=\"{y(v)}\" "
                     f"y2=\"{y(v)}\"/><text class=\"tick\" x=\"{left - 8}\" y=\"{y(v) + 4}\" "
                     f"text-anchor=\"end\">{v:.1f}</text>")
    for col in range(run.last_iter + 1):
        parts.append(f"<text class=\"tick\" x=\"{x(col)}\" y=\"{H - bottom + 18}\" "
                     f"text-anchor=\"middle\">{col}</text>")
    parts.append(f"<text class=\"axis\" x=\"{x(run.last_iter / 2) if run.last_iter else x(0)}\" "
                 f"y=\"{H - 6}\" text-anchor=\"middle\">iteration (minibatch score)</text>")
    if finals:
        fx = x(n_cols - 1)
        parts.append(f"<line class=\"sep\" x1=\"{(fx + x(n_cols - 2)) / 2}\" "
                     f"x2=\"{(fx + x(n_cols - 2)) / 2}\" y1=\"{top}\" y2=\"{H - bottom}\"/>")
        parts.append(f"<text class=\"tick\" x=\"{fx}\" y=\"{H - bottom + 18}\" "
                     f"text-anchor=\"middle\">final</text>"
                     f"<text class=\"axis\" x=\"{fx}\" y=\"{H - 6}\" text-anchor=\"middle\">"
                     f"{_e(run.d.get('split') or '')} score</text>")
    lineage = set(run.lineage)
    # The beam's best line.
    best = run.best_by_iteration()
    if best:
        coords = " ".join(f"{x(it)},{y(s)}" for it, s, _ in best)
        parts.append(f"<g class=\"beam\"><polyline points=\"{coords}\"/>")
        for it, s, cid in best:
            parts.append(f"<circle cx=\"{x(it)}\" cy=\"{y(s)}\" r=\"3\"><title>best at "
                         f"iteration {it}: {_e(cid)} = {s:.3f}</title></circle>")
        parts.append("</g>")
    # Candidates: a thin line through each candidate's minibatch scores.
    for cid in run.ids:
        pts = run.scores(cid)
        if not pts:
            continue
        cls = "cand lin" if cid in lineage else "cand"
        colour = _LINEAGE if cid in lineage else _colour(run.index[cid])
        title = f"{cid}: " + ", ".join(f"it {it} = {s:.3f}" for it, s in pts)
        parts.append(f"<g class=\"{cls}\" data-cid=\"{_e(cid)}\" style=\"--c:{colour}\">"
                     f"<title>{_e(title)}</title>")
        if len(pts) > 1:
            coords = " ".join(f"{x(it)},{y(s)}" for it, s in pts)
            parts.append(f"<polyline points=\"{coords}\"/>")
        for it, s in pts:
            parts.append(f"<circle cx=\"{x(it)}\" cy=\"{y(s)}\" r=\"4\"><title>"
                         f"{_e(cid)} · iteration {it} · {s:.3f}</title></circle>")
        parts.append("</g>")
    # Final scores, labels pushed apart so equal scores stay readable (best first).
    label_y = float("-inf")
    for cid, s in sorted(finals, key=lambda f: (-f[1], f[0] != run.best_id, _num(f[0]))):
        cls = "final best" if cid == run.best_id else "final"
        fx, fy = x(n_cols - 1), y(s)
        label_y = max(fy + 4, label_y + 14)
        colour = _LINEAGE if cid in lineage else _colour(run.index[cid])
        parts.append(f"<g class=\"{cls}\" data-cid=\"{_e(cid)}\" style=\"--c:{colour}\">"
                     f"<path d=\"M{fx} {fy - 6}L{fx + 6} {fy}L{fx} {fy + 6}L{fx - 6} {fy}Z\">"
                     f"<title>{_e(cid)} · {_e(run.d.get('split') or '')} {s:.3f}</title></path>"
                     f"<text x=\"{fx + 10}\" y=\"{label_y}\">{_e(cid)} {s:.2f}</text></g>")
    parts.append("</svg>")
    return ("<p class=\"hint\">Every dot is one candidate's mean minibatch score in one "
            "iteration (a fresh minibatch each iteration); the wide grey band is the beam's best. "
            + ("The diamonds on the right are the final scores of the finalists. " if finals
               else "")
            + "Hover a dot for its candidate.</p>" + _LEGEND + "".join(parts))


_LEGEND = (
    "<div class=\"legend\">"
    "<span><svg width=\"26\" height=\"10\"><line x1=\"0\" x2=\"26\" y1=\"5\" y2=\"5\" "
    "stroke=\"#1f2328\" stroke-width=\"5\" opacity=\".35\"/></svg> beam best</span>"
    "<span><svg width=\"26\" height=\"10\"><line x1=\"0\" x2=\"26\" y1=\"5\" y2=\"5\" "
    "stroke=\"#0072B2\" stroke-width=\"2.5\"/></svg> lineage of the best</span>"
    "<span><svg width=\"26\" height=\"10\"><line x1=\"0\" x2=\"26\" y1=\"5\" y2=\"5\" "
    "stroke=\"#E69F00\" stroke-width=\"1.5\" opacity=\".5\"/></svg> "
    "other candidates (a colour each)</span>"
    "<span><svg width=\"12\" height=\"12\"><path d=\"M6 0L12 6L6 12L0 6Z\" fill=\"#888\"/>"
    "</svg> final score</span></div>"
)


# --- prompts -------------------------------------------------------------------------


def _prompts(run: _Run) -> str:
    first = run.cands[run.initial_id]
    final_id = run.best_id or run.initial_id
    final = run.cands[final_id]
    if final_id == run.initial_id:
        note = "<p class=\"hint\">The initial prompt stayed the best; nothing beat it.</p>"
    else:
        path = " → ".join(f"<a href=\"#cand-{_e(c)}\">{_e(c)}</a>" for c in run.lineage)
        note = f"<p class=\"hint\">Lineage of the final prompt: {path}</p>"
    return (
        note + "<div class=\"side\">"
        f"<div><h3>Initial <span class=\"id\">{_e(run.initial_id)}</span> "
        f"<span class=\"score\">{_fmt(first.get('val_score'))}</span></h3>"
        f"<pre class=\"prompt\" id=\"prompt-initial\">{_e(first.get('template'))}</pre></div>"
        f"<div><h3>Final <span class=\"id\">{_e(final_id)}</span> "
        f"<span class=\"score\">{_fmt(final.get('val_score'))}</span></h3>"
        f"<pre class=\"prompt\" id=\"prompt-final\">{_e(final.get('template'))}</pre></div>"
        "</div>"
        + ("" if final_id == run.initial_id else
           "<h3>Diff, initial → final</h3>" + _diff(first.get("template"), final.get("template")))
    )


def _diff(old: Any, new: Any) -> str:
    """A line diff (difflib) with the changed words of replaced lines marked."""
    a = str(old or "").splitlines() or [""]
    b = str(new or "").splitlines() or [""]
    rows: list[str] = []
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            rows += [f"<div class=\"dl eq\"><span class=\"g\"> </span>{_e(line)}</div>"
                     for line in a[i1:i2]]
            continue
        old_lines, new_lines = a[i1:i2], b[j1:j2]
        if tag == "replace" and len(old_lines) == len(new_lines):
            for ol, nl in zip(old_lines, new_lines, strict=True):
                o, n = _word_diff(ol, nl)
                rows.append(f"<div class=\"dl del\"><span class=\"g\">-</span>{o}</div>")
                rows.append(f"<div class=\"dl ins\"><span class=\"g\">+</span>{n}</div>")
            continue
        rows += [f"<div class=\"dl del\"><span class=\"g\">-</span>{_e(line)}</div>"
                 for line in old_lines]
        rows += [f"<div class=\"dl ins\"><span class=\"g\">+</span>{_e(line)}</div>"
                 for line in new_lines]
    return "<div class=\"diff\">" + "".join(rows) + "</div>"


def _word_diff(old: str, new: str) -> tuple[str, str]:
    a, b = re.split(r"(\s+)", old), re.split(r"(\s+)", new)
    o: list[str] = []
    n: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            o.append(_e("".join(a[i1:i2])))
            n.append(_e("".join(b[j1:j2])))
            continue
        if i2 > i1:
            o.append(f"<del>{_e(''.join(a[i1:i2]))}</del>")
        if j2 > j1:
            n.append(f"<ins>{_e(''.join(b[j1:j2]))}</ins>")
    return "".join(o), "".join(n)


# --- lineage -------------------------------------------------------------------------


def _lineage_tree(run: _Run) -> str:
    lineage = set(run.lineage)

    def node(cid: str, depth: int) -> str:
        c = run.cands[cid]
        pts = run.scores(cid)
        mb = " → ".join(f"{s:.2f}" for _, s in pts) or "not scored"
        parent = c.get("parent_id")
        delta = ""
        if parent in run.cands and pts:
            ppts = dict(run.scores(parent))
            it0, s0 = pts[0]
            if it0 in ppts:
                d = s0 - ppts[it0]
                trend = "up" if d > 0 else "down" if d < 0 else "flat"
                delta = f" <span class=\"delta {trend}\">{d:+.2f} vs parent</span>"
        val = c.get("val_score")
        badges = []
        if cid == run.best_id:
            badges.append("<span class=\"badge best\">best</span>")
        if val is not None:
            badges.append(f"<span class=\"badge val\">{_e(run.d.get('split') or 'val')} "
                          f"{_fmt(val)}</span>")
        cls = "node lin" if cid in lineage else "node"
        kids = run.children.get(cid, [])
        inner = (f"<span class=\"{cls}\" data-cid=\"{_e(cid)}\">"
                 f"<a href=\"#cand-{_e(cid)}\">{_e(cid)}</a>"
                 f"<span class=\"meta\">it {_int(c.get('iteration'))} · minibatch {mb}</span>"
                 f"{delta} {''.join(badges)}</span>")
        if kids and depth < 200:
            inner += "<ul>" + "".join(f"<li>{node(k, depth + 1)}</li>" for k in kids) + "</ul>"
        return inner

    roots = run.children.get(None, [])
    return ("<p class=\"hint\">Parent → child: each child was written by the edit module from "
            "its parent's summarized critiques. Scores are mean minibatch scores per iteration "
            "(the first compared with the parent on the same minibatch).</p>"
            "<ul class=\"tree\">" + "".join(f"<li>{node(r, 0)}</li>" for r in roots) + "</ul>")


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


def _validation(run: _Run) -> str:
    split = run.final_split()
    finalists = sorted(
        (cid for cid in run.ids if run.cands[cid].get("val_score") is not None),
        key=lambda c: -float(run.cands[c]["val_score"]),
    )
    if split is None or not finalists:
        return ("<p class=\"hint\">The run did not reach its final validation "
                f"(stop reason: {_e(run.d.get('stop_reason') or '?')}); the best candidate "
                "was picked on its latest minibatch score.</p>")
    head = "".join(
        f"<th data-cid=\"{_e(c)}\"><a href=\"#cand-{_e(c)}\">{_e(c)}</a>"
        + (" ★" if c == run.best_id else "") + "</th>" for c in finalists)
    table = [f"<table class=\"val\"><thead><tr><th>candidate</th>{head}</tr></thead><tbody>",
             "<tr class=\"mean\"><th>mean</th>"
             + "".join(f"<td>{_bar(run.cands[c]['val_score'])}</td>" for c in finalists)
             + "</tr>"]
    rows = run.final_rows()
    ex_rows = _row_examples(run, split)
    for i in rows:
        ex = ex_rows[i] if i < len(ex_rows) and isinstance(ex_rows[i], Mapping) else None
        label = f"row {i}"
        if ex is not None:
            label += (f"<div class=\"rowin\">{_e(_show_values(ex.get('inputs')))}</div>"
                      f"<div class=\"rowref\">reference: {_e(_show_values(ex.get('outputs')))}"
                      "</div>")
        cells = []
        for c in finalists:
            rec = run.records.get(record_key(c, split, i)) or {}
            score = rec.get("score")
            tip = rec.get("output") if "output" in rec else rec.get("error", "")
            cells.append(f"<td class=\"{_score_cls(score)}\" title=\"{_e(_clip(tip, 400))}\">"
                         f"{_fmt(score, 2)}</td>")
        table.append(f"<tr><th class=\"rowh\">{label}</th>{''.join(cells)}</tr>")
    table.append("</tbody></table>")
    return (f"<p class=\"hint\">The final beam and the initial prompt, each scored on every "
            f"{_e(split)} row; the best (★) is the result. Hover a cell for the output.</p>"
            + "".join(table))


def _score_cls(score: Any) -> str:
    if not isinstance(score, int | float):
        return "s-na"
    if score >= 0.999:
        return "s-hi"
    if score > 0:
        return "s-mid"
    return "s-lo"


def _bar(score: Any) -> str:
    try:
        s = max(0.0, min(1.0, float(score)))
    except (TypeError, ValueError):
        return "–"
    return (f"<span class=\"bar\"><span style=\"width:{s * 100:.1f}%\"></span></span> "
            f"{s:.3f}")


# --- usage ---------------------------------------------------------------------------


def _usage(run: _Run) -> str:
    usage: Mapping[str, Any] = run.d.get("usage") or {}
    roles = [r for r in ROLES if r in usage] + sorted(r for r in usage if r not in ROLES)
    if not roles:
        return "<p class=\"hint\">No LLM calls were recorded.</p>"
    total_calls = sum(int(usage[r].get("calls", 0)) for r in roles) or 1
    max_tokens = max((int(usage[r].get("input_tokens", 0)) + int(usage[r].get("output_tokens", 0))
                      for r in roles), default=0) or 1
    rows = []
    tot = {"calls": 0, "input_tokens": 0, "output_tokens": 0}
    for r in roles:
        u = usage[r]
        calls, tin, tout = (int(u.get("calls", 0)), int(u.get("input_tokens", 0)),
                            int(u.get("output_tokens", 0)))
        tot["calls"] += calls
        tot["input_tokens"] += tin
        tot["output_tokens"] += tout
        rows.append(
            f"<tr><th>{_e(r)}</th><td>{calls:,}</td>"
            f"<td><span class=\"bar\"><span style=\"width:{100 * calls / total_calls:.1f}%\">"
            f"</span></span> {100 * calls / total_calls:.0f}%</td>"
            f"<td>{tin:,}</td><td>{tout:,}</td>"
            f"<td><span class=\"bar tok\"><span style=\"width:"
            f"{100 * (tin + tout) / max_tokens:.1f}%\"></span></span> {tin + tout:,}</td></tr>")
    rows.append(f"<tr class=\"total\"><th>total</th><td>{tot['calls']:,}</td><td></td>"
                f"<td>{tot['input_tokens']:,}</td><td>{tot['output_tokens']:,}</td>"
                f"<td>{tot['input_tokens'] + tot['output_tokens']:,}</td></tr>")
    counters: Mapping[str, Any] = run.d.get("counters") or {}
    counter_html = ""
    if counters:
        counter_html = ("<h3>Events</h3><dl class=\"counters\">" + "".join(
            f"<dt>{_e(k.replace('_', ' '))}</dt><dd>{_int(v)}</dd>"
            for k, v in sorted(counters.items())) + "</dl>")
    return ("<table class=\"usage\"><thead><tr><th>module</th><th>calls</th><th>share</th>"
            "<th>input tokens</th><th>output tokens</th><th>tokens</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>" + counter_html)


# --- candidates ----------------------------------------------------------------------


def _candidates(run: _Run) -> str:
    out = ["<p class=\"hint\">Each candidate: the summary that produced it, its prompt, a line "
           "diff against its parent, the critiques (gradients) it received and its outputs.</p>"]
    for cid in run.ids:
        out.append(_candidate(run, cid))
    return "".join(out)


def _candidate(run: _Run, cid: str) -> str:
    c = run.cands[cid]
    parent = c.get("parent_id") if c.get("parent_id") in run.cands else None
    pts = run.scores(cid)
    badges = []
    if cid == run.best_id:
        badges.append("<span class=\"badge best\">best</span>")
    if cid in run.lineage and cid != run.best_id:
        badges.append("<span class=\"badge lin\">lineage</span>")
    if c.get("val_score") is not None:
        badges.append(f"<span class=\"badge val\">{_e(run.d.get('split') or 'val')} "
                      f"{_fmt(c.get('val_score'))}</span>")
    head = (f"<summary><span class=\"id\">{_e(cid)}</span>"
            f"<span class=\"meta\">iteration {_int(c.get('iteration'))}"
            + (f" · parent <a href=\"#cand-{_e(parent)}\">{_e(parent)}</a>" if parent else
               " · initial prompt")
            + (" · minibatch " + ", ".join(f"it {it}: {s:.2f}" for it, s in pts) if pts else
               " · not scored")
            + f"</span> {''.join(badges)}</summary>")
    body = []
    if c.get("summary"):
        body.append("<h4>Produced from this summary of the parent's critiques</h4>"
                    f"<blockquote class=\"summary\">{_e(c['summary'])}</blockquote>")
    body.append(f"<h4>Prompt</h4><pre class=\"prompt\">{_e(c.get('template'))}</pre>")
    if parent:
        body.append(f"<h4>Diff against parent {_e(parent)}</h4>"
                    + _diff(run.cands[parent].get("template"), c.get("template")))
    grads: Mapping[str, Any] = c.get("gradients") or {}
    sums: Mapping[str, Any] = c.get("summaries") or {}
    its = sorted({*grads, *sums}, key=lambda k: _num(str(k)))
    if its:
        body.append("<h4>Critiques it received (gradients), by iteration</h4>")
        for it in its:
            g = grads.get(it) or []
            items = "".join(f"<li>{_e(x)}</li>" for x in g) or "<li class=\"hint\">none</li>"
            s = sums.get(it)
            body.append(f"<div class=\"grads\"><div class=\"it\">iteration {_e(it)}</div>"
                        f"<ol>{items}</ol>"
                        + (f"<div class=\"sum\"><b>summary:</b> {_e(s)}</div>" if s else "")
                        + "</div>")
    body.append(_outputs(run, cid))
    open_ = " open" if cid == run.best_id else ""
    lin = " lin" if cid in run.lineage else ""
    return (f"<details class=\"cand{lin}\" id=\"cand-{_e(cid)}\" data-cid=\"{_e(cid)}\"{open_}>"
            f"{head}<div class=\"body\">{''.join(body)}</div></details>")


def _outputs(run: _Run, cid: str) -> str:
    recs = []
    for key, rec in run.records.items():
        parsed = parse_record_key(key)
        if parsed is None or parsed[0] != cid or not isinstance(rec, Mapping):
            continue
        _, split, i = parsed
        recs.append(((split != "train", split, i), split, str(i), rec))
    if not recs:
        return ""
    recs.sort(key=lambda r: r[0])
    rows = []
    for _, split, idx, rec in recs:
        out = rec.get("output") if "output" in rec else f"(error) {rec.get('error', '')}"
        rows.append(
            f"<tr><td>{_e(split)} {_e(idx)}</td><td class=\"{_score_cls(rec.get('score'))}\">"
            f"{_fmt(rec.get('score'), 2)}</td><td><div class=\"out\">{_e(_clip(out))}</div></td>"
            f"<td><div class=\"fb\">{_e(_clip(rec.get('feedback')))}</div></td></tr>")
    return (f"<details class=\"outputs\"><summary>Outputs and evaluations ({len(recs)})"
            "</summary><table class=\"outs\"><thead><tr><th>row</th><th>score</th>"
            "<th>output</th><th>feedback</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table></details>")


# --- settings ------------------------------------------------------------------------


def _settings(run: _Run) -> str:
    items: list[tuple[str, Any]] = []
    for key in ("models", "settings"):
        block = run.run.get(key)
        if isinstance(block, Mapping):
            items += [(k, v) for k, v in block.items()]
    for key, value in run.run.items():
        if key not in ("models", "settings", "examples"):
            items.append((key, value))
    if not items:
        return ""
    return "<dl class=\"settings\">" + "".join(
        f"<dt>{_e(k)}</dt><dd>{_e(v if isinstance(v, str) else json.dumps(v, default=str))}</dd>"
        for k, v in items) + "</dl>"


# --- style and script ----------------------------------------------------------------

_CSS = """
:root{--fg:#1f2328;--muted:#656d76;--line:#d0d7de;--bg:#fff;--soft:#f6f8fa;--accent:#0969da;
--good:#1a7f37;--bad:#cf222e;--ins:#dafbe1;--del:#ffebe9}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,
sans-serif;color:var(--fg);background:var(--bg)}
header{padding:18px 28px 8px;border-bottom:1px solid var(--line)}
h1{margin:0;font-size:22px}h2{font-size:18px;margin:0 0 8px;padding-top:8px}
h3{font-size:15px;margin:12px 0 6px}h4{font-size:13px;margin:12px 0 4px;color:var(--muted)}
.sub{margin:2px 0 0;color:var(--muted)}
main{padding:8px 28px 40px;max-width:1200px}
nav{position:sticky;top:0;background:var(--bg);padding:8px 0;border-bottom:1px solid var(--line);
z-index:2}nav a{margin-right:14px}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
section{margin:18px 0 26px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:10px}
.card{border:1px solid var(--line);border-radius:8px;padding:10px 12px;background:var(--soft)}
.card .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:22px;font-weight:600;overflow-wrap:anywhere}
.card .v .stop{font-size:17px}.card .n{color:var(--muted);font-size:12px}
.delta{font-size:13px;font-weight:600;margin-left:6px}.delta.up{color:var(--good)}
.delta.down{color:var(--bad)}.delta.flat{color:var(--muted)}
.hint{color:var(--muted);margin:4px 0 8px}
.chart{width:100%;max-width:900px;height:auto;display:block}
.chart .grid{stroke:#eaeef2}.chart .sep{stroke:var(--line);stroke-dasharray:4 4}
.chart .tick,.chart .axis{fill:var(--muted);font-size:11px}.chart .axis{font-size:12px}
.chart .cand polyline{fill:none;stroke:var(--c);stroke-width:1.5;opacity:.45}
.chart .cand circle{fill:var(--c);opacity:.6}
.chart .cand.lin polyline{opacity:.95;stroke-width:2.5}.chart .cand.lin circle{opacity:1}
.chart .beam polyline{fill:none;stroke:#1f2328;stroke-width:7;opacity:.18;
stroke-linejoin:round;stroke-linecap:round}.chart .beam circle{fill:#1f2328;opacity:.35}
.chart .final path{fill:var(--c);stroke:#fff}.chart .final text{font-size:11px;fill:var(--fg)}
.chart .final.best text{font-weight:700}
.legend{display:flex;gap:18px;flex-wrap:wrap;font-size:12.5px;color:var(--muted);margin:2px 0}
.legend svg{vertical-align:middle}
.chart .hl polyline{opacity:1;stroke-width:4}.chart .hl circle{r:6;opacity:1}
.side{display:grid;grid-template-columns:1fr 1fr;gap:14px}
@media (max-width:800px){.side{grid-template-columns:1fr}}
pre.prompt{white-space:pre-wrap;word-break:break-word;background:var(--soft);border:1px solid
var(--line);border-radius:6px;padding:10px;margin:0;font:13px/1.45 ui-monospace,SFMono-Regular,
Menlo,Consolas,monospace}
.id{font-family:ui-monospace,Menlo,Consolas,monospace;font-weight:700}
.score{color:var(--muted);font-weight:400;margin-left:6px}
.diff{border:1px solid var(--line);border-radius:6px;font:12.5px/1.45 ui-monospace,Menlo,
Consolas,monospace;overflow:auto}
.dl{white-space:pre-wrap;word-break:break-word;padding:1px 8px}.dl .g{display:inline-block;
width:1.2em;color:var(--muted);user-select:none}
.dl.del{background:var(--del)}.dl.ins{background:var(--ins)}
.dl del{background:#ffc1c0;text-decoration:line-through}.dl ins{background:#aceebb;
text-decoration:none}
ul.tree,ul.tree ul{list-style:none;margin:0;padding-left:22px}
ul.tree{padding-left:0}ul.tree li{position:relative;padding:3px 0 3px 14px}
ul.tree ul li::before{content:"";position:absolute;left:0;top:0;bottom:0;border-left:1px solid
var(--line)}ul.tree ul li::after{content:"";position:absolute;left:0;top:14px;width:10px;
border-top:1px solid var(--line)}ul.tree ul li:last-child::before{bottom:auto;height:14px}
.node{display:inline-block;padding:2px 8px;border:1px solid var(--line);border-radius:6px;
background:var(--bg)}.node.lin{border-color:var(--accent);background:#ddf4ff}
.node a{font-family:ui-monospace,Menlo,Consolas,monospace;font-weight:700;margin-right:8px}
.meta{color:var(--muted);font-size:12.5px;margin-left:6px}
.badge{display:inline-block;font-size:11px;padding:0 6px;border-radius:10px;margin-left:4px;
border:1px solid var(--line)}.badge.best{background:#fff8c5;border-color:#d4a72c}
.badge.val{background:var(--soft)}.badge.lin{background:#ddf4ff;border-color:#54aeff}
table{border-collapse:collapse;margin:4px 0}th,td{border:1px solid var(--line);padding:4px 8px;
text-align:left;vertical-align:top}thead th{background:var(--soft)}
table.val td{text-align:center;min-width:64px}table.val .mean td{text-align:left}
.rowh{font-weight:400;max-width:420px}.rowin{font-size:12.5px;white-space:pre-wrap;
word-break:break-word}.rowref{font-size:12px;color:var(--muted)}
.s-hi{background:#dafbe1}.s-mid{background:#fff8c5}.s-lo{background:#ffebe9}
.bar{display:inline-block;width:90px;height:8px;background:#eaeef2;border-radius:4px;
vertical-align:middle;overflow:hidden}.bar span{display:block;height:100%;background:var(--accent)}
.bar.tok span{background:#8250df}
table.usage td{text-align:right}table.usage td:nth-child(3),table.usage td:nth-child(6)
{text-align:left}tr.total{font-weight:600}
dl.counters,dl.settings{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px}
dt{color:var(--muted)}dd{margin:0;word-break:break-word}
details.cand{border:1px solid var(--line);border-radius:8px;margin:8px 0;background:var(--bg)}
details.cand.lin{border-color:#54aeff}
details.cand>summary{cursor:pointer;padding:8px 12px;background:var(--soft);border-radius:8px}
details.cand .body{padding:4px 14px 12px}
blockquote.summary{margin:0;padding:8px 12px;border-left:3px solid #d4a72c;background:#fffbe6;
white-space:pre-wrap}
.grads{border-left:2px solid var(--line);padding-left:10px;margin:6px 0}
.grads .it{font-size:12px;color:var(--muted)}.grads ol{margin:4px 0;padding-left:20px}
.grads li{white-space:pre-wrap;margin:2px 0}.grads .sum{white-space:pre-wrap}
details.outputs{margin-top:10px}details.outputs>summary{cursor:pointer;color:var(--accent)}
table.outs{font-size:12.5px;width:100%}.out,.fb{white-space:pre-wrap;word-break:break-word;
max-height:9em;overflow:auto}
button{font:inherit;font-size:12px;padding:1px 8px;border:1px solid var(--line);
border-radius:6px;background:var(--soft);cursor:pointer}
html:not([data-report-js]) .js-only{display:none}
@media print{nav,.js-only{display:none}details.cand{break-inside:avoid}}
"""

# The page's only script: expand/collapse buttons and cross-highlighting of a
# candidate between the lineage tree and the chart. It reads no data but the
# DOM, and marks <html data-report-js="ready"> when it has run.
_JS = """
(function () {
  var root = document.documentElement;
  function all(sel) { return Array.prototype.slice.call(document.querySelectorAll(sel)); }
  function setOpen(open) { all('details').forEach(function (d) { d.open = open; }); }
  var ex = document.getElementById('expand-all'), co = document.getElementById('collapse-all');
  if (ex) ex.addEventListener('click', function () { setOpen(true); });
  if (co) co.addEventListener('click', function () { setOpen(false); });
  function mark(cid, on) {
    all('.chart [data-cid]').forEach(function (g) {
      if (g.getAttribute('data-cid') === cid) g.classList.toggle('hl', on);
    });
  }
  all('.node[data-cid], details.cand > summary, table.val th[data-cid]').forEach(function (el) {
    var owner = el.hasAttribute('data-cid') ? el : el.parentNode;
    var cid = owner.getAttribute('data-cid');
    el.addEventListener('mouseenter', function () { mark(cid, true); });
    el.addEventListener('mouseleave', function () { mark(cid, false); });
  });
  function openTarget() {
    var id = decodeURIComponent((location.hash || '').slice(1));
    var el = id && document.getElementById(id);
    if (el && el.tagName === 'DETAILS') el.open = true;
  }
  window.addEventListener('hashchange', openTarget);
  openTarget();
  root.setAttribute('data-report-js', 'ready');
})();
"""

_JS_HASH = "sha256-" + base64.b64encode(hashlib.sha256(_JS.encode("utf-8")).digest()).decode()
