"""Framework efficiency of GRAD-SUM with a fake model of fixed latency (no network, no LLM).

Every LLM call sleeps `--latency` seconds and returns a scripted reply (a judge dict
through structured output, a critique, a summary, or an edit in <prompt> tags that keeps
{question}). The same fixed GRAD-SUM settings run at max_concurrency 1, 4 and 8, and once
more immediately after each run with identical inputs.

Reported per concurrency:
  wall_s            measured wall time of `optimize`
  ideal_s           calls x latency / max_concurrency (perfect parallelism, zero overhead)
  model_busy_s      calls x latency (what a one-request-at-a-time server would need)
  overhead_frac     (wall - ideal) / wall: time not explained by ideal parallel model latency.
                    At concurrency 1 this is pure framework time (graph, scoring, bookkeeping);
                    at 4 and 8 it also includes waiting forced by data dependencies (a
                    stage must finish before the next starts, and a stage with fewer calls
                    than slots leaves slots idle).
  overhead_c1_s     wall - calls x latency at concurrency 1 (pure framework time)
  achieved_conc     calls x latency / wall (mean calls in flight)
  rerun_calls       calls of an immediate identical re-run (no cache: the same calls again)
  cached_*          the same run with `cache=<fresh SQLite file>`, then an immediate re-run
                    with the same cache: its model calls (0 when every call is answered from
                    the cache), wall time, and whether it returns the same best prompt/score

    python benchmarks/efficiency.py            # writes benchmarks/results/efficiency-<date>.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from langchain_gradsum import GradSumOptimizer, exact_match
from langchain_gradsum.testing import ScriptedChatModel

HERE = Path(__file__).resolve().parent
START = "Answer the question: {question}"


class Script:
    """Plausible replies: prompts that went through an edit answer right more often."""

    def __init__(self) -> None:
        self.edits = itertools.count(1)
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    def __call__(self, text: str, role: str) -> Any:
        if role == "generate":
            # rows q0..qN; an edited prompt ("Think step by step v<k>") gets more of them right
            m = re.search(r"step by step v(\d+)", text)
            q = re.search(r"question (\d+)", text)
            i = int(q.group(1)) if q else 0
            level = int(m.group(1)) if m else 0
            return "B" if (i + level) % 3 != 0 else "A"
        if role == "judge":
            good = re.search(r"<output>\nB\n</output>", text) is not None
            return {"reasoning": "matches" if good else "wrong letter", "score": float(good)}
        if role == "gradient":
            return "The prompt does not ask the assistant to reason before answering."
        if role == "summarize":
            return "Ask for step-by-step reasoning and a final letter."
        if role == "edit":
            with self.lock:
                k = next(self.edits)
            return f"<prompt>Think step by step v{k}. Answer the question: {{question}}</prompt>"
        raise AssertionError(role)


def rows(n: int, offset: int = 0) -> list[dict[str, Any]]:
    return [{"inputs": {"question": f"question {offset + i}"}, "outputs": {"answer": "B"}}
            for i in range(n)]


def run_once(concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    script = Script()
    model = ScriptedChatModel(respond=script, latency=args.latency)
    opt = _optimizer(model, concurrency, args)
    train, val = rows(args.train), rows(args.val, offset=1000)
    t0 = time.perf_counter()
    res = opt.optimize(START, train, val)
    wall = time.perf_counter() - t0
    calls_first = len(model.calls)
    # immediate identical re-run, same optimizer and same model object
    t1 = time.perf_counter()
    opt.optimize(START, train, val)
    wall2 = time.perf_counter() - t1
    rerun_calls = len(model.calls) - calls_first
    cached = _cached_rerun(concurrency, args, train, val)
    busy = calls_first * args.latency
    ideal = busy / concurrency
    return {
        "max_concurrency": concurrency,
        "calls": calls_first,
        "calls_reported": res.total_calls,
        "calls_by_role": _by_role(model.calls[:calls_first]),
        "wall_s": round(wall, 3),
        "model_busy_s": round(busy, 3),
        "ideal_s": round(ideal, 3),
        "overhead_frac": round((wall - ideal) / wall, 3),
        "achieved_concurrency": round(busy / wall, 2),
        "speedup_vs_c1": None,  # filled below
        "rerun_calls": rerun_calls,
        "rerun_wall_s": round(wall2, 3),
        **cached,
        "best_score": res.best_score,
        "initial_score": res.initial_score,
        "best_template": res.best_template,
    }


def _cached_rerun(concurrency: int, args: argparse.Namespace, train: list[Any],
                  val: list[Any]) -> dict[str, Any]:
    """A run with a fresh call cache, then the same run again with a fresh model."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "calls.sqlite"
        first_model = ScriptedChatModel(respond=Script(), latency=args.latency)
        t0 = time.perf_counter()
        first = _optimizer(first_model, concurrency, args).optimize(START, train, val,
                                                                    cache=cache)
        wall1 = time.perf_counter() - t0
        again_model = ScriptedChatModel(respond=Script(), latency=args.latency)
        t1 = time.perf_counter()
        again = _optimizer(again_model, concurrency, args).optimize(START, train, val,
                                                                    cache=cache)
        wall2 = time.perf_counter() - t1
    return {
        "cached_first_calls": len(first_model.calls),
        "cached_first_wall_s": round(wall1, 3),
        "cached_rerun_calls": len(again_model.calls),
        "cached_rerun_wall_s": round(wall2, 3),
        "cached_rerun_same_result": (again.best_template, again.best_score)
        == (first.best_template, first.best_score),
    }


def _optimizer(model: ScriptedChatModel, concurrency: int,
               args: argparse.Namespace) -> GradSumOptimizer:
    return GradSumOptimizer(
        model,
        task_description="Answer with the letter of the right option.",
        criteria="The output is exactly the expected letter.",
        evaluators=[exact_match],
        beam_width=args.beam_width,
        candidates_per_prompt=args.candidates,
        max_iterations=args.iterations,
        minibatch_size=args.minibatch,
        max_gradients_per_prompt=args.max_gradients,
        max_concurrency=concurrency,
        retry_backoff=0,
        seed=0,
    )


def _by_role(calls: list[tuple[str, str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for role, _, _ in calls:
        out[role] = out.get(role, 0) + 1
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency", type=float, default=0.1, help="seconds per fake LLM call")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--train", type=int, default=12)
    p.add_argument("--val", type=int, default=6)
    p.add_argument("--beam-width", type=int, default=2)
    p.add_argument("--candidates", type=int, default=2)
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--minibatch", type=int, default=6)
    p.add_argument("--max-gradients", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    results = [run_once(c, args) for c in args.concurrency]
    base = next((r for r in results if r["max_concurrency"] == 1), None)
    for r in results:
        if base:
            r["speedup_vs_c1"] = round(base["wall_s"] / r["wall_s"], 2)
    if base:
        base["framework_overhead_s"] = round(base["wall_s"] - base["model_busy_s"], 3)
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    out = args.out or HERE / "results" / f"efficiency-{today}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "efficiency",
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/efficiency.py " + " ".join(argv or sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "runs": results,
    }
    out.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    print("| max_concurrency | calls | wall s | ideal s | overhead | mean in flight | "
          "speedup vs 1 | re-run calls | cached re-run calls (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['max_concurrency']} | {r['calls']} | {r['wall_s']:.2f} | "
              f"{r['ideal_s']:.2f} | {r['overhead_frac']:.0%} | {r['achieved_concurrency']} | "
              f"{r['speedup_vs_c1']}x | {r['rerun_calls']} | "
              f"{r['cached_rerun_calls']} ({r['cached_rerun_wall_s']:.2f}) |")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
