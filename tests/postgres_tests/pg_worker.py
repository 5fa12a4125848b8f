"""Runs a small optimization checkpointed in PostgreSQL, in its own process.

    python pg_worker.py URL CALL_LOG RESULT_JSON [--kill-at N] [--variant V] [--thread-id T]

Mirrors tests/unit_tests/workers/resume_worker.py (the SQLite kill-and-resume test):
the scripted model appends each call's prompt to CALL_LOG (flushed and fsynced) when
the call completes; with ``--kill-at n`` the process SIGKILLs itself when call n+1
starts, i.e. after exactly n completed calls. ``--variant`` changes the prompt and rows (so
two runs make no identical call); ``--thread-id`` names the run in the database.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from langchain_gradsum import GradSumOptimizer, numeric_match
from langchain_gradsum.testing import ScriptedChatModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit_tests" / "workers"))
from resume_worker import logged_script  # noqa: E402  (the SQLite test's script)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("log", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--variant", default="a")
    parser.add_argument("--thread-id")
    args = parser.parse_args()
    respond = logged_script(args.log, args.kill_at)

    rows = [{"inputs": {"question": f"2+2, case {args.variant}{i}"},
             "outputs": {"answer": "4"}} for i in range(6)]
    optimizer = GradSumOptimizer(
        ScriptedChatModel(respond=respond), criteria="the final number is right",
        evaluators=[numeric_match], beam_width=2, candidates_per_prompt=2,
        max_iterations=2, minibatch_size=3, max_concurrency=1, retry_backoff=0,
    )
    prompt = "Q: {question}" if args.variant == "a" else f"Q{args.variant}: {{question}}"
    result = optimizer.optimize(prompt, rows, rows[:3], checkpoint=args.url,
                                thread_id=args.thread_id)
    data = result.to_dict()
    data.pop("wall_time_s")
    args.out.write_text(json.dumps(data, sort_keys=True))


if __name__ == "__main__":
    main()
