"""The HTML report: self-contained, complete, and every dataset/model text escaped."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from gradsum_fakes import arithmetic

from langchain_gradsum import GradSumOptimizer, numeric_match
from langchain_gradsum.report import load_result, render_report, write_report
from langchain_gradsum.testing import ScriptedChatModel

PAYLOAD = "<script>window.__pwned=1</script>"
IMG = "<img src=x onerror=\"window.__pwned=2\">"


respond = arithmetic(wrong=f"five {PAYLOAD}", reasoning=f"judge saw {IMG}",
                     gradient=f"The prompt should ask for steps. Bad output: {PAYLOAD}",
                     summary=f"Ask for step-by-step reasoning & a number </blockquote>{IMG}")


ROWS = [{"inputs": {"question": f"2+2 {PAYLOAD} {IMG} #{i}"}, "outputs": {"answer": "4"}}
        for i in range(5)]


@pytest.fixture(scope="module")
def result() -> Any:
    model = ScriptedChatModel(respond=respond)
    opt = GradSumOptimizer(model, task_description="arithmetic", criteria="correct",
                           evaluators=[numeric_match], beam_width=2, candidates_per_prompt=2,
                           max_iterations=2, minibatch_size=3, max_concurrency=1)
    return opt.optimize("Answer: {question}", ROWS, ROWS[:3])


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text.append(data)


def parse(page: str) -> _Tags:
    p = _Tags()
    p.feed(page)
    return p


def test_page_has_every_part(result: Any) -> None:
    page = render_report(result, examples={"train": ROWS, "val": ROWS[:3]})
    for anchor in ("summary", "scores", "prompts", "lineage", "validation", "usage",
                   "candidates"):
        assert f'id="{anchor}"' in page, anchor
    # chart: a group per scored candidate, the beam's best line, final diamonds
    for cid, cand in result.candidates.items():
        if cand["scores"]:
            assert '<g class="cand' in page and f'data-cid="{cid}"' in page
        assert f'id="cand-{cid}"' in page  # a card per candidate
    assert '<g class="beam"><polyline' in page
    assert page.count('<g class="final') == sum(
        1 for c in result.candidates.values() if c["val_score"] is not None)
    # initial vs final prompt side by side, with a diff
    assert 'id="prompt-initial">Answer: {question}</pre>' in page
    assert f'id="prompt-final">{result.best_template}</pre>' in page
    assert '<div class="dl ins">' in page and '<div class="dl del">' in page
    # usage by module, stop reason, wall time
    for role, u in result.usage.items():
        assert f"<tr><th>{role}</th><td>{u['calls']:,}</td>" in page
    assert f"<td>{result.total_calls:,}</td>" in page
    assert result.stop_reason in page
    assert "Wall time" in page
    # summaries and gradients of each candidate
    child = next(c for c in result.candidates.values() if c["parent_id"] == "c0")
    assert "Produced from this summary" in page
    assert "Critiques it received" in page
    assert child["id"] in page


def test_lineage_tree_nests_children_under_parents(result: Any) -> None:
    page = render_report(result)
    tree = page[page.index('<ul class="tree">'):page.index("</section>",
                                                           page.index('<ul class="tree">'))]
    for cid, cand in result.candidates.items():
        assert f'href="#cand-{cid}"' in tree
        if cand["parent_id"]:
            # the child appears after its parent, inside a nested list
            assert tree.index(f'data-cid="{cand["parent_id"]}"') < tree.index(
                f'data-cid="{cid}"')
    assert tree.count("<ul>") >= 1
    best_node = re.search(rf'<span class="node lin" data-cid="{result.best_id}">', tree)
    assert best_node and 'class="badge best"' in tree


def test_validation_table_scores_each_row(result: Any) -> None:
    page = render_report(result, examples={"train": ROWS, "val": ROWS[:3]})
    section = page[page.index('id="validation"'):page.index('id="usage"')]
    finalists = [c for c in result.candidates.values() if c["val_score"] is not None]
    assert section.count("<tr><th class=\"rowh\">row ") == 3
    for c in finalists:
        assert f'<th data-cid="{c["id"]}">' in section
    assert "Validation scores" in section


def test_all_text_is_escaped(result: Any) -> None:
    page = render_report(result, examples={"train": ROWS, "val": ROWS[:3]})
    tags = parse(page)
    # exactly one script (the page's own), no image, no event handler attribute
    assert [t for t, _ in tags.tags].count("script") == 1
    assert "img" not in [t for t, _ in tags.tags]
    assert not any(k.startswith("on") for _, attrs in tags.tags for k in attrs)
    assert "__pwned" not in "".join(tags.script_text)
    # the payloads are shown as text
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=&quot;window.__pwned=2&quot;&gt;" in page
    assert PAYLOAD not in page and IMG not in page
    # a summary trying to close its blockquote early stays inside it
    assert "&lt;/blockquote&gt;" in page


def test_self_contained(result: Any) -> None:
    page = render_report(result)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page
    assert "<link" not in page
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    assert csp and "default-src 'none'" in csp.group(1)
    assert "'unsafe-inline'" not in csp.group(1).split("script-src")[1].split(";")[0]


def test_accepts_result_dict_and_json_roundtrip(result: Any, tmp_path: Path) -> None:
    path = result.save(tmp_path / "result.json")
    loaded = load_result(path)
    assert render_report(loaded) == render_report(result.to_dict())
    out = write_report(loaded, tmp_path / "sub" / "report.html", title="T <1>")
    text = out.read_text(encoding="utf-8")
    assert "<title>T &lt;1&gt;</title>" in text


def test_run_settings_section(result: Any) -> None:
    data = result.to_dict()
    data["run"] = {"models": {"model": "local"}, "settings": {"max_llm_calls": 500,
                                                              "beam_width": 2},
                   "examples": {"train": ROWS, "val": ROWS[:3]}, "note": "<b>x</b>"}
    page = render_report(data)
    assert 'id="settings"' in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "of a budget of 500" in page
    assert "rowin" in page  # the rows' inputs from run.examples


def test_partial_result_renders(result: Any) -> None:
    data = json.loads(json.dumps(result.to_dict()))
    data["split"], data["stop_reason"] = "minibatch", "error"
    for c in data["candidates"].values():
        c["val_score"] = None
    page = render_report(data)
    assert "did not reach its final validation" in page


def test_a_lone_initial_prompt_renders() -> None:
    data = {"candidates": {"c0": {"id": "c0", "template": "Q: {q}", "parent_id": None,
                                  "iteration": 0, "summary": None, "gradients": {},
                                  "summaries": {}, "scores": {"0": 0.5}, "val_score": 0.5}},
            "best_id": "c0", "best_score": 0.5, "initial_score": 0.5, "split": "val",
            "stop_reason": "target_score", "iterations": 0, "usage": {}, "records": {}}
    page = render_report(data)
    assert "The initial prompt stayed the best" in page


@pytest.mark.parametrize("bad", [{}, {"candidates": {}}, {"candidates": {"c0": {}}}, [1, 2]])
def test_rejects_what_is_not_a_result(bad: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        render_report(bad)


def test_load_result_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        load_result(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_result(bad)
