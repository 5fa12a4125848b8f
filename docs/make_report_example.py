"""Render docs/report-example.png: the report of a small *scripted* run (no LLM).

    python docs/make_report_example.py             # writes docs/report-example.{html,png}

The fake model rewards prompts that ask for more of four habits ("step by step",
"check", "units", "final number"); the editor adds one habit per rewrite, so the
search has somewhere to climb. Screenshot by headless chromium (`make chromium`).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from langchain_gradsum import GradSumOptimizer, numeric_match
from langchain_gradsum.report import write_report
from langchain_gradsum.testing import ScriptedChatModel

DOCS = Path(__file__).resolve().parent
HABITS = ["Think step by step.", "Check your arithmetic.", "Keep track of units.",
          "End with the final number."]
QUESTIONS = [
    ("Tom has 3 boxes of 12 pencils and gives away 7. How many are left?", "29"),
    ("A train travels 60 km/h for 2.5 hours. How far does it go, in km?", "150"),
    ("Sara buys 4 books at $6 each and pays with $30. What is her change?", "6"),
    ("A recipe needs 250 g of flour per cake. How many grams for 6 cakes?", "1500"),
    ("There are 28 students; 3/4 passed. How many passed?", "21"),
    ("A tank holds 80 L and is 35% full. How many litres are in it?", "28"),
    ("Ben reads 18 pages a day. How many pages in two weeks?", "252"),
    ("A shirt costs $40 with 15% off. What is the price in dollars?", "34"),
    ("Five friends share 3 pizzas of 8 slices. Slices each (whole)?", "4"),
    ("A garden is 12 m by 7 m. What is its area in square metres?", "84"),
    ("Mia saves $15 a week. How many weeks to save $120?", "8"),
    ("A bus has 45 seats; 17 are empty. How many are taken?", "28"),
]


def _habits(text: str) -> int:
    return sum(h.lower() in text.lower() for h in HABITS)


def make_model() -> ScriptedChatModel:
    counter = itertools.count()

    def respond(text: str, role: str) -> Any:
        if role == "judge":
            good = "the answer is" in text.lower().split("<output>")[-1]
            return {"reasoning": "States a clear final answer." if good else
                    "No clear final answer <b>given</b>.", "score": 1.0 if good else 0.3}
        if role == "gradient":
            return ("The prompt does not tell the model how to reason, so it guesses; "
                    "it should ask it to work step by step and to state the final number.")
        if role == "summarize":
            return ("Make the reasoning explicit: work step by step, check each calculation, "
                    "keep track of units, and finish with the final number.")
        if role == "edit":
            prompt = re.search(r"<prompt>\n?(.*?)\n?</prompt>", text, re.S)
            base = prompt.group(1).strip() if prompt else "{question}"
            missing = [h for h in HABITS if h.lower() not in base.lower()]
            n = next(counter)
            if "version 2" in text and len(missing) > 1:
                missing = missing[1:]
            add = missing[0] if missing else "Be concise."
            lines = [line for line in base.splitlines() if line.strip()]
            return "<prompt>" + "\n".join([lines[0] + f" {add}"] + lines[1:]) + \
                f"</prompt>  (edit {n})"
        # generate: more habits, more rows right (row-dependent, deterministic)
        q = next((q for q, _ in QUESTIONS if q in text), QUESTIONS[0][0])
        i = [q for q, _ in QUESTIONS].index(q)
        answer = dict(QUESTIONS)[q]
        right = (i * 7 + 3) % 5 < 1 + _habits(text)
        return f"... so the answer is {answer}." if right else "It is probably 12 or so."

    return ScriptedChatModel(respond=respond)


def run() -> tuple[Any, list[dict[str, Any]]]:
    rows = [{"inputs": {"question": q}, "outputs": {"answer": a}} for q, a in QUESTIONS]
    opt = GradSumOptimizer(make_model(), task_description="grade-school math word problems",
                           criteria="The output states a clear, correct final answer.",
                           evaluators=[numeric_match], beam_width=3, candidates_per_prompt=2,
                           max_iterations=4, minibatch_size=5, max_concurrency=1, seed=1)
    return opt.optimize("Answer the question.\n{question}", rows[:8], rows[8:]), rows


def screenshot(html: Path, png: Path, height: int = 2400) -> None:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
             f"--window-size=1280,{height}", "--virtual-time-budget=3000",
             f"--screenshot={png}", html.as_uri()],
            check=True, capture_output=True, timeout=120, env={**os.environ, "HOME": profile})


def main() -> int:
    result, rows = run()
    html = write_report(result, DOCS / "report-example.html",
                        title="GRAD-SUM report (scripted example run)",
                        examples={"train": rows[:8], "val": rows[8:]})
    screenshot(html, DOCS / "report-example.png")
    print(f"wrote {html} and {DOCS / 'report-example.png'} "
          f"(best {result.best_id} {result.best_score}, {result.total_calls} calls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
