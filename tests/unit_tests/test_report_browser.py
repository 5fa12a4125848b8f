"""The report in a real browser: headless Debian chromium renders it, screenshots it,
and its DOM shows the page's own script ran while injected markup did not.

Skipped (with the reason) only when chromium is not installed: `make chromium`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from gradsum_fakes import arithmetic

from langchain_gradsum import GradSumOptimizer, numeric_match
from langchain_gradsum.report import render_report
from langchain_gradsum.testing import ScriptedChatModel

CHROMIUM = os.environ.get("GRADSUM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)
pytestmark = pytest.mark.skipif(
    not HAVE_CHROMIUM,
    reason=f"chromium not found at {CHROMIUM}: install it with `make chromium` "
    "(apt-get install -y chromium) to run the browser test of the report",
)

SCRIPT = "<script>window.__pwned=1;document.title='PWNED'</script>"
IMG = "<img src=x onerror=\"window.__pwned=2;document.title='PWNED'\">"


respond = arithmetic(
    wrong=f"I saw {SCRIPT}", reasoning=f"looked at {IMG}",
    gradient=f"The output echoed the input {SCRIPT} instead of answering.",
    summary=f"Ask for step-by-step reasoning; never echo markup like {IMG}.",
    good_prompt="Think step by step, then answer with a number: {question}")


def recorded_run() -> tuple[Any, dict[str, Any]]:
    """A small finished run whose dataset rows carry the injection payloads."""
    rows = [{"inputs": {"question": f"2+2 {SCRIPT} {IMG} #{i}"}, "outputs": {"answer": "4"}}
            for i in range(5)]
    val = [{"inputs": {"question": f"1+3 {SCRIPT} v{i}"}, "outputs": {"answer": "4"}}
           for i in range(3)]
    opt = GradSumOptimizer(ScriptedChatModel(respond=respond), task_description="arithmetic",
                           criteria="The answer is correct.", evaluators=[numeric_match],
                           beam_width=2, candidates_per_prompt=2, max_iterations=3,
                           minibatch_size=3, max_concurrency=1)
    result = opt.optimize("Answer: {question}", rows, val)
    return result, {"train": rows, "val": val}


def chromium(*args: str, user_data: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", "--no-default-browser-check", "--disable-extensions",
           "--hide-scrollbars", "--mute-audio", f"--user-data-dir={user_data}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HOME": str(user_data)})


# A probe the test (not the report) adds at the very end of a copy of the page: after
# the load event (image errors have fired by then) it writes what it saw into the DOM.
PROBE = (
    "<script>addEventListener('load',function(){setTimeout(function(){"
    "document.body.setAttribute('data-probe',JSON.stringify({"
    "pwned:window.__pwned===undefined?null:window.__pwned,"
    "title:document.title,"
    "js:document.documentElement.getAttribute('data-report-js'),"
    "scripts:document.scripts.length,"
    "imgs:document.images.length}))},50)})</script>"
)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result, examples = recorded_run()
    html = render_report(result, examples=examples, title="GradSum report")
    out = tmp_path_factory.mktemp("browser")
    report = out / "report.html"
    report.write_text(html, encoding="utf-8")
    return {"dir": out, "path": report, "html": html, "result": result}


def test_screenshot(page: dict[str, Any]) -> None:
    shot = page["dir"] / "report.png"
    proc = chromium("--window-size=1280,2000", f"--screenshot={shot}",
                    "--virtual-time-budget=3000", page["path"].as_uri(),
                    user_data=page["dir"] / "profile-shot")
    assert shot.is_file(), proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000, "the screenshot looks blank"
    keep = os.environ.get("GRADSUM_REPORT_SCREENSHOT")
    if keep:  # e.g. docs/report-example.png
        Path(keep).write_bytes(data)


def test_page_as_shipped_runs_its_own_script_only(page: dict[str, Any]) -> None:
    """The report as written (its CSP allows only its own script, by hash)."""
    proc = chromium("--dump-dom", "--virtual-time-budget=3000", page["path"].as_uri(),
                    user_data=page["dir"] / "profile-dom")
    dom = proc.stdout
    assert "<html" in dom, proc.stderr[-2000:]
    # The page's own script ran (so its CSP hash is right) ...
    assert re.search(r'<html[^>]*\bdata-report-js="ready"', dom), dom[:500]
    # ... and the injected markup is text, not elements.
    assert "<title>GradSum report</title>" in dom
    assert len(re.findall(r"<script\b", dom)) == 1
    assert not re.search(r"<img\b", dom)
    assert "&lt;script&gt;window.__pwned=1;document.title='PWNED'&lt;/script&gt;" in dom
    assert "&lt;img src=x onerror=" in dom
    # Key elements are there.
    result = page["result"]
    for needle in ('id="summary"', '<svg class="chart"', '<g class="beam">',
                   '<ul class="tree">', 'id="prompt-initial"', 'id="prompt-final"',
                   '<table class="val">', '<table class="usage">', f'id="cand-{result.best_id}"',
                   '<div class="dl ins">'):
        assert needle in dom, needle
    for cid in result.candidates:
        assert f'id="cand-{cid}"' in dom


def test_injected_markup_never_runs_even_without_csp(page: dict[str, Any]) -> None:
    """Escaping alone keeps the payloads inert: drop the CSP and add a probe."""
    html = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>\n?', "", page["html"])
    assert "Content-Security-Policy" not in html
    probed = page["dir"] / "probed.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    proc = chromium("--dump-dom", "--virtual-time-budget=3000", probed.as_uri(),
                    user_data=page["dir"] / "profile-probe")
    found = re.search(r"data-probe=\"([^\"]*)\"", proc.stdout)
    assert found, proc.stdout[:1000] + proc.stderr[-2000:]
    import html as html_mod
    import json

    probe = json.loads(html_mod.unescape(found.group(1)))
    assert probe == {"pwned": None, "title": "GradSum report", "js": "ready",
                     "scripts": 2, "imgs": 0}
