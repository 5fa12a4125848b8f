"""Replay recorded failures through the optimizer's meta-prompts (no task-model calls).

Takes the stored test outputs of a benchmark run (default: the `initial` run of each
task), re-scores them with the current built-in evaluator (so its comment is today's),
and sends the failures through the `gradient`, `summarize` and `edit` nodes with the
embedded model as the optimizer model. Prints each critique's kind, the summary and the
new prompts, and checks whether each new prompt states the reply's required form: the
fix a small editor most often misses. Cheap: about 3 + 1 + 2 optimizer calls per task.

    python -m langchain_gradsum.local_llm run -- python benchmarks/replay.py \\
        --tasks bbh_sports_understanding bbh_date_understanding svamp mmlu
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import DEFAULT_DATA, TASKS, load_rows, split_rows  # noqa: E402

from langchain_gradsum.evaluators import run_evaluator  # noqa: E402
from langchain_gradsum.nodes import edit, gradient, new_candidate, summarize  # noqa: E402
from langchain_gradsum.state import GradSumContext  # noqa: E402

# The words that show a prompt asks for the reply's form, per metric.
FORM = {
    "exact_match": re.compile(r"\b(only|exactly|just)\b", re.I),
    "numeric_match": re.compile(r"\b(final (answer|number)|end (your|the) (reply|answer))", re.I),
    "choice_match": re.compile(r"\b(letter|option)\b", re.I),
    "contains_answer": re.compile(r"\b(short|brief|concise|only)\b", re.I),
}


def replay(task_name: str, run_file: Path, data_dir: Path, model: Any, k: int) -> dict:
    task = TASKS[task_name]
    stored = json.loads(run_file.read_text(encoding="utf-8"))
    sizes = stored["sizes"]
    seed = stored.get("seed", stored.get("settings", {}).get("seed", 0))
    test = split_rows(load_rows(data_dir, task), task, seed, sizes["train"], sizes["val"],
                      sizes["test"])["test"]
    failures = []
    for i, row in enumerate(stored["test_rows"]):
        res = run_evaluator(task.metric, test[i]["inputs"], row["output"], test[i]["outputs"])
        if res.score < 1:
            # a stored reply as long as the task's token cap stopped there
            cut = (row.get("output_tokens") or 0) >= task.max_tokens
            failures.append((test[i], row["output"], res, cut))
    failures = failures[:k]
    if not failures:
        return {"task": task_name, "failures": 0}
    train = [ex for ex, _, _, _ in failures]
    records = {f"c0|train|{i}": {"output": out, "score": res.score, "truncated": cut,
                                 "feedback": f"{res.key}: {res.score:g} ({res.comment})"}
               for i, (_, out, res, cut) in enumerate(failures)}
    state: dict[str, Any] = {
        "prompt": task.template, "train": train, "val": [], "iteration": 0,
        "batch": list(range(len(train))), "beam": ["c0"], "records": records,
        "candidates": {"c0": new_candidate("c0", task.template, parent_id=None, iteration=0,
                                           summary=None)},
    }
    ctx = GradSumContext(model=model, task_description=task.description,
                         evaluators=(task.metric,), candidates_per_prompt=2,
                         max_concurrency=4, retry_backoff=0)
    rt = SimpleNamespace(context=ctx, stream_writer=lambda e: None)
    for node in (gradient, summarize, edit):
        out = node(state, rt, {})
        state = {**state, **{k2: v for k2, v in out.items() if k2 != "candidates"},
                 "candidates": {**state["candidates"], **out.get("candidates", {})}}
    c0 = state["candidates"]["c0"]
    children = [c for c in state["candidates"].values() if c["parent_id"] == "c0"]
    form = FORM[task.metric.__name__]
    return {
        "task": task_name, "failures": len(failures),
        "comments": [res.comment for _, _, res, _ in failures],
        "cut_off": sum(cut for *_, cut in failures),
        "critiques": c0["gradients"].get("0", []),
        "summary": c0["summaries"].get("0"),
        "new_prompts": [{"strategy": c["strategy"], "template": c["template"],
                         "states_form": bool(form.search(c["template"]))} for c in children],
    }


def main(argv: list[str] | None = None) -> int:
    from langchain_gradsum.local_llm import local_chat_model

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["bbh_sports_understanding",
                                                  "bbh_date_understanding", "svamp", "mmlu"])
    p.add_argument("--optimizer", default="initial", help="whose stored outputs to replay")
    p.add_argument("--failures", type=int, default=3)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=HERE / "results" / "replay.json")
    a = p.parse_args(argv)
    model = local_chat_model(max_tokens=350)
    results = []
    for name in a.tasks:
        files = sorted((HERE / "results" / "runs").glob(f"{name}__{a.optimizer}*.json"))
        if not files:
            print(f"{name}: no stored {a.optimizer} run", file=sys.stderr)
            continue
        r = replay(name, files[-1], a.data_dir, model, a.failures)
        results.append(r)
        print(json.dumps(r, indent=2, ensure_ascii=False))
    stated = [p["states_form"] for r in results for p in r.get("new_prompts", [])]
    summary = {"date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "new_prompts": len(stated), "state_the_form": sum(stated), "results": results}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{sum(stated)} of {len(stated)} new prompts state the reply's form; wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
